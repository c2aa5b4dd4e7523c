"""The quota and reports' owners on a real Redis, as every gateway replica shares them."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import uuid

import redis
import redis.asyncio

from services.gateway.quota import RedisRequestQuota
from services.gateway.store import RedisReportReader, RedisReportStatuses
from shared.events import ReportRequested, event_type_of
from shared.handling import EventMeta
from shared.ownership import RedisReportOwners


def client(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


def test_the_quota_is_shared_by_every_replica_and_says_when_to_retry(redis_url: str) -> None:
    identity = f"quota-{uuid.uuid4().hex[:8]}"
    now = [1_000_000.0]
    replicas = [RedisRequestQuota(client(redis_url), 3, clock=lambda: now[0]) for _ in range(2)]
    assert [replicas[n % 2].take(identity, f"r-{n}") for n in range(3)] == [None, None, None]
    assert replicas[0].take(identity, "r-3") == 3600
    assert replicas[1].take(identity, "r-2") is None  # a retry of a counted request
    now[0] += 600
    assert replicas[1].take(identity, "r-4") == 3000
    assert replicas[1].take("someone-else-" + identity, "r-5") is None
    replicas[0].give_back(identity, "r-1")
    assert replicas[1].take(identity, "r-6") is None  # r-1 was not placed after all: its place is free
    assert replicas[1].take(identity, "r-7") == 3000
    now[0] += 3000
    assert replicas[0].take(identity, "r-8") is None  # the first request left the window


def test_concurrent_replicas_never_take_more_than_the_quota(redis_url: str) -> None:
    identity = f"race-{uuid.uuid4().hex[:8]}"
    start = threading.Barrier(8)
    taken: list[bool] = []

    def replica() -> None:
        quota = RedisRequestQuota(client(redis_url), 5)
        start.wait()
        for _ in range(4):
            taken.append(quota.take(identity, uuid.uuid4().hex) is None)

    threads = [threading.Thread(target=replica) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert taken.count(True) == 5 and len(taken) == 32


def requested(store: RedisReportStatuses, report_id: str, priority: str = "interactive") -> None:
    data = ReportRequested(report_id=report_id, period="day", priority=priority)  # type: ignore[arg-type]
    store.apply(data, EventMeta(id=str(uuid.uuid4()), type=event_type_of(data), time=dt.datetime.now(dt.UTC)))


def test_ones_history_is_ones_own_reports_and_the_scheduled_ones(redis_url: str) -> None:
    store = RedisReportStatuses(client(redis_url))
    alice, bob = f"alice-{uuid.uuid4().hex[:8]}", f"bob-{uuid.uuid4().hex[:8]}"
    mine = [f"a-{uuid.uuid4().hex[:12]}" for _ in range(3)]
    theirs = f"b-{uuid.uuid4().hex[:12]}"
    scheduled = f"scheduled-day-{uuid.uuid4().hex[:8]}"
    for report_id in mine:
        store.record_owner(report_id, alice, dt.datetime.now(dt.UTC))
        requested(store, report_id)
    store.record_owner(theirs, bob, dt.datetime.now(dt.UTC))
    requested(store, theirs)
    requested(store, scheduled, priority="scheduled")

    owners = RedisReportOwners(client(redis_url))
    assert owners.owner_of(mine[0]) == alice and owners.owner_of(scheduled) is None

    async def read() -> None:
        reader = RedisReportReader(redis.asyncio.Redis.from_url(redis_url))
        status, owner = await reader.status_and_owner(mine[0])
        assert status is not None and status.report_id == mine[0] and owner == alice
        assert (await reader.status_and_owner(scheduled))[1] is None
        page, total = await reader.recent(offset=0, limit=100, visible_to=alice)
        ids = [status.report_id for status in page]
        assert set(mine) <= set(ids) and scheduled in ids and theirs not in ids
        assert total == len(ids)
        first, _ = await reader.recent(offset=0, limit=2, visible_to=alice)
        second, _ = await reader.recent(offset=2, limit=100, visible_to=alice)
        assert [s.report_id for s in first + second] == ids  # newest first, paged
        everything, _ = await reader.recent(offset=0, limit=10_000)
        assert {*mine, theirs, scheduled} <= {status.report_id for status in everything}

    asyncio.run(read())
