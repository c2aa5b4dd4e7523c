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
    BudgetTicket,
    IncompleteResults,
    PermanentGitHubError,
    RateLimited,
    RetryableGitHubError,
    SearchPages,
    WaitForBudget,
)
from shared.events import (
    PAGES_PER_REPORT,
    EventData,
    Priority,
    ReportFailed,
    ReportId,
    ReportPageFetched,
    ReportQueued,
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
    priority: Priority = "interactive"
    # When the fetcher took the request: a page's place in the line for GitHub's budget, among its
    # priority. The fetcher's own clock, so that no publisher can date a request back to jump the line.
    queued_at: dt.datetime | None = None

    def ticket(self) -> BudgetTicket:
        queued_at = self.queued_at or self.spec.requested_at or dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
        return BudgetTicket(self.report_id, self.page, self.priority, queued_at)


class PageFetches(Protocol):
    """Where page fetches go to be run, each with retries of its own."""

    def schedule(self, fetches: list[FetchPage]) -> None: ...


class BudgetLine(Protocol):
    """The line for GitHub's search budget, which a report's pages join as the report arrives."""

    def join(self, tickets: list[BudgetTicket]) -> None: ...


class RequestLedger(Protocol):
    """Report ids whose pages were already scheduled, or are being fetched: a duplicate request costs
    no GitHub call."""

    def already_scheduled(self, report_id: str) -> bool: ...

    def claim(self, report_id: str) -> str | None:
        """A token for the one delivery that is to fetch the report's pages, until it marks them
        scheduled, releases the claim, or the claim expires; None while another holds it, or once
        the pages are scheduled."""
        ...

    def release(self, report_id: str, token: str) -> None: ...

    def mark_scheduled(self, report_id: str, token: str) -> None: ...


# A duplicate of a request whose pages another delivery is fetching looks again this soon.
CLAIMED_RECHECK_SECONDS = 2.0


def handle_report_requested(
    event: ReportRequested,
    meta: EventMeta,
    *,
    today: Callable[[], dt.date],
    now: Callable[[], dt.datetime],
    fetches: PageFetches,
    ledger: RequestLedger,
    line: BudgetLine | None = None,
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
    token = ledger.claim(report_id)
    if token is None:
        # Its pages are being fetched right now: once they are, the ledger says so and this is dropped;
        # if their fetcher died, its claim expires and this one fetches them.
        raise RetryLater("another delivery is fetching this report's pages", CLAIMED_RECHECK_SECONDS, counts=False)
    try:
        _fetch_pages(event, report_id, spec, now(), fetches, line)
    except BaseException:
        ledger.release(report_id, token)
        raise
    ledger.mark_scheduled(report_id, token)
    return []


def _fetch_pages(
    event: ReportRequested,
    report_id: str,
    spec: ReportSpec,
    queued_at: dt.datetime,
    fetches: PageFetches,
    line: BudgetLine | None,
) -> None:
    pages = range(1, PAGES_PER_REPORT + 1)
    page_fetches = [
        FetchPage(
            report_id=report_id,
            page=page,
            pages=PAGES_PER_REPORT,
            spec=spec,
            priority=event.priority,
            queued_at=queued_at,
        )
        for page in pages
    ]
    if line is not None:
        line.join([fetch.ticket() for fetch in page_fetches])
    fetches.schedule(page_fetches)


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 5
    base_delay: float = 1.0
    max_delay: float = 60.0
    max_rate_limit_waits: int = 10
    incomplete_retries: int = 2
    # A report's first waiting page comes back at least this often, to tell where the report stands.
    queue_update_max_seconds: float = 30.0

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """Exponential backoff with full jitter, so replicas do not retry in lockstep."""
        return rng.uniform(0, min(self.max_delay, self.base_delay * 2**attempt))

    def budget_poll(self, wait: WaitForBudget) -> float:
        """When a page waiting for budget comes back: a little before its turn, whose last seconds it
        waits in its thread; the report's first waiting page sooner, a quarter of its wait, so that
        its place in line is told more often as the turn nears."""
        due = max(1.0, float(int(wait.wait_seconds)) - 1.0)
        if wait.first_of_report:
            return min(due, max(1.0, min(self.queue_update_max_seconds, wait.wait_seconds / 4)))
        return due


def fetch_page(
    event: FetchPage, meta: EventMeta, *, github: SearchPages, policy: RetryPolicy, rng: random.Random
) -> list[Outgoing | ReportFailed]:
    """One page: its page event, a retry later (RetryLater), or the report's failure."""
    attempt = meta.attempt
    try:
        result = github.search_page(event.spec.since, event.page, event.ticket())
        incomplete = False
    except WaitForBudget as exc:
        # Waiting for one's turn is no failure: the retry does not count, and the report's first
        # waiting page tells where the report stands.
        queued = ReportQueued(
            report_id=event.report_id,
            priority=event.priority,
            position=exc.position,
            eta_seconds=round(exc.report_wait_seconds, 1),
        )
        notice = [queued] if exc.first_of_report else []
        raise RetryLater(str(exc), policy.budget_poll(exc), counts=False, publish=notice) from exc
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
