"""Aggregator handlers: pure functions of (event, dependencies) that return what to publish."""

from __future__ import annotations

from services.aggregator.fan_in import PageStore
from services.aggregator.grouping import deduplicate, group_by_language
from shared.events import ReportAggregated, ReportPageFetched, derived_event_id
from shared.handling import EventMeta, Outgoing


def handle_report_page_fetched(event: ReportPageFetched, meta: EventMeta, *, pages: PageStore) -> list[Outgoing]:
    arrival = pages.add_page(event.report_id, event.page, event.pages, event.items, incomplete=event.incomplete_results)
    if arrival.complete_pages is None:
        return []
    # A duplicate page after completion republishes the same event (same id): downstream dedupes it,
    # and a crash between completion and publishing is healed by the redelivery.
    ordered = [arrival.complete_pages[number] for number in sorted(arrival.complete_pages)]
    repositories = deduplicate(ordered)
    aggregated = ReportAggregated(
        report_id=event.report_id,
        spec=event.spec,
        total=len(repositories),
        languages=group_by_language(repositories),
        incomplete_pages=list(arrival.incomplete_pages),
    )
    return [Outgoing(aggregated, event_id=derived_event_id(event.report_id, "aggregated"))]
