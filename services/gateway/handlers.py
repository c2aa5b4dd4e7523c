"""Gateway handlers: each report event folds into the status projection that the HTTP API reads."""

from __future__ import annotations

from services.gateway.store import ReportStatuses
from shared.events import (
    ReportAggregated,
    ReportExported,
    ReportFailed,
    ReportPageFetched,
    ReportQueued,
    ReportRequested,
)
from shared.handling import EventMeta


def handle_report_requested(event: ReportRequested, meta: EventMeta, *, statuses: ReportStatuses) -> None:
    statuses.apply(event, meta)


def handle_report_queued(event: ReportQueued, meta: EventMeta, *, statuses: ReportStatuses) -> None:
    statuses.apply(event, meta)


def handle_report_page_fetched(event: ReportPageFetched, meta: EventMeta, *, statuses: ReportStatuses) -> None:
    statuses.apply(event, meta)


def handle_report_aggregated(event: ReportAggregated, meta: EventMeta, *, statuses: ReportStatuses) -> None:
    statuses.apply(event, meta)


def handle_report_exported(event: ReportExported, meta: EventMeta, *, statuses: ReportStatuses) -> None:
    statuses.apply(event, meta)


def handle_report_failed(event: ReportFailed, meta: EventMeta, *, statuses: ReportStatuses) -> None:
    statuses.apply(event, meta)
