"""Celery beat publishes report.requested on hotrepos.events, not a Celery task."""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from services.fetcher.__main__ import FetcherSettings
from services.fetcher.beat import PublishingScheduler, configure_beat, parse_schedule
from services.fetcher.worker import create_celery_app
from shared.amqp import connect, declare_topology
from shared.publisher import Publisher
from shared.settings import CommonSettings
from tests.support.amqp import EventListener
from tests.support.services import ServiceProcess
from tests.support.waiting import eventually


def test_schedule_parsing() -> None:
    entries = parse_schedule("day=0 0 * * *; week=30 1 * * 1; month=every 6h")
    assert [e["args"] for e in entries.values()] == [("day",), ("week",), ("month",)]
    assert entries["month report (every 6h)"]["schedule"].run_every == dt.timedelta(hours=6)
    for bad in ("year=0 0 * * *", "day=0 0 *", "day", "day=every 0s", "day=every 5 fortnights"):
        with pytest.raises(ValueError):
            parse_schedule(bad)


def test_a_due_entry_publishes_a_report_request(amqp_url: str, redis_url: str) -> None:
    settings = CommonSettings(amqp_url=amqp_url)
    listener = EventListener(amqp_url, "report.requested")
    app = create_celery_app(settings)
    configure_beat(
        app,
        FetcherSettings(amqp_url=amqp_url, redis_url=redis_url, report_schedule="week=* * * * *", schedule_notify=None),
    )
    with connect(settings) as connection:
        declare_topology(connection, [])
        PublishingScheduler.publisher = Publisher(connection, source="hotrepos/fetcher-beat")
        PublishingScheduler.notify = "team@example.com"
        scheduler = PublishingScheduler(app=app, lazy=True)
        scheduler.setup_schedule()
        # The entry as beat stored it in Redis, sent as beat sends a due one.
        (name,) = app.conf.beat_schedule
        entry = scheduler.Entry.from_key(scheduler.Entry.generate_key(app, name), app=app)
        scheduler.apply_entry(entry)
        event = listener.wait_for(lambda e: e["type"] == "report.requested", 20)
    today = dt.datetime.now(dt.UTC).date().isoformat()
    assert event["source"] == "hotrepos/fetcher-beat"
    assert event["data"] == {
        "report_id": f"scheduled-week-{today}",
        "period": "week",
        "ref_date": today,
        "notify": "team@example.com",
        "layout": "rows",
    }
    assert event["correlationid"] == f"scheduled-week-{today}"
    listener.close()


@dataclass
class Beats:
    """Beat processes of one stack (one vhost), and every report request they publish."""

    amqp_url: str
    redis_url: str
    log_dir: Path
    schedule: str
    listener: EventListener
    processes: list[ServiceProcess] = field(default_factory=list)

    def start(self, name: str) -> ServiceProcess:
        env = {
            "AMQP_URL": self.amqp_url,
            "REDIS_URL": self.redis_url,
            "REPORT_SCHEDULE": self.schedule,
            "BEAT_LOCK_SECONDS": str(BEAT_LOCK_SECONDS),
        }
        process = ServiceProcess(name, env, self.log_dir, ("beat",)).start()
        self.processes.append(process)
        return process

    def firings(self) -> list[dt.datetime]:
        return [dt.datetime.fromisoformat(e["time"]) for e in self.listener.events if e["type"] == "report.requested"]


# Short, for the test's sake: a standby takes over once a dead beat's lock has run out.
BEAT_LOCK_SECONDS = 6
EVERY_SECONDS = 3


@pytest.fixture
def beats(amqp_url: str, redis_url: str, tmp_path: Path) -> Iterator[Beats]:
    listener = EventListener(amqp_url, "report.requested")
    running = Beats(amqp_url, redis_url, tmp_path, f"day=every {EVERY_SECONDS}s", listener)
    try:
        yield running
    finally:
        for process in running.processes:
            process.stop()
        listener.close()


def test_two_beats_fire_each_due_run_once_and_one_takes_over_when_the_other_dies(beats: Beats) -> None:
    first, second = beats.start("fetcher-beat-1"), beats.start("fetcher-beat-2")
    eventually(lambda: len(beats.firings()) >= 4, timeout=60, message="four runs fired")
    # Whichever beat holds the lock dies as in a crash: the other takes over once the lock runs out.
    holder = first if "schedule.fired" in first.output() else second
    assert holder.process is not None
    holder.process.kill()
    holder.process.wait(10)
    before = len(beats.firings())
    eventually(lambda: len(beats.firings()) >= before + 3, timeout=60, message="runs fired by the standby")
    firings = beats.firings()
    gaps = [(later - earlier).total_seconds() for earlier, later in itertools.pairwise(firings)]
    # One firing a due run: two beats firing one would publish twice within the same instant.
    assert min(gaps) > EVERY_SECONDS / 2, gaps
    survivor = second if holder is first else first
    assert "schedule.fired" in survivor.output(), "the standby never fired"


def test_a_run_missed_while_no_beat_ran_fires_when_one_comes_back(beats: Beats) -> None:
    beats.schedule = "day=every 10s"
    beat = beats.start("fetcher-beat")
    eventually(lambda: beats.firings(), timeout=60, message="a first run fired")
    beat.stop()
    # Down across the next run's time: the run falls due while no beat runs.
    down_since = dt.datetime.now(dt.UTC)
    eventually(
        lambda: dt.datetime.now(dt.UTC) - down_since > dt.timedelta(seconds=12),
        timeout=60,
        message="the next run's time passed",
        interval=1,
    )
    back = dt.datetime.now(dt.UTC)
    beats.start("fetcher-beat")
    eventually(lambda: len(beats.firings()) >= 2, timeout=60, message="the missed run fired")
    missed = beats.firings()[1]
    # At once on coming back, not a whole interval later as a run that was not missed would.
    assert (missed - back).total_seconds() < 5, (back, missed)
