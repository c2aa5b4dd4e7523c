"""The gateway's progress feed on a real Redis: many streams, one subscription, one read per change."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import uuid
from typing import Any

import redis
import redis.asyncio

from services.gateway.feed import RedisProgressFeed
from services.gateway.store import RedisReportStatuses
from shared.events import ReportPageFetched, ReportRequested, ReportSpec, event_type_of
from shared.handling import EventMeta

STREAMS_PER_REPORT = 100


class CountingReads:
    """The real async client, counting the status reads that go through it."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.gets = 0

    async def get(self, key: str) -> Any:
        self.gets += 1
        return await self._client.get(key)

    def pubsub(self) -> Any:
        return self._client.pubsub()

    async def aclose(self) -> None:
        await self._client.aclose()


def page_of(report_id: str) -> ReportPageFetched:
    return ReportPageFetched(
        report_id=report_id, page=1, pages=5, spec=ReportSpec(period="day", since=dt.date(2026, 11, 21)), items=[]
    )


def fold(store: RedisReportStatuses, data: Any) -> None:
    store.apply(data, EventMeta(id=str(uuid.uuid4()), type=event_type_of(data), time=dt.datetime.now(dt.UTC)))


def test_many_streams_share_one_subscription_and_one_read_per_change(redis_url: str) -> None:
    name = f"feed-{uuid.uuid4().hex[:8]}"
    followed, sentinel, quiet = (f"{name}-{suffix}" for suffix in ("followed", "sentinel", "quiet"))
    store = RedisReportStatuses(redis.Redis.from_url(redis_url))
    for report_id in (followed, sentinel, quiet):
        fold(store, ReportRequested(report_id=report_id, period="day"))

    async def run() -> None:
        client = redis.asyncio.Redis.from_url(redis_url, client_name=name)
        reads = CountingReads(client)
        feed = RedisProgressFeed(reads)
        async with contextlib.AsyncExitStack() as streams:

            async def follow(report_id: str, count: int) -> list[Any]:
                return [await streams.enter_async_context(feed.subscription(report_id)) for _ in range(count)]

            followers = await follow(followed, STREAMS_PER_REPORT)
            sentinels = await follow(sentinel, 1)
            quiets = await follow(quiet, STREAMS_PER_REPORT)
            # However many streams, the feed holds one connection to Redis for them (the other one
            # named so is this very question's).
            names = [c.get("name") for c in await client.client_list()]
            assert names.count(name) == 2

            fold(store, page_of(followed))
            assert all(await asyncio.gather(*(changes.changed(timeout=5) for changes in followers)))
            statuses = await asyncio.gather(*(feed.get(followed) for _ in followers))
            assert {status.pages_fetched for status in statuses if status is not None} == {1}
            # Woken together by one change, the hundred streams read the report once.
            assert reads.gets == 1

            # The sentinel's change is heard after the followed report's: by then, had the quiet
            # report's streams been woken by a change not theirs, it would show.
            fold(store, page_of(sentinel))
            assert await sentinels[0].changed(timeout=5)
            assert not any(await asyncio.gather(*(changes.changed(timeout=0) for changes in quiets)))
        await feed.close()

    asyncio.run(run())
    store_client = redis.Redis.from_url(redis_url)
    store_client.delete(*[f"hotrepos:gateway:report:{r}" for r in (followed, sentinel, quiet)])
    store_client.zrem("hotrepos:gateway:reports", followed, sentinel, quiet)


def test_a_lost_subscription_wakes_every_stream_and_is_made_again(redis_url: str) -> None:
    name = f"feed-{uuid.uuid4().hex[:8]}"
    followed, later = f"{name}-followed", f"{name}-later"
    store = RedisReportStatuses(redis.Redis.from_url(redis_url))
    for report_id in (followed, later):
        fold(store, ReportRequested(report_id=report_id, period="day"))
    admin = redis.Redis.from_url(redis_url)

    async def run() -> None:
        feed = RedisProgressFeed(redis.asyncio.Redis.from_url(redis_url, client_name=name))
        async with feed.subscription(followed) as changes:
            # The subscription's connection, and only it, cut from the server's side.
            [subscriber] = [c for c in admin.client_list() if c.get("name") == name and "subscribe" in c["cmd"]]
            admin.client_kill_filter(_id=subscriber["id"])
            # The stream is woken to read again: a change may have been lost with the connection.
            assert await changes.changed(timeout=10)
            # A stream opened now waits for the new subscription; its report's next change is heard
            # through it, and only through it (nothing else wakes that stream).
            async with feed.subscription(later) as later_changes:
                fold(store, page_of(later))
                assert await later_changes.changed(timeout=5)
                status = await feed.get(later)
                assert status is not None and status.pages_fetched == 1
        await feed.close()

    asyncio.run(run())
    admin.delete(*[f"hotrepos:gateway:report:{r}" for r in (followed, later)])
    admin.zrem("hotrepos:gateway:reports", followed, later)
