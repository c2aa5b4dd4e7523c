"""The fetcher's request ledger on a real Redis: one delivery of a request fetches its pages at a time."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis

from services.fetcher.ledger import RedisRequestLedger
from tests.support.waiting import eventually


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(redis_url)
    yield connection
    connection.close()


def test_one_claim_at_a_time_until_its_holder_lets_it_go(client: redis.Redis) -> None:
    ledger = RedisRequestLedger(client)
    report_id = f"ledger-{uuid.uuid4().hex}"
    token = ledger.claim(report_id)
    assert token is not None
    assert ledger.claim(report_id) is None
    # Only the holder lets its claim go.
    ledger.release(report_id, "someone-else")
    assert ledger.claim(report_id) is None
    ledger.release(report_id, token)
    again = ledger.claim(report_id)
    assert again is not None and again != token


def test_a_report_marked_scheduled_is_never_claimed_again(client: redis.Redis) -> None:
    ledger = RedisRequestLedger(client)
    report_id = f"ledger-{uuid.uuid4().hex}"
    token = ledger.claim(report_id)
    assert token is not None
    ledger.mark_scheduled(report_id, token)
    assert ledger.already_scheduled(report_id)
    assert ledger.claim(report_id) is None


def test_a_holder_that_outlived_its_claim_neither_ends_the_next_one_nor_loses_its_pages(client: redis.Redis) -> None:
    ledger = RedisRequestLedger(client, claim_seconds=0.2)
    report_id = f"ledger-{uuid.uuid4().hex}"
    first = ledger.claim(report_id)
    assert first is not None
    # A holder that died: its claim expires, and another delivery takes over.
    second = eventually(lambda: ledger.claim(report_id), timeout=10, message="the claim expired", interval=0.05)
    # The first holder was only slow: its pages are scheduled, and the second holder's claim is its own.
    ledger.mark_scheduled(report_id, first)
    assert ledger.already_scheduled(report_id)
    assert client.get(f"hotrepos:fetcher:fetching:{report_id}") == second.encode()
