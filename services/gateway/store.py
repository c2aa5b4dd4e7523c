"""The report statuses every gateway replica shares, in Redis: one document per report, a history."""

from __future__ import annotations

import datetime as dt
from typing import Any, Protocol

from shared.events import EventData, report_id_of
from shared.handling import EventMeta
from shared.progress import ReportStatus, apply_event
from shared.stored import decode_stored

STATUS_TTL_SECONDS = 30 * 24 * 3600
HISTORY_KEY = "hotrepos:gateway:reports"


class ReportStatuses(Protocol):
    def get(self, report_id: str) -> ReportStatus | None: ...

    def apply(self, data: EventData, meta: EventMeta) -> ReportStatus | None: ...

    def recent(self, *, offset: int, limit: int) -> tuple[list[ReportStatus], int]: ...


def status_key(report_id: str) -> str:
    return f"hotrepos:gateway:report:{report_id}"


def progress_channel(report_id: str) -> str:
    return f"hotrepos:gateway:progress:{report_id}"


def decode_status(raw: bytes | str | None) -> ReportStatus | None:
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

        self._redis.transaction(update, key)
        before, after = outcome.get("before"), outcome.get("after")
        if after is not None and after != before:
            self._redis.publish(progress_channel(report_id), str(after.last_seq))
        return after

    def recent(self, *, offset: int, limit: int) -> tuple[list[ReportStatus], int]:
        """A page of the history, newest first, and the history's length."""
        total = int(self._redis.zcard(HISTORY_KEY))
        ids = [
            i.decode() if isinstance(i, bytes) else str(i)
            for i in self._redis.zrevrange(HISTORY_KEY, offset, offset + limit - 1)
        ]
        if not ids:
            return [], total
        found = [decode_status(raw) for raw in self._redis.mget([status_key(i) for i in ids])]
        return [status for status in found if status is not None], total
