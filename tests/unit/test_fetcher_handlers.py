"""The fetcher's handlers, called directly with in-memory fakes: what a request schedules, what a fetch yields."""

from __future__ import annotations

import datetime as dt
import random
from typing import Any

import pytest

from services.fetcher.handlers import FETCH_PAGE, FetchPage, RetryPolicy, fetch_page, handle_report_requested
from services.fetcher.search import (
    IncompleteResults,
    PermanentGitHubError,
    RateLimited,
    RetryableGitHubError,
    SearchPage,
    WaitForBudget,
)
from shared.events import (
    PAGES_PER_REPORT,
    ReportFailed,
    ReportPageFetched,
    ReportQueued,
    ReportRequested,
    ReportSpec,
    Repository,
    derived_event_id,
)
from shared.handling import EventMeta, Outgoing, RetryLater
from tests.support.fakes import FakeSearch, meta_of

TODAY = dt.date(2026, 11, 22)
NOW = dt.datetime(2026, 11, 22, 8, 30, tzinfo=dt.UTC)
SPEC = ReportSpec(period="week", since=dt.date(2026, 11, 15))
POLICY = RetryPolicy(max_attempts=3, base_delay=0.5, max_rate_limit_waits=2, incomplete_retries=1)


class ScheduledFetches:
    def __init__(self) -> None:
        self.scheduled: list[FetchPage] = []

    def schedule(self, fetches: list[FetchPage]) -> None:
        self.scheduled.extend(fetches)


class Ledger:
    def __init__(self, *scheduled: str, claimed: tuple[str, ...] = ()) -> None:
        self.scheduled = set(scheduled)
        self.claimed = set(claimed)

    def already_scheduled(self, report_id: str) -> bool:
        return report_id in self.scheduled

    def claim(self, report_id: str) -> str | None:
        if report_id in self.claimed or report_id in self.scheduled:
            return None
        self.claimed.add(report_id)
        return f"token-{report_id}"

    def release(self, report_id: str, token: str) -> None:
        assert token == f"token-{report_id}"
        self.claimed.discard(report_id)

    def mark_scheduled(self, report_id: str, token: str) -> None:
        assert token == f"token-{report_id}"
        self.scheduled.add(report_id)
        self.claimed.discard(report_id)


def request(
    data: ReportRequested, *, event_id: str = "evt-1", ledger: Ledger | None = None
) -> tuple[list[ReportFailed], ScheduledFetches]:
    fetches = ScheduledFetches()
    published = handle_report_requested(
        data,
        meta_of(data, event_id=event_id),
        today=lambda: TODAY,
        now=lambda: NOW,
        fetches=fetches,
        ledger=ledger or Ledger(),
    )
    return published, fetches


def test_a_request_schedules_one_fetch_per_page_and_publishes_nothing() -> None:
    published, fetches = request(ReportRequested(report_id="r-1", period="week", notify="me@example.com"))
    assert published == []
    assert [fetch.page for fetch in fetches.scheduled] == list(range(1, PAGES_PER_REPORT + 1))
    spec = fetches.scheduled[0].spec
    assert (spec.period, spec.since, spec.notify) == ("week", dt.date(2026, 11, 15), "me@example.com")
    assert {fetch.report_id for fetch in fetches.scheduled} == {"r-1"}


@pytest.mark.parametrize("priority", ["interactive", "scheduled", "bulk"])
def test_every_page_of_a_request_waits_in_line_with_its_priority_and_arrival(priority: str) -> None:
    _, fetches = request(ReportRequested(report_id="r-1", period="week", priority=priority))
    tickets = [fetch.ticket() for fetch in fetches.scheduled]
    assert {(ticket.priority, ticket.queued_at) for ticket in tickets} == {(priority, NOW)}
    assert [ticket.id for ticket in tickets] == [f"r-1:{page}" for page in range(1, PAGES_PER_REPORT + 1)]


def test_a_requests_pages_join_the_line_for_budget_before_their_fetches_start() -> None:
    joined: list[list[str]] = []
    fetches = ScheduledFetches()

    class Line:
        def join(self, tickets: list[Any]) -> None:
            assert not fetches.scheduled, "the fetches were scheduled before their pages joined the line"
            joined.append([ticket.id for ticket in tickets])

    data = ReportRequested(report_id="r-1", period="week")
    handle_report_requested(
        data, meta_of(data), today=lambda: TODAY, now=lambda: NOW, fetches=fetches, ledger=Ledger(), line=Line()
    )
    assert joined == [[f"r-1:{page}" for page in range(1, PAGES_PER_REPORT + 1)]]
    assert len(fetches.scheduled) == PAGES_PER_REPORT


def test_a_request_without_a_priority_is_interactive() -> None:
    _, fetches = request(ReportRequested.model_validate({"report_id": "r-1", "period": "day"}))
    assert {fetch.priority for fetch in fetches.scheduled} == {"interactive"}


def test_a_request_without_report_id_is_known_by_its_event_id() -> None:
    _, fetches = request(ReportRequested(period="day"), event_id="evt-42")
    assert {fetch.report_id for fetch in fetches.scheduled} == {"evt-42"}


def test_a_request_already_scheduled_costs_nothing() -> None:
    published, fetches = request(ReportRequested(report_id="r-1", period="day"), ledger=Ledger("r-1"))
    assert published == [] and fetches.scheduled == []


def test_a_duplicate_of_a_request_whose_pages_are_being_fetched_looks_again_later_without_counting() -> None:
    ledger = Ledger(claimed=("r-1",))
    with pytest.raises(RetryLater) as waiting:
        request(ReportRequested(report_id="r-1", period="day"), ledger=ledger)
    assert not waiting.value.counts and waiting.value.delay > 0
    # The claim's holder marks the pages scheduled: the duplicate, back later, is dropped.
    ledger.mark_scheduled("r-1", "token-r-1")
    published, fetches = request(ReportRequested(report_id="r-1", period="day"), ledger=ledger)
    assert published == [] and fetches.scheduled == []


class Outage:
    def schedule(self, fetches: list[FetchPage]) -> None:
        raise ConnectionError("broker did not take the page tasks")


def test_a_request_whose_pages_could_not_be_scheduled_gives_its_claim_back_for_its_retry() -> None:
    ledger = Ledger()
    data = ReportRequested(report_id="r-1", period="day")
    with pytest.raises(ConnectionError):
        handle_report_requested(
            data, meta_of(data, event_id="evt-1"), today=lambda: TODAY, now=lambda: NOW, fetches=Outage(), ledger=ledger
        )
    assert ledger.claimed == set() and ledger.scheduled == set()
    published, fetches = request(data, ledger=ledger)
    assert published == [] and len(fetches.scheduled) == PAGES_PER_REPORT
    assert ledger.scheduled == {"r-1"} and ledger.claimed == set()


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


FETCH = FetchPage(report_id="r-1", page=2, pages=5, spec=SPEC, queued_at=NOW)


def fetch(github: FakeSearch, attempt: int = 0) -> list[Outgoing | ReportFailed]:
    meta = EventMeta(id="fetch-1", type=FETCH_PAGE, attempt=attempt)
    return fetch_page(FETCH, meta, github=github, policy=POLICY, rng=random.Random(3))


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


def waiting(wait: float, *, first: bool, position: int = 4, report_wait: float = 60.0) -> WaitForBudget:
    return WaitForBudget("budget spent", wait, position, report_wait, first)


def test_a_page_waiting_for_budget_comes_back_before_its_turn_without_counting_an_attempt() -> None:
    github = FakeSearch(waiting(12.6, first=False))
    with pytest.raises(RetryLater) as retry:
        fetch(github, attempt=7)
    assert retry.value.counts is False
    # Back a second or two early: the last of the wait is spent in the thread, so no slot goes unused.
    assert retry.value.delay == 11
    assert retry.value.publish == []
    assert github.tickets == [FETCH.ticket()]


def test_the_first_waiting_page_of_a_report_tells_its_place_in_line() -> None:
    with pytest.raises(RetryLater) as retry:
        fetch(FakeSearch(waiting(200.0, first=True, position=4, report_wait=240.04)))
    assert retry.value.counts is False
    assert retry.value.publish == [
        ReportQueued(report_id=FETCH.report_id, priority="interactive", position=4, eta_seconds=240.0)
    ]
    # It comes back sooner than its turn, to tell again, at most every so often.
    assert retry.value.delay == POLICY.queue_update_max_seconds


@pytest.mark.parametrize(
    ("wait", "first", "delay"),
    [(2.5, False, 1.0), (2.5, True, 1.0), (9.9, True, 2.475), (40.0, True, 10.0), (40.0, False, 39.0)],
)
def test_a_waiting_page_never_comes_back_after_its_turn(wait: float, first: bool, delay: float) -> None:
    assert POLICY.budget_poll(waiting(wait, first=first)) == delay
    assert POLICY.budget_poll(waiting(wait, first=first)) < wait
