"""Celery beat publishes report.requested on hotrepos.events, not a Celery task."""

from __future__ import annotations

import datetime as dt

import pytest

from services.fetcher.__main__ import FetcherSettings
from services.fetcher.beat import PublishingScheduler, configure_beat, parse_schedule
from services.fetcher.worker import create_celery_app
from shared.amqp import connect, declare_topology
from shared.publisher import Publisher
from shared.settings import CommonSettings
from tests.support.amqp import EventListener


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
        "priority": "scheduled",
    }
    assert event["correlationid"] == f"scheduled-week-{today}"
    listener.close()
