"""GitHub's search budget against the real Redis and the fake GitHub: the shared page cache, one fetch
per page in flight, conditional requests, one request budget for every replica, and the line of pages
waiting for it, in priority order."""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from collections.abc import Iterator

import pytest
import redis

from services.fetcher.github import GitHubClient, RateLimited, SearchPage
from services.fetcher.github_cache import RedisPageCache, github_scope
from services.fetcher.rate_budget import CancellationsLeavingTheLine, Grant, RedisRequestBudget
from services.fetcher.search import BudgetTicket, WaitForBudget
from shared.control import RedisCancellations
from shared.events import Priority
from tests.fake_github import FakeGitHub
from tests.support.waiting import eventually

SINCE = dt.date(2026, 10, 23)
T0 = dt.datetime(2026, 11, 22, 8, 0, tzinfo=dt.UTC)


def ticket(report_id: str, page: int = 1, priority: Priority = "interactive", after_seconds: float = 0) -> BudgetTicket:
    return BudgetTicket(report_id, page, priority, T0 + dt.timedelta(seconds=after_seconds))


@pytest.fixture
def github() -> Iterator[FakeGitHub]:
    with FakeGitHub(port=0, seed=7, today=dt.date(2026, 11, 22)) as fake:
        yield fake


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def token(github: FakeGitHub, redis_client: redis.Redis) -> Iterator[str]:
    """A token of its own per test: every Redis key the test touches is scoped by it."""
    value = f"budget-{uuid.uuid4().hex[:12]}"
    yield value
    for key in redis_client.scan_iter(f"hotrepos:github:*{github_scope(github.url, value)}*", count=1000):
        redis_client.delete(key)


def replica(
    github: FakeGitHub,
    redis_client: redis.Redis,
    token: str,
    *,
    fresh_seconds: float | None = 60,
    limit: int | None = None,
) -> GitHubClient:
    """What one fetcher process builds: its own HTTP session, the shared cache and budget."""
    scope = github_scope(github.url, token)
    return GitHubClient(
        github.url,
        token,
        cache=RedisPageCache(redis_client, fresh_seconds) if fresh_seconds is not None else None,
        budget=RedisRequestBudget(redis_client, limit, scope) if limit is not None else None,
    )


def test_a_fresh_page_is_served_from_the_cache(github: FakeGitHub, redis_client: redis.Redis, token: str) -> None:
    first = replica(github, redis_client, token).search_page(SINCE, 2)
    again = replica(github, redis_client, token).search_page(SINCE, 2)
    assert again.items == first.items and again.total_count == first.total_count
    assert [r.id for r in first.items] == [i["id"] for i in github.expected_items(SINCE, pages=2)[100:]]
    assert github.stats()["requests"] == 1


def test_concurrent_identical_fetches_cost_one_request(
    github: FakeGitHub, redis_client: redis.Redis, token: str
) -> None:
    github.set_latency(300)  # all six ask while the first answer is still on its way
    replicas = [replica(github, redis_client, token) for _ in range(6)]
    pages: list[SearchPage] = []
    lock = threading.Lock()
    start = threading.Barrier(len(replicas))

    def fetch(client: GitHubClient) -> None:
        start.wait()
        page = client.search_page(SINCE, 1)
        with lock:
            pages.append(page)

    threads = [threading.Thread(target=fetch, args=(client,)) for client in replicas]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(pages) == 6 and all(page.items == pages[0].items for page in pages)
    assert github.stats()["requests"] == 1


def test_a_stale_page_is_revalidated_with_its_etag_for_free(
    github: FakeGitHub, redis_client: redis.Redis, token: str
) -> None:
    # Never fresh: each search asks GitHub again, with the ETag of the page it holds.
    client = replica(github, redis_client, token, fresh_seconds=0, limit=10)
    first = client.search_page(SINCE, 1)
    again = client.search_page(SINCE, 1)
    assert again.items == first.items
    stats = github.stats()
    assert stats["requests"] == 2 and stats["not_modified"] == 1 and stats["by_status"] == {"200": 1, "304": 1}
    budget = RedisRequestBudget(redis_client, 2, github_scope(github.url, token))
    # The 304 gave its slot back: of a budget of 2, one is left.
    assert budget.take(ticket("a")).slot is not None and budget.take(ticket("b")).slot is None


def test_replicas_share_one_budget_and_stay_under_githubs_limit(
    github: FakeGitHub, redis_client: redis.Redis, token: str
) -> None:
    github.set_rate_limit(3)
    first = replica(github, redis_client, token, fresh_seconds=None, limit=3)
    second = replica(github, redis_client, token, fresh_seconds=None, limit=3)
    first.search_page(SINCE, 1)
    second.search_page(SINCE, 2)
    first.search_page(SINCE, 3)
    with pytest.raises(WaitForBudget) as waited:
        second.search_page(SINCE, 4)
    assert 50 <= waited.value.wait_seconds <= 62
    stats = github.stats()
    assert stats["requests"] == 3 and stats["rate_limited"] == 0


def test_githubs_own_rate_limit_pauses_every_replica(github: FakeGitHub, redis_client: redis.Redis, token: str) -> None:
    github.add_fault("rate_limit", page=1, times=1, reset_in=30)
    with pytest.raises(RateLimited):
        replica(github, redis_client, token, fresh_seconds=None, limit=30).search_page(SINCE, 1)
    other = RedisRequestBudget(redis_client, 30, github_scope(github.url, token))
    grant = other.take(ticket("r"))
    assert grant.slot is None and 20 <= grant.wait_seconds <= 31


def budget_of(
    redis_client: redis.Redis, github: FakeGitHub, token: str, limit: int, window: float, **options: float
) -> RedisRequestBudget:
    return RedisRequestBudget(redis_client, limit, github_scope(github.url, token), window_seconds=window, **options)


def spend(budget: RedisRequestBudget, count: int) -> None:
    """Requests made and answered: counted in the window, no longer in flight."""
    for n in range(count):
        slot = budget.take(ticket(f"spent-{n}")).slot
        assert slot is not None
        budget.finish(slot)


def test_the_budget_goes_by_priority_then_by_arrival(github: FakeGitHub, redis_client: redis.Redis, token: str) -> None:
    budget = budget_of(redis_client, github, token, limit=2, window=1.0)
    spend(budget, 2)
    line = [
        ticket("bulk", priority="bulk", after_seconds=-5),
        ticket("nightly", priority="scheduled", after_seconds=0),
        ticket("person", priority="interactive", after_seconds=9),
        ticket("weekly", priority="scheduled", after_seconds=1),
    ]
    for waiting in line:
        assert budget.take(waiting).slot is None
    # Each comes back: where it stands now that all four wait.
    places = {t.report_id: budget.take(t) for t in line}
    assert {name: grant.position for name, grant in places.items()} == {
        "person": 0,
        "nightly": 1,
        "weekly": 2,
        "bulk": 3,
    }
    # When the window has passed, two slots free up: the person's, then the nightly report's. The
    # weekly one, asking first, does not take either.
    person = eventually(lambda: budget.take(line[2]).slot, timeout=5, message="the person's page never got its slot")
    assert budget.take(line[3]).slot is None
    # The nightly report starts once the person's page is fetched, not beside it.
    assert budget.take(line[1]).slot is None
    budget.finish(person)
    assert budget.take(line[1]).slot is not None
    weekly = budget.take(line[3])
    assert weekly.slot is None and weekly.position == 0


def test_the_wait_comes_from_the_budgets_real_rate(github: FakeGitHub, redis_client: redis.Redis, token: str) -> None:
    budget = budget_of(redis_client, github, token, limit=3, window=10.0)
    spend(budget, 3)
    first, second, third, fourth = (budget.take(ticket(f"r{n}", after_seconds=n)) for n in range(4))
    # The three slots free up one window after they were granted; the fourth waits a window more.
    for grant in (first, second, third):
        assert 10.0 <= grant.wait_seconds <= 10.3
    assert 20.3 <= fourth.wait_seconds <= 20.6
    assert [g.position for g in (first, second, third, fourth)] == [0, 1, 2, 3]


def test_a_place_counts_reports_and_the_estimate_covers_the_reports_last_page(
    github: FakeGitHub, redis_client: redis.Redis, token: str
) -> None:
    budget = budget_of(redis_client, github, token, limit=2, window=10.0)
    spend(budget, 2)
    ahead = [budget.take(ticket("ahead", page)) for page in range(1, 6)]
    behind = [budget.take(ticket("behind", page, after_seconds=1)) for page in range(1, 6)]
    assert [g.first_of_report for g in ahead] == [True, False, False, False, False]
    assert [g.first_of_report for g in behind] == [True, False, False, False, False]
    # Each report's first page comes back: where the report stands now that all ten pages wait.
    ahead[0], behind[0] = budget.take(ticket("ahead", 1)), budget.take(ticket("behind", 1, after_seconds=1))
    assert (ahead[0].position, behind[0].position) == (0, 1)
    # Ten pages wait for two slots a window (10 s, and 0.25 s of slack): the second report's last page
    # waits five windows, the first report's three.
    assert 51.0 <= behind[0].report_wait_seconds <= 51.3
    assert 30.5 <= ahead[0].report_wait_seconds <= 30.8


def test_a_lower_priority_waits_while_a_higher_one_is_still_fetching(
    github: FakeGitHub, redis_client: redis.Redis, token: str
) -> None:
    budget = budget_of(redis_client, github, token, limit=10, window=60.0)
    person = budget.take(ticket("person"))
    assert person.slot is not None
    nightly = budget.take(ticket("nightly", priority="scheduled"))
    assert nightly.slot is None and nightly.wait_seconds < 1
    budget.finish(person.slot)
    assert budget.take(ticket("nightly", priority="scheduled")).slot is not None


def test_a_page_that_never_comes_back_loses_its_place(
    github: FakeGitHub, redis_client: redis.Redis, token: str
) -> None:
    budget = budget_of(redis_client, github, token, limit=1, window=1.0, lease_grace_seconds=0.2)
    spend(budget, 1)
    lost = budget.take(ticket("lost"))
    assert lost.slot is None
    # Its turn came, and it did not: the next report takes the slot once the lease has run out.
    grants: list[Grant] = []

    def next_report_served() -> str | None:
        grants.append(budget.take(ticket("next", after_seconds=1)))
        return grants[-1].slot

    eventually(next_report_served, timeout=5, message=lambda: f"the lost page still blocks the line: {grants[-1]}")
    assert budget.waiting() == 0


def test_a_cancelled_report_leaves_the_line_and_those_behind_move_up(
    github: FakeGitHub, redis_client: redis.Redis, token: str
) -> None:
    budget = budget_of(redis_client, github, token, limit=1, window=60.0)
    spend(budget, 1)
    for report_id, after in (("first", 0), ("cancelled", 1), ("last", 2)):
        for page in range(1, 6):
            budget.take(ticket(report_id, page, after_seconds=after))
    assert budget.take(ticket("last", 1, after_seconds=2)).position == 2
    cancellations = CancellationsLeavingTheLine(RedisCancellations(redis_client), budget)
    cancellations.cancel("cancelled")
    try:
        assert budget.waiting() == 10
        last = budget.take(ticket("last", 1, after_seconds=2))
        assert last.position == 1 and last.pages_waiting == 10
        assert cancellations.is_cancelled("cancelled")
    finally:
        redis_client.delete("hotrepos:cancelled:cancelled")


def test_a_waiting_page_served_from_the_cache_leaves_the_line(
    github: FakeGitHub, redis_client: redis.Redis, token: str
) -> None:
    client = replica(github, redis_client, token, limit=1)
    assert client.budget is not None
    client.search_page(SINCE, 1, ticket("first", 1))
    with pytest.raises(WaitForBudget):
        client.search_page(SINCE, 2, ticket("second", 2))
    assert client.budget.waiting() == 1
    # The same search, answered meanwhile by a replica that spends no shared budget, fills the cache.
    replica(github, redis_client, token).search_page(SINCE, 2)
    client.search_page(SINCE, 2, ticket("second", 2))
    assert client.budget.waiting() == 0


def test_pages_that_joined_with_their_report_go_before_pages_that_asked_first(
    github: FakeGitHub, redis_client: redis.Redis, token: str
) -> None:
    budget = budget_of(redis_client, github, token, limit=5, window=60.0)
    budget.join([ticket("person", page, after_seconds=5) for page in range(1, 6)])
    # A scheduled page whose task happens to run first finds the person's whole report ahead of it.
    nightly = budget.take(ticket("nightly", 1, priority="scheduled"))
    assert nightly.slot is None and nightly.position == 1
    assert all(budget.take(ticket("person", page, after_seconds=5)).slot for page in range(1, 6))
    assert budget.waiting() == 1
