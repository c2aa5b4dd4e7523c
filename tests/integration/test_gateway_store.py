"""The gateway's projection store on a real Redis: replicas that write at once lose nothing."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import uuid

import redis
import redis.asyncio

from services.gateway.store import RedisReportReader, RedisReportStatuses, progress_channel
from shared.events import EventData, ReportPageFetched, ReportRequested, ReportSpec, event_type_of
from shared.handling import EventMeta

SPEC = ReportSpec(period="day", since=dt.date(2026, 11, 21))
PAGES = 10


def event_of(data: EventData, at: dt.datetime | None = None) -> EventMeta:
    return EventMeta(id=str(uuid.uuid4()), type=event_type_of(data), time=at or dt.datetime.now(dt.UTC))


def test_pages_folded_by_concurrent_replicas_are_all_counted(redis_url: str) -> None:
    report_ids = [f"t-{uuid.uuid4().hex[:12]}" for _ in range(20)]
    start = threading.Barrier(PAGES)

    def replica(page: int) -> None:
        # A client per thread, as separate gateway processes would have; each folds one page of every
        # report, so that many writers meet on each report.
        store = RedisReportStatuses(redis.Redis.from_url(redis_url))
        start.wait()
        for report_id in report_ids:
            data = ReportPageFetched(report_id=report_id, page=page, pages=PAGES, spec=SPEC, items=[])
            store.apply(data, event_of(data))

    threads = [threading.Thread(target=replica, args=(page,)) for page in range(1, PAGES + 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    store = RedisReportStatuses(redis.Redis.from_url(redis_url))
    for report_id in report_ids:
        status = store.get(report_id)
        assert status is not None
        assert status.fetched_pages == tuple(range(1, PAGES + 1)), report_id
        assert [(s.seq, s.pages_fetched) for s in status.progress] == [(n, n) for n in range(1, PAGES + 1)]


def test_history_is_newest_first_and_each_change_is_announced(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    store = RedisReportStatuses(client)
    # Times from now, never the future: a run stopped half-way must not leave entries that other tests'
    # reports can never be newer than.
    base = dt.datetime.now(dt.UTC)
    ids = [f"t-{uuid.uuid4().hex[:12]}" for _ in range(3)]
    pubsub = client.pubsub()
    pubsub.subscribe(progress_channel(ids[0]))
    assert pubsub.get_message(timeout=5) is not None  # the subscription's confirmation
    try:
        for index, report_id in enumerate(ids):
            data = ReportRequested(report_id=report_id, period="week")
            store.apply(data, event_of(data, base + dt.timedelta(milliseconds=index)))

        async def read() -> None:
            reader = RedisReportReader(redis.asyncio.Redis.from_url(redis_url))
            everything, total = await reader.recent(offset=0, limit=10_000)
            listed = [s.report_id for s in everything]
            assert [i for i in listed if i in ids] == list(reversed(ids))
            newest = listed.index(ids[-1])
            first_page, _ = await reader.recent(offset=newest, limit=2)
            second_page, _ = await reader.recent(offset=newest + 2, limit=1)
            assert [s.report_id for s in first_page + second_page] == list(reversed(ids))
            assert total >= 3

        asyncio.run(read())
        announced = pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
        assert announced is not None and announced["data"] == b"1"
    finally:
        pubsub.close()
        client.delete(*[f"hotrepos:gateway:report:{i}" for i in ids])
        client.zrem("hotrepos:gateway:reports", *ids)
