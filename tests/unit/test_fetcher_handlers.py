"""The fetcher's handlers, called directly with in-memory fakes: what a request schedules, what a fetch yields."""

from __future__ import annotations

import datetime as dt
import random

import pytest

from services.fetcher.handlers import FETCH_PAGE, FetchPage, RetryPolicy, fetch_page, handle_report_requested
from services.fetcher.search import (
    IncompleteResults,
    PermanentGitHubError,
    RateLimited,
    RetryableGitHubError,
    SearchPage,
)
from shared.events import (
    PAGES_PER_REPORT,
    ReportFailed,
    ReportPageFetched,
    ReportRequested,
    ReportSpec,
    Repository,
    derived_event_id,
)
from shared.handling import EventMeta, Outgoing, RetryLater
from tests.support.fakes import FakeSearch, meta_of

TODAY = dt.date(2026, 11, 22)
SPEC = ReportSpec(period="week", since=dt.date(2026, 11, 15))
POLICY = RetryPolicy(max_attempts=3, base_delay=0.5, max_rate_limit_waits=2, incomplete_retries=1)


class ScheduledFetches:
    def __init__(self) -> None:
        self.scheduled: list[FetchPage] = []

    def schedule(self, fetches: list[FetchPage]) -> None:
        self.scheduled.extend(fetches)


class Ledger:
    def __init__(self, *scheduled: str) -> None:
        self.scheduled = set(scheduled)

    def already_scheduled(self, report_id: str) -> bool:
        return report_id in self.scheduled

    def mark_scheduled(self, report_id: str) -> None:
        self.scheduled.add(report_id)


def request(
    data: ReportRequested, *, event_id: str = "evt-1", ledger: Ledger | None = None
) -> tuple[list[ReportFailed], ScheduledFetches]:
    fetches = ScheduledFetches()
    published = handle_report_requested(
        data, meta_of(data, event_id=event_id), today=lambda: TODAY, fetches=fetches, ledger=ledger or Ledger()
    )
    return published, fetches


def test_a_request_schedules_one_fetch_per_page_and_publishes_nothing() -> None:
    published, fetches = request(ReportRequested(report_id="r-1", period="week", notify="me@example.com"))
    assert published == []
    assert [fetch.page for fetch in fetches.scheduled] == list(range(1, PAGES_PER_REPORT + 1))
    spec = fetches.scheduled[0].spec
    assert (spec.period, spec.since, spec.notify) == ("week", dt.date(2026, 11, 15), "me@example.com")
    assert {fetch.report_id for fetch in fetches.scheduled} == {"r-1"}


def test_a_request_without_report_id_is_known_by_its_event_id() -> None:
    _, fetches = request(ReportRequested(period="day"), event_id="evt-42")
    assert {fetch.report_id for fetch in fetches.scheduled} == {"evt-42"}


def test_a_request_already_scheduled_costs_nothing() -> None:
    published, fetches = request(ReportRequested(report_id="r-1", period="day"), ledger=Ledger("r-1"))
    assert published == [] and fetches.scheduled == []


def test_a_request_for_the_future_fails_at_the_request_stage() -> None:
    published, fetches = request(ReportRequested(report_id="r-1", period="day", ref_date=TODAY + dt.timedelta(days=1)))
    assert fetches.scheduled == []
    [failed] = published
    assert (failed.report_id, failed.stage) == ("r-1", "request")
    assert "in the future" in failed.reason


def page(items: int = 2, *, incomplete: bool = False) -> SearchPage:
    repositories = [
        Repository(
            id=number,
            full_name=f"o/r{number}",
            html_url=f"https://github.com/o/r{number}",
            stargazers_count=number,
            forks_count=0,
            created_at="2026-11-20T00:00:00Z",
        )
        for number in range(items)
    ]
    return SearchPage(repositories, total_count=items, incomplete_results=incomplete)


def fetch(github: FakeSearch, attempt: int = 0) -> list[Outgoing | ReportFailed]:
    event = FetchPage(report_id="r-1", page=2, pages=5, spec=SPEC)
    meta = EventMeta(id="fetch-1", type=FETCH_PAGE, attempt=attempt)
    return fetch_page(event, meta, github=github, policy=POLICY, rng=random.Random(3))


def test_a_fetched_page_is_published_under_an_id_derived_from_the_report_and_page() -> None:
    github = FakeSearch(page(3))
    [outgoing] = fetch(github)
    assert isinstance(outgoing, Outgoing) and isinstance(outgoing.data, ReportPageFetched)
    assert outgoing.event_id == derived_event_id("r-1", "page", "2")
    assert (outgoing.data.page, outgoing.data.pages, len(outgoing.data.items)) == (2, 5, 3)
    assert not outgoing.data.incomplete_results
    assert github.calls == [(SPEC.since, 2)]


def test_incomplete_results_are_retried_then_published_as_incomplete() -> None:
    github = FakeSearch(IncompleteResults("partial", page(1, incomplete=True)))
    with pytest.raises(RetryLater):
        fetch(github, attempt=0)
    [outgoing] = fetch(github, attempt=1)
    assert isinstance(outgoing, Outgoing) and isinstance(outgoing.data, ReportPageFetched)
    assert outgoing.data.incomplete_results


def test_a_rate_limit_waits_as_long_as_github_says_then_fails_the_report() -> None:
    github = FakeSearch(RateLimited("slow down", wait_seconds=7))
    with pytest.raises(RetryLater) as retry:
        fetch(github, attempt=1)
    assert retry.value.delay is not None and 7 <= retry.value.delay <= 8
    [failed] = fetch(github, attempt=2)
    assert isinstance(failed, ReportFailed) and failed.stage == "fetch" and "gave up after 3 attempts" in failed.reason


def test_a_retryable_error_backs_off_then_fails_the_report() -> None:
    github = FakeSearch(RetryableGitHubError("503"))
    with pytest.raises(RetryLater) as retry:
        fetch(github, attempt=0)
    assert retry.value.delay is not None and 0 <= retry.value.delay <= 0.5
    [failed] = fetch(github, attempt=2)
    assert isinstance(failed, ReportFailed) and failed.spec == SPEC


def test_a_permanent_error_fails_the_report_at_once() -> None:
    [failed] = fetch(FakeSearch(PermanentGitHubError("422 Validation Failed")), attempt=0)
    assert isinstance(failed, ReportFailed) and failed.reason == "422 Validation Failed"
