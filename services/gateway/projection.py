"""A report's status as a pure fold of its events, and the Redis store every gateway replica shares."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import PurePath
from typing import Any, Literal

import anyio
import redis
import redis.asyncio
from pydantic import BaseModel, ConfigDict, ValidationError

from shared.events import (
    PAGES_PER_REPORT,
    CloudEvent,
    EventData,
    LanguageCount,
    Layout,
    Period,
    ReportAggregated,
    ReportExported,
    ReportFailed,
    ReportPageFetched,
    ReportRequested,
    ReportSpec,
    request_report_id,
    since_date,
)

ReportState = Literal["requested", "fetching", "aggregated", "exported", "failed"]
# A state never goes back: events of one report may arrive out of order, from competing replicas.
STATE_RANK: dict[str, int] = {"requested": 0, "fetching": 1, "aggregated": 2, "exported": 3, "failed": 3}
TERMINAL_STATES = frozenset({"exported", "failed"})

STATUS_TTL_SECONDS = 30 * 24 * 3600


class ProgressStep(BaseModel):
    """One visible change of a report's progress: what the SSE stream sends, in order."""

    model_config = ConfigDict(frozen=True)

    seq: int
    state: ReportState
    at: dt.datetime
    pages_fetched: int = 0
    pages: int = PAGES_PER_REPORT


class ReportStatus(BaseModel):
    """Everything the gateway knows of one report, built from its events alone."""

    model_config = ConfigDict(frozen=True)

    report_id: str
    state: ReportState
    first_seen: dt.datetime
    updated_at: dt.datetime
    period: Period | None = None
    ref_date: dt.date | None = None
    since: dt.date | None = None
    layout: Layout | None = None
    locale: str | None = None
    pages: int = PAGES_PER_REPORT
    fetched_pages: tuple[int, ...] = ()
    repositories: int | None = None
    languages: tuple[LanguageCount, ...] = ()
    rows: int | None = None
    sha256: str | None = None
    file_name: str | None = None
    failed_stage: str | None = None
    failure_reason: str | None = None
    progress: tuple[ProgressStep, ...] = ()

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    @property
    def pages_fetched(self) -> int:
        if self.state in ("aggregated", "exported"):
            return self.pages  # aggregating needs every page, even if some page event is still in flight
        return len(self.fetched_pages)

    @property
    def last_seq(self) -> int:
        return self.progress[-1].seq if self.progress else 0


def report_id_of(data: EventData, meta: CloudEvent) -> str | None:
    """Whose report an event is about; a request without report_id is known by its event id."""
    if isinstance(data, ReportRequested):
        return request_report_id(data.report_id, meta.id)
    report_id = getattr(data, "report_id", None)
    return report_id if isinstance(report_id, str) else None


def apply_event(
    status: ReportStatus | None, data: EventData, meta: CloudEvent, *, received_at: dt.datetime
) -> ReportStatus | None:
    """The status after one more event; the same status when the event changes nothing."""
    report_id = report_id_of(data, meta)
    if report_id is None or not isinstance(
        data, ReportRequested | ReportPageFetched | ReportAggregated | ReportExported | ReportFailed
    ):
        return status
    at = meta.time or received_at
    if status is None:
        status = ReportStatus(report_id=report_id, state="requested", first_seen=at, updated_at=at)
        fresh = True
    else:
        fresh = False
    changes: dict[str, Any] = {}
    new_state: ReportState | None = None

    if isinstance(data, ReportRequested):
        changes.update(
            _fill(status, period=data.period, ref_date=data.ref_date, layout=data.layout, locale=meta.locale)
        )
        if data.ref_date is not None and status.since is None:
            changes["since"] = since_date(data.period, data.ref_date)
        if fresh:
            new_state = "requested"
    elif isinstance(data, ReportPageFetched):
        changes.update(_fill_spec(status, data.spec))
        if data.page not in status.fetched_pages:
            changes["fetched_pages"] = tuple(sorted({*status.fetched_pages, data.page}))
            changes["pages"] = data.pages
            new_state = "fetching"
    elif isinstance(data, ReportAggregated):
        changes.update(_fill_spec(status, data.spec))
        changes["repositories"] = data.total
        changes["languages"] = tuple(
            LanguageCount(language=group.language, count=len(group.repositories)) for group in data.languages
        )
        new_state = "aggregated"
    elif isinstance(data, ReportExported):
        changes.update(_fill_spec(status, data.spec))
        changes.update(
            rows=data.rows,
            sha256=data.sha256,
            repositories=data.repositories,
            file_name=PurePath(data.path).name,
            layout=data.layout,
        )
        if not status.languages:
            changes["languages"] = tuple(data.top_languages)
        new_state = "exported"
    else:
        if data.spec is not None:
            changes.update(_fill_spec(status, data.spec))
        if not status.terminal:
            changes.update(failed_stage=data.stage, failure_reason=data.reason)
        new_state = "failed"

    if new_state is not None and not status.terminal and (fresh or STATE_RANK[new_state] > STATE_RANK[status.state]):
        changes["state"] = new_state
    changes = {key: value for key, value in changes.items() if getattr(status, key) != value}
    if not changes and not fresh:
        return status
    updated = status.model_copy(update={**changes, "updated_at": max(status.updated_at, at)})
    another_page = "fetched_pages" in changes and updated.state == "fetching"
    if fresh or "state" in changes or another_page:
        step = ProgressStep(
            seq=status.last_seq + 1,
            state=updated.state,
            at=at,
            pages_fetched=updated.pages_fetched,
            pages=updated.pages,
        )
        updated = updated.model_copy(update={"progress": (*status.progress, step)})
    return updated


def _fill(status: ReportStatus, **values: Any) -> dict[str, Any]:
    """Values the status does not know yet; what it knows stays, whatever order events come in."""
    return {key: value for key, value in values.items() if value is not None and getattr(status, key) is None}


def _fill_spec(status: ReportStatus, spec: ReportSpec) -> dict[str, Any]:
    return _fill(status, period=spec.period, since=spec.since, layout=spec.layout)


def status_key(report_id: str) -> str:
    return f"hotrepos:gateway:report:{report_id}"


def progress_channel(report_id: str) -> str:
    return f"hotrepos:gateway:progress:{report_id}"


HISTORY_KEY = "hotrepos:gateway:reports"


def _decode(raw: bytes | str | None) -> ReportStatus | None:
    if raw is None:
        return None
    try:
        return ReportStatus.model_validate_json(raw)
    except ValidationError:
        return None  # written by an incompatible version: treat as unknown rather than crash


class RedisReportStatuses:
    """The projection in Redis: one JSON document per report, a history index, a wake-up per change."""

    def __init__(self, redis_client: redis.Redis, *, ttl_seconds: int = STATUS_TTL_SECONDS) -> None:
        self._redis = redis_client
        self._ttl = ttl_seconds

    def get(self, report_id: str) -> ReportStatus | None:
        return _decode(self._redis.get(status_key(report_id)))

    def apply(self, data: EventData, meta: CloudEvent) -> ReportStatus | None:
        """Fold one event in; optimistic locking keeps concurrent replicas from losing an update."""
        report_id = report_id_of(data, meta)
        if report_id is None:
            return None
        key = status_key(report_id)
        outcome: dict[str, ReportStatus | None] = {}

        def update(pipe: Any) -> None:
            current = _decode(pipe.get(key))
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
        found = [_decode(raw) for raw in self._redis.mget([status_key(i) for i in ids])]
        return [status for status in found if status is not None], total


class ProgressFeed:
    """Waits for a report's next change without a thread per listener: Redis pub/sub on asyncio."""

    def __init__(self, redis_client: redis.asyncio.Redis) -> None:
        self._redis = redis_client

    async def get(self, report_id: str) -> ReportStatus | None:
        return _decode(await self._redis.get(status_key(report_id)))

    @asynccontextmanager
    async def subscription(self, report_id: str) -> AsyncIterator[ProgressSubscription]:
        pubsub = self._redis.pubsub()
        await pubsub.subscribe(progress_channel(report_id))
        try:
            yield ProgressSubscription(pubsub)
        finally:
            # A client that goes away cancels its stream: the connection must still go back to the pool.
            with anyio.CancelScope(shield=True):
                await pubsub.aclose()

    async def close(self) -> None:
        await self._redis.aclose()


class ProgressSubscription:
    def __init__(self, pubsub: Any) -> None:
        self._pubsub = pubsub

    async def changed(self, timeout: float) -> bool:
        """True when the report changed (maybe) within timeout seconds."""
        message = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=timeout)
        return message is not None
