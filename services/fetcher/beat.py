"""Celery beat for scheduled reports: each due entry publishes report.requested on hotrepos.events."""

from __future__ import annotations

import datetime as dt
from typing import Any

import structlog
from celery import Celery
from celery.beat import Scheduler
from celery.schedules import crontab

from shared.events import ReportRequested
from shared.publisher import Publisher

log = structlog.get_logger("hotrepos.fetcher.beat")

SCHEDULE_TASK = "hotrepos.report.requested"


def parse_schedule(spec: str) -> dict[str, dict[str, Any]]:
    """`day=0 0 * * *;week=0 1 * * 1` -> beat entries, one per period and crontab."""
    entries: dict[str, dict[str, Any]] = {}
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        period, _, cron = part.partition("=")
        period = period.strip()
        fields = cron.split()
        if period not in ("day", "week", "month") or len(fields) != 5:
            raise ValueError(f"bad schedule entry {part!r}: expected PERIOD=MIN HOUR DOM MON DOW")
        minute, hour, day_of_month, month_of_year, day_of_week = fields
        entries[f"{period} report ({cron.strip()})"] = {
            "task": SCHEDULE_TASK,
            "schedule": crontab(minute, hour, day_of_week, day_of_month, month_of_year),
            "args": (period,),
        }
    return entries


class PublishingScheduler(Scheduler):  # type: ignore[misc]
    """Publishes a CloudEvent instead of sending a Celery task: beat talks the contract, not Celery."""

    publisher: Publisher | None = None
    notify: str | None = None

    def send_task(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], **options: Any) -> None:
        period = args[0]
        today = dt.datetime.now(dt.UTC).date()
        # A stable id per period and day: a beat restart that fires twice still makes one report.
        request = ReportRequested(
            report_id=f"scheduled-{period}-{today.isoformat()}",
            period=period,
            ref_date=today,
            notify=self.notify,
        )
        assert self.publisher is not None
        self.publisher.publish(request, correlationid=request.report_id)
        log.info("schedule.fired", period=period, report_id=request.report_id)


def run_beat(app: Celery, publisher: Publisher, schedule: str, notify: str | None) -> None:
    app.conf.beat_schedule = parse_schedule(schedule)
    PublishingScheduler.publisher = publisher
    PublishingScheduler.notify = notify
    app.Beat(scheduler=PublishingScheduler, loglevel="INFO", quiet=True).run()
