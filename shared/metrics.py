"""Prometheus metrics, recorded by the shared layers so that no service writes them by hand."""

from __future__ import annotations

import datetime as dt
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge, Histogram

if TYPE_CHECKING:
    from shared.events import CloudEvent

EVENTS_CONSUMED = Counter("hotrepos_events_consumed_total", "Events consumed, by type and outcome", ["type", "outcome"])
EVENTS_PUBLISHED = Counter("hotrepos_events_published_total", "Events published, by type", ["type"])
HANDLER_SECONDS = Histogram("hotrepos_handler_duration_seconds", "Time spent handling one event, by type", ["type"])
GITHUB_REQUESTS = Counter("hotrepos_github_requests_total", "GitHub API requests, by status", ["status"])
GITHUB_RATE_LIMIT_REMAINING = Gauge(
    "hotrepos_github_rate_limit_remaining", "X-RateLimit-Remaining of the last GitHub answer"
)
GITHUB_BUDGET_WAITING = Gauge(
    "hotrepos_github_budget_waiting_pages",
    "Pages waiting in line for GitHub's search budget, every replica's, as this replica last saw the line",
)
EMAILS = Counter("hotrepos_emails_total", "Emails, by kind and outcome", ["kind", "outcome"])
WEBHOOK_DELIVERIES = Counter(
    "hotrepos_webhook_deliveries_total",
    "Webhook delivery attempts, by format and outcome (2xx, 3xx, 4xx, 5xx, timeout, connection-error, refused)",
    ["format", "outcome"],
)
WEBHOOK_SECONDS = Histogram(
    "hotrepos_webhook_delivery_duration_seconds",
    "One webhook delivery attempt, from connecting to the answer read, by format",
    ["format"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
REPORTS = Counter("hotrepos_reports_total", "Reports finished, by outcome", ["outcome"])
REPORT_SECONDS = Histogram(
    "hotrepos_report_duration_seconds",
    "From a report's request to its outcome, by outcome",
    ["outcome"],
    buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600),
)
ERRORS_LOGGED = Counter("hotrepos_errors_logged_total", "ERROR and CRITICAL log records", ["level"])
ALERTS_DROPPED = Counter(
    "hotrepos_alerts_dropped_total", "Alerts dropped, the oldest first, while the broker stayed unreachable"
)

# The events that end a report, and the outcome each one stands for.
REPORT_OUTCOMES = {"report.exported": "exported", "report.failed": "failed"}


class _RecentIds:
    """A bounded memory of event ids, so that republishing one outcome counts it once."""

    def __init__(self, size: int = 10_000) -> None:
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def first_time(self, event_id: str) -> bool:
        with self._lock:
            if event_id in self._ids:
                return False
            self._ids[event_id] = None
            if len(self._ids) > self._size:
                self._ids.popitem(last=False)
            return True


_counted_outcomes = _RecentIds()


def record_published(event: CloudEvent) -> None:
    """Count a published event and, once per event id, the report outcome it stands for."""
    EVENTS_PUBLISHED.labels(type=event.type).inc()
    outcome = REPORT_OUTCOMES.get(event.type)
    if outcome is None or not _counted_outcomes.first_time(event.id):
        return
    REPORTS.labels(outcome=outcome).inc()
    requested_at = _requested_at(event.data)
    if requested_at is not None and event.time is not None:
        elapsed = (event.time - requested_at).total_seconds()
        if elapsed >= 0:  # a requester's clock ahead of ours says nothing about our latency
            REPORT_SECONDS.labels(outcome=outcome).observe(elapsed)


def _requested_at(data: object) -> dt.datetime | None:
    # A published event carries its model; one decoded elsewhere, parsed JSON.
    requested_at = getattr(getattr(data, "spec", None), "requested_at", None)
    if isinstance(requested_at, dt.datetime):
        return requested_at
    spec = data.get("spec") if isinstance(data, dict) else None
    value = spec.get("requested_at") if isinstance(spec, dict) else None
    if not isinstance(value, str):
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)
