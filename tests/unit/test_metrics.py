"""What the publisher records about a report's outcome: once per event id, with its latency."""

from __future__ import annotations

import datetime as dt
import uuid

from shared import metrics
from shared.events import CloudEvent
from tests.support.metrics import sample

REQUESTED_AT = dt.datetime(2026, 11, 22, 8, 0, tzinfo=dt.UTC)


def outcome_event(event_type: str, *, seconds_later: float, event_id: str | None = None) -> CloudEvent:
    data = {
        "report_id": "r-1",
        "spec": {"period": "day", "since": "2026-11-21", "requested_at": REQUESTED_AT.isoformat()},
    }
    return CloudEvent(
        specversion="1.0",
        id=event_id or str(uuid.uuid4()),
        type=event_type,
        source="tests",
        time=REQUESTED_AT + dt.timedelta(seconds=seconds_later),
        data=data,
    )


def test_an_outcome_republished_with_the_same_id_counts_once() -> None:
    before = sample("hotrepos_reports_total", outcome="failed")
    published_before = sample("hotrepos_events_published_total", type="report.failed")
    event = outcome_event("report.failed", seconds_later=3)
    metrics.record_published(event)
    metrics.record_published(event)
    assert sample("hotrepos_reports_total", outcome="failed") - before == 1
    assert sample("hotrepos_events_published_total", type="report.failed") - published_before == 2


def test_the_latency_runs_from_the_request_to_the_outcome() -> None:
    count = sample("hotrepos_report_duration_seconds_count", outcome="exported")
    total = sample("hotrepos_report_duration_seconds_sum", outcome="exported")
    metrics.record_published(outcome_event("report.exported", seconds_later=42.5))
    assert sample("hotrepos_report_duration_seconds_count", outcome="exported") - count == 1
    assert sample("hotrepos_report_duration_seconds_sum", outcome="exported") - total == 42.5


def test_a_requester_clock_ahead_of_ours_gives_no_latency() -> None:
    count = sample("hotrepos_report_duration_seconds_count", outcome="exported")
    reports = sample("hotrepos_reports_total", outcome="exported")
    metrics.record_published(outcome_event("report.exported", seconds_later=-30))
    assert sample("hotrepos_report_duration_seconds_count", outcome="exported") == count
    assert sample("hotrepos_reports_total", outcome="exported") - reports == 1


def test_other_events_are_no_outcome() -> None:
    reports = sample("hotrepos_reports_total", outcome="exported") + sample("hotrepos_reports_total", outcome="failed")
    metrics.record_published(outcome_event("report.aggregated", seconds_later=1))
    after = sample("hotrepos_reports_total", outcome="exported") + sample("hotrepos_reports_total", outcome="failed")
    assert after == reports
