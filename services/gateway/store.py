"""The report statuses every gateway replica shares, in Redis: one document per report, a history."""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import uuid
from typing import Any, Protocol

from shared.events import EventData, report_id_of
from shared.handling import EventMeta
from shared.ownership import is_scheduled_report, owner_key
from shared.progress import ReportStatus, apply_event
from shared.stored import decode_stored

STATUS_TTL_SECONDS = 30 * 24 * 3600
DECODED_STATUSES_KEPT = 2048
HISTORY_KEY = "hotrepos:gateway:reports"
# The scheduled reports' history: they belong to everyone, so everyone's history lists them.
SCHEDULED_HISTORY_KEY = "hotrepos:gateway:reports:scheduled"


class ReportStatuses(Protocol):
    def get(self, report_id: str) -> ReportStatus | None: ...

    def apply(self, data: EventData, meta: EventMeta) -> ReportStatus | None: ...

    def record_owner(self, report_id: str, owner: str, at: dt.datetime) -> None:
        """Whose report it is: recorded before its request is published, so no event precedes it."""
        ...


class ReportReader(Protocol):
    """What the API's reads ask, on asyncio: a request waits on Redis without taking a thread."""

    async def status_and_owner(self, report_id: str) -> tuple[ReportStatus | None, str | None]:
        """The report and whose it is, in one round trip."""
        ...

    async def recent(self, *, offset: int, limit: int, visible_to: str | None = None) -> tuple[list[ReportStatus], int]:
        """A page of the history, newest first; with visible_to, only that owner's and the scheduled ones."""
        ...


def status_key(report_id: str) -> str:
    return f"hotrepos:gateway:report:{report_id}"


def progress_channel(report_id: str) -> str:
    return f"hotrepos:gateway:progress:{report_id}"


def owned_history_key(owner: str) -> str:
    # Hashed: an owner's name comes from a header in proxy mode, a Redis key should not take its shape.
    return "hotrepos:gateway:reports-of:" + hashlib.sha256(owner.encode()).hexdigest()


def decode_status(raw: bytes | str | None) -> ReportStatus | None:
    if raw is None:
        return None
    return _decoded(raw.encode() if isinstance(raw, str) else raw)


# The same document is read again and again (every stream of a report at each change, every history
# page lists the same recent reports) and a status is frozen: the same bytes decode once.
@functools.lru_cache(maxsize=DECODED_STATUSES_KEPT)
def _decoded(raw: bytes) -> ReportStatus | None:
    return decode_stored(ReportStatus, raw)


class RedisReportStatuses:
    """The projection in Redis: one JSON document per report, a history index, a wake-up per change."""

    def __init__(self, redis_client: Any, *, ttl_seconds: int = STATUS_TTL_SECONDS) -> None:
        self._redis = redis_client
        self._ttl = ttl_seconds

    def get(self, report_id: str) -> ReportStatus | None:
        return decode_status(self._redis.get(status_key(report_id)))

    def apply(self, data: EventData, meta: EventMeta) -> ReportStatus | None:
        """Fold one event in; optimistic locking keeps concurrent replicas from losing an update."""
        report_id = report_id_of(data, meta.id)
        if report_id is None:
            return None
        key = status_key(report_id)
        outcome: dict[str, ReportStatus | None] = {}

        def update(pipe: Any) -> None:
            current = decode_status(pipe.get(key))
            now = dt.datetime.now(dt.UTC)
            updated = apply_event(current, data, meta, received_at=now)
            outcome["before"], outcome["after"] = current, updated
            if updated is None or updated == current:
                return
            pipe.multi()
            pipe.set(key, updated.model_dump_json(), ex=self._ttl)
            pipe.zadd(HISTORY_KEY, {report_id: updated.first_seen.timestamp()})
            pipe.zremrangebyscore(HISTORY_KEY, "-inf", now.timestamp() - self._ttl)
            if is_scheduled_report(report_id, updated.priority):
                pipe.zadd(SCHEDULED_HISTORY_KEY, {report_id: updated.first_seen.timestamp()})
                pipe.zremrangebyscore(SCHEDULED_HISTORY_KEY, "-inf", now.timestamp() - self._ttl)

        self._redis.transaction(update, key)
        before, after = outcome.get("before"), outcome.get("after")
        if after is not None and after != before:
            self._redis.publish(progress_channel(report_id), str(after.last_seq))
        return after

    def record_owner(self, report_id: str, owner: str, at: dt.datetime) -> None:
        history = owned_history_key(owner)
        pipe = self._redis.pipeline()
        pipe.set(owner_key(report_id), owner, ex=self._ttl)
        pipe.zadd(history, {report_id: at.timestamp()})
        pipe.zremrangebyscore(history, "-inf", at.timestamp() - self._ttl)
        pipe.expire(history, self._ttl)
        pipe.execute()


class RedisReportReader:
    """The projection read on asyncio, for the API's reads."""

    def __init__(self, redis_client: Any) -> None:
        self._redis = redis_client

    async def status_and_owner(self, report_id: str) -> tuple[ReportStatus | None, str | None]:
        raw_status, raw_owner = await self._redis.mget([status_key(report_id), owner_key(report_id)])
        owner = raw_owner.decode() if isinstance(raw_owner, bytes) else raw_owner
        return decode_status(raw_status), owner

    async def recent(self, *, offset: int, limit: int, visible_to: str | None = None) -> tuple[list[ReportStatus], int]:
        """A page of the history, newest first, and the history's length; with visible_to, only that
        owner's reports and the scheduled ones."""
        async with self._redis.pipeline(transaction=True) as pipe:
            if visible_to is None:
                pipe.zcard(HISTORY_KEY)
                pipe.zrevrange(HISTORY_KEY, offset, offset + limit - 1)
                total, ids = await pipe.execute()
            else:
                # Both indexes merged into a throwaway key, in one transaction: a page and its total agree.
                merged = f"hotrepos:gateway:history-view:{uuid.uuid4().hex}"
                pipe.zunionstore(merged, [owned_history_key(visible_to), SCHEDULED_HISTORY_KEY], aggregate="MAX")
                pipe.zrevrange(merged, offset, offset + limit - 1)
                pipe.delete(merged)
                total, ids, _ = await pipe.execute()
        if not ids:
            return [], int(total)
        found = [decode_status(raw) for raw in await self._redis.mget([status_key(_text(i)) for i in ids])]
        return [status for status in found if status is not None], int(total)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
