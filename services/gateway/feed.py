"""A report's next change, awaited without a thread per listener: Redis pub/sub on asyncio."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Protocol

import anyio

from services.gateway.store import decode_status, progress_channel, status_key
from shared.progress import ReportStatus


class Changes(Protocol):
    async def changed(self, timeout: float) -> bool:
        """True when the report changed (maybe) within timeout seconds."""
        ...


class ProgressFeed(Protocol):
    async def get(self, report_id: str) -> ReportStatus | None: ...

    def subscription(self, report_id: str) -> AbstractAsyncContextManager[Changes]: ...

    async def close(self) -> None: ...


class RedisProgressFeed:
    def __init__(self, redis_client: Any) -> None:
        self._redis = redis_client

    async def get(self, report_id: str) -> ReportStatus | None:
        return decode_status(await self._redis.get(status_key(report_id)))

    @asynccontextmanager
    async def subscription(self, report_id: str) -> AsyncIterator[Changes]:
        pubsub = self._redis.pubsub()
        await pubsub.subscribe(progress_channel(report_id))
        try:
            yield _PubSubChanges(pubsub)
        finally:
            # A client that goes away cancels its stream: the connection must still go back to the pool.
            with anyio.CancelScope(shield=True):
                await pubsub.aclose()

    async def close(self) -> None:
        await self._redis.aclose()


class _PubSubChanges:
    def __init__(self, pubsub: Any) -> None:
        self._pubsub = pubsub

    async def changed(self, timeout: float) -> bool:
        message = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=timeout)
        return message is not None
