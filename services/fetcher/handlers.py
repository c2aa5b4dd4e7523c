"""Fetcher handlers: a report request becomes one page fetch per search page."""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from services.fetcher.github import (
    GitHubClient,
    IncompleteResults,
    PermanentGitHubError,
    RateLimited,
    RetryableGitHubError,
)
from shared.control import Cancellations
from shared.events import (
    PAGES_PER_REPORT,
    CloudEvent,
    ReportFailed,
    ReportPageFetched,
    ReportRequested,
    ReportSpec,
    derived_event_id,
    request_report_id,
    since_date,
)
from shared.messaging import Outgoing


@dataclass(frozen=True)
class PageFetch:
    report_id: str
    page: int
    pages: int
    spec: ReportSpec


class FetchScheduler(Protocol):
    def schedule(self, fetches: list[PageFetch]) -> None: ...


class RequestLedger(Protocol):
    """Report ids whose pages were already scheduled: a duplicate request costs no GitHub call."""

    def already_scheduled(self, report_id: str) -> bool: ...

    def mark_scheduled(self, report_id: str) -> None: ...


def handle_report_requested(
    event: ReportRequested,
    meta: CloudEvent,
    *,
    today: Callable[[], dt.date],
    fetches: FetchScheduler,
    ledger: RequestLedger,
    cancellations: Cancellations,
) -> list[Outgoing]:
    report_id = request_report_id(event.report_id, meta.id)
    if cancellations.is_cancelled(report_id):
        return []
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
        return [failed(report_id, "request", reason, spec)]
    if ledger.already_scheduled(report_id):
        return []
    fetches.schedule([PageFetch(report_id, page, PAGES_PER_REPORT, spec) for page in range(1, PAGES_PER_REPORT + 1)])
    ledger.mark_scheduled(report_id)
    return []


def failed(report_id: str, stage: str, reason: str, spec: ReportSpec | None) -> Outgoing:
    # One id per report and outcome: several pages failing tell the requester once.
    return Outgoing(
        ReportFailed(report_id=report_id, stage=stage, reason=reason, spec=spec),
        event_id=derived_event_id(report_id, "failed"),
        correlationid=report_id,
    )


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


@dataclass(frozen=True)
class Retry:
    countdown: float
    reason: str


def fetch_page(
    fetch: PageFetch,
    attempt: int,
    *,
    github: GitHubClient,
    policy: RetryPolicy,
    rng: random.Random,
) -> Outgoing | Retry:
    """Fetch one page: the page event, a retry with its delay, or the report's failure."""
    try:
        result = github.search_page(fetch.spec.since, fetch.page)
        incomplete = False
    except IncompleteResults as exc:
        if attempt < policy.incomplete_retries:
            return Retry(policy.backoff(attempt, rng), str(exc))
        result, incomplete = exc.page, True
    except RateLimited as exc:
        if attempt < policy.max_rate_limit_waits:
            return Retry(exc.wait_seconds + rng.uniform(0, 1), str(exc))
        return failed(fetch.report_id, "fetch", f"{exc} (gave up after {attempt + 1} attempts)", fetch.spec)
    except RetryableGitHubError as exc:
        if attempt + 1 < policy.max_attempts:
            return Retry(policy.backoff(attempt, rng), str(exc))
        return failed(fetch.report_id, "fetch", f"{exc} (gave up after {attempt + 1} attempts)", fetch.spec)
    except PermanentGitHubError as exc:
        return failed(fetch.report_id, "fetch", str(exc), fetch.spec)
    page = ReportPageFetched(
        report_id=fetch.report_id,
        page=fetch.page,
        pages=fetch.pages,
        spec=fetch.spec,
        items=result.items,
        incomplete_results=incomplete,
    )
    return Outgoing(page, event_id=derived_event_id(fetch.report_id, "page", str(fetch.page)))
