"""Prometheus metrics, recorded by the shared layers so that no service writes them by hand."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVENTS_CONSUMED = Counter(
    "hotrepos_events_consumed_total", "Events consumed, by type and outcome", ["type", "outcome"]
)
EVENTS_PUBLISHED = Counter("hotrepos_events_published_total", "Events published, by type", ["type"])
HANDLER_SECONDS = Histogram(
    "hotrepos_handler_duration_seconds", "Time spent handling one event, by type", ["type"]
)
GITHUB_REQUESTS = Counter("hotrepos_github_requests_total", "GitHub API requests, by status", ["status"])
GITHUB_RATE_LIMIT_REMAINING = Gauge(
    "hotrepos_github_rate_limit_remaining", "X-RateLimit-Remaining of the last GitHub answer"
)
EMAILS = Counter("hotrepos_emails_total", "Emails, by kind and outcome", ["kind", "outcome"])
REPORTS = Counter("hotrepos_reports_total", "Reports finished, by outcome", ["outcome"])
