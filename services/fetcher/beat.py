"""Celery beat for scheduled reports: each due entry publishes report.requested on hotrepos.events.

Beat keeps its schedule in Redis (celery-redbeat), under a lock: any number of beats may run, one
fires each due run, another takes over within the lock's timeout when it dies, and a run that fell
due while no beat ran fires when one comes back (several missed runs of an entry fire once).
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

import structlog
from celery import Celery
from celery.schedules import crontab, schedule
from redbeat import RedBeatScheduler

from shared.events import ReportRequested
from shared.publisher import Publisher

log = structlog.get_logger("hotrepos.fetcher.beat")

SCHEDULE_TASK = "hotrepos.report.requested"
_EVERY = re.compile(r"every\s+(\d+)\s*([smh])", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600}


def parse_schedule(spec: str) -> dict[str, dict[str, Any]]:
    """`day=0 0 * * *;week=0 1 * * 1;month=every 6h` -> beat entries, one per period and schedule."""
    entries: dict[str, dict[str, Any]] = {}
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        period, _, when = part.partition("=")
        period, when = period.strip(), when.strip()
        if period not in ("day", "week", "month"):
            raise ValueError(f"bad schedule entry {part!r}: the period is day, week or month")
        entries[f"{period} report ({when})"] = {
            "task": SCHEDULE_TASK,
            "schedule": _schedule_of(part, when),
            "args": (period,),
        }
    return entries


def _schedule_of(part: str, when: str) -> schedule:
    every = _EVERY.fullmatch(when)
    if every is not None:
        seconds = int(every.group(1)) * _UNIT_SECONDS[every.group(2).lower()]
        if seconds < 1:
            raise ValueError(f"bad schedule entry {part!r}: an interval of at least one second")
        return schedule(dt.timedelta(seconds=seconds))
    fields = when.split()
    if len(fields) != 5:
        raise ValueError(f"bad schedule entry {part!r}: expected PERIOD=MIN HOUR DOM MON DOW or PERIOD=every N[smh]")
    minute, hour, day_of_month, month_of_year, day_of_week = fields
    return crontab(minute, hour, day_of_week, day_of_month, month_of_year)


class PublishingScheduler(RedBeatScheduler):  # type: ignore[misc]
    """Publishes a CloudEvent instead of sending a Celery task: beat talks the contract, not Celery."""

    publisher: Publisher | None = None
    notify: str | None = None

    def send_task(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], **options: Any) -> None:
        period = args[0]
        today = dt.datetime.now(dt.UTC).date()
        # A stable id per period and day: two firings of one run (a beat that lost its lock mid-tick)
        # still make one report.
        request = ReportRequested(
            report_id=f"scheduled-{period}-{today.isoformat()}",
            period=period,
            ref_date=today,
            notify=self.notify,
            priority="scheduled",
        )
        assert self.publisher is not None
        self.publisher.publish(request, correlationid=request.report_id)
        log.info("schedule.fired", period=period, report_id=request.report_id)


class BeatSettings(Protocol):
    amqp_url: str
    redis_url: str
    report_schedule: str
    schedule_notify: str | None
    beat_lock_seconds: int


def key_prefix(amqp_url: str) -> str:
    """Beats share a schedule and a lock per broker vhost: two stacks on one Redis never mix theirs."""
    vhost = unquote(urlsplit(amqp_url.split(";")[0]).path.lstrip("/")) or "/"
    return f"hotrepos:beat:{vhost}:"


def configure_beat(app: Celery, settings: BeatSettings) -> None:
    app.conf.update(
        beat_schedule=parse_schedule(settings.report_schedule),
        # Beat wakes at least five times in its lock's time, renewing the lock each time: a standby
        # takes over from a dead beat once the lock runs out.
        beat_max_loop_interval=max(1, settings.beat_lock_seconds // 5),
        redbeat_redis_url=settings.redis_url,
        # Its own, so that the broker's transport options never reach the Redis client.
        redbeat_redis_options={"health_check_interval": 30},
        redbeat_key_prefix=key_prefix(settings.amqp_url),
        redbeat_lock_timeout=settings.beat_lock_seconds,
    )


def run_beat(app: Celery, publisher: Publisher, settings: BeatSettings) -> None:
    configure_beat(app, settings)
    PublishingScheduler.publisher = publisher
    PublishingScheduler.notify = settings.schedule_notify
    app.Beat(scheduler=PublishingScheduler, loglevel="INFO", quiet=True).run()
