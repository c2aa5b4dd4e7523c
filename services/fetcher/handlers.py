"""Fetcher handlers: a report request becomes one page fetch per search page; each fetch, a page event."""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import structlog
from pydantic import Field

from services.fetcher.search import (
    IncompleteResults,
    PermanentGitHubError,
    RateLimited,
    RetryableGitHubError,
    SearchPages,
)
from shared.events import (
    PAGES_PER_REPORT,
    EventData,
    ReportFailed,
    ReportId,
    ReportPageFetched,
    ReportRequested,
    ReportSpec,
    derived_event_id,
    report_id_of,
    since_date,
)
from shared.handling import EventMeta, Outgoing, RetryLater

log = structlog.get_logger("hotrepos.fetcher")

# The fetcher's own message, never seen outside it: one page to fetch, carried by a Celery task.
FETCH_PAGE = "fetcher.fetch_page"


class FetchPage(EventData):
    """Fetch one search page of a report."""

    report_id: ReportId
    page: int = Field(ge=1)
    pages: int = Field(ge=1, le=10)
    spec: ReportSpec


class PageFetches(Protocol):
    """Where page fetches go to be run, each with retries of its own."""

    def schedule(self, fetches: list[FetchPage]) -> None: ...


class RequestLedger(Protocol):
    """Report ids whose pages were already scheduled: a duplicate request costs no GitHub call."""

    def already_scheduled(self, report_id: str) -> bool: ...

    def mark_scheduled(self, report_id: str) -> None: ...


def handle_report_requested(
    event: ReportRequested,
    meta: EventMeta,
    *,
    today: Callable[[], dt.date],
    fetches: PageFetches,
    ledger: RequestLedger,
) -> list[ReportFailed]:
    report_id = report_id_of(event, meta.id)
    assert report_id is not None  # a request always has one
    current = today()
    ref_date = event.ref_date or current
    spec = ReportSpec(
        period=event.period,
        since=since_date(event.period, ref_date),
        layout=event.layout,
        notify=event.notify,
        requested_at=meta.time or dt.datetime.now(dt.UTC),
    )
    if ref_date > current:
        reason = f"ref_date {ref_date.isoformat()} is in the future (today is {current.isoformat()} UTC)"
        return [ReportFailed(report_id=report_id, stage="request", reason=reason, spec=spec)]
    if ledger.already_scheduled(report_id):
        return []
    pages = range(1, PAGES_PER_REPORT + 1)
    fetches.schedule([FetchPage(report_id=report_id, page=page, pages=PAGES_PER_REPORT, spec=spec) for page in pages])
    ledger.mark_scheduled(report_id)
    return []


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 5
    base_delay: float = 1.0
    max_delay: float = 60.0
    max_rate_limit_waits: int = 10
    incomplete_retries: int = 2

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """Exponential backoff with full jitter, so replicas do not retry in lockstep."""
        return rng.uniform(0, min(self.max_delay, self.base_delay * 2**attempt))


def fetch_page(
    event: FetchPage, meta: EventMeta, *, github: SearchPages, policy: RetryPolicy, rng: random.Random
) -> list[Outgoing | ReportFailed]:
    """One page: its page event, a retry later (RetryLater), or the report's failure."""
    attempt = meta.attempt
    try:
        result = github.search_page(event.spec.since, event.page)
        incomplete = False
    except IncompleteResults as exc:
        if attempt < policy.incomplete_retries:
            raise RetryLater(str(exc), policy.backoff(attempt, rng)) from exc
        result, incomplete = exc.page, True
    except RateLimited as exc:
        if attempt < policy.max_rate_limit_waits:
            raise RetryLater(str(exc), exc.wait_seconds + rng.uniform(0, 1)) from exc
        return [_failed(event, f"{exc} (gave up after {attempt + 1} attempts)")]
    except RetryableGitHubError as exc:
        if attempt + 1 < policy.max_attempts:
            raise RetryLater(str(exc), policy.backoff(attempt, rng)) from exc
        return [_failed(event, f"{exc} (gave up after {attempt + 1} attempts)")]
    except PermanentGitHubError as exc:
        return [_failed(event, str(exc))]
    # Which replica fetched which page, and what came back: the one trace of a page in the fetcher's log.
    log.info("page.fetched", page=event.page, items=len(result.items), incomplete=incomplete)
    page = ReportPageFetched(
        report_id=event.report_id,
        page=event.page,
        pages=event.pages,
        spec=event.spec,
        items=result.items,
        incomplete_results=incomplete,
    )
    return [Outgoing(page, event_id=derived_event_id(event.report_id, "page", str(event.page)))]


def _failed(event: FetchPage, reason: str) -> ReportFailed:
    return ReportFailed(report_id=event.report_id, stage="fetch", reason=reason, spec=event.spec)
