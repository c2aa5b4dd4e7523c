"""GitHub's search budget against the real Redis and the fake GitHub: the shared page cache, one fetch
per page in flight, conditional requests, and one request budget for every replica."""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from collections.abc import Iterator

import pytest
import redis

from services.fetcher.github import GitHubClient, RateLimited, SearchPage
from services.fetcher.github_cache import RedisPageCache, github_scope
from services.fetcher.rate_budget import RedisRequestBudget
from tests.fake_github import FakeGitHub

SINCE = dt.date(2026, 10, 23)


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
    assert budget.take().slot is not None and budget.take().slot is None


def test_replicas_share_one_budget_and_stay_under_githubs_limit(
    github: FakeGitHub, redis_client: redis.Redis, token: str
) -> None:
    github.set_rate_limit(3)
    first = replica(github, redis_client, token, fresh_seconds=None, limit=3)
    second = replica(github, redis_client, token, fresh_seconds=None, limit=3)
    first.search_page(SINCE, 1)
    second.search_page(SINCE, 2)
    first.search_page(SINCE, 3)
    with pytest.raises(RateLimited) as waited:
        second.search_page(SINCE, 4)
    assert 50 <= waited.value.wait_seconds <= 62
    stats = github.stats()
    assert stats["requests"] == 3 and stats["rate_limited"] == 0


def test_githubs_own_rate_limit_pauses_every_replica(github: FakeGitHub, redis_client: redis.Redis, token: str) -> None:
    github.add_fault("rate_limit", page=1, times=1, reset_in=30)
    with pytest.raises(RateLimited):
        replica(github, redis_client, token, fresh_seconds=None, limit=30).search_page(SINCE, 1)
    other = RedisRequestBudget(redis_client, 30, github_scope(github.url, token))
    grant = other.take()
    assert grant.slot is None and 20 <= grant.wait_seconds <= 31
