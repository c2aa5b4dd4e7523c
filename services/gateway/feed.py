"""A report's next change, awaited by any number of streams over one Redis subscription per process.

One pattern subscription hears every report's changes and wakes the streams that follow that report;
the streams of one report woken by one change share one read of its status. A stream costs an
asyncio event, not a Redis connection: a thousand streams open on one replica take no more of
Redis than one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import redis.exceptions
import structlog

from services.gateway.store import decode_status, progress_channel, status_key
from shared.progress import ReportStatus

log = structlog.get_logger("hotrepos.gateway")

CHANNEL_PREFIX = progress_channel("")
RECONNECT_SECONDS = 0.5
SUBSCRIBE_TIMEOUT_SECONDS = 5.0
PING_SECONDS = 5.0
SILENT_SECONDS = 3 * PING_SECONDS


class Changes(Protocol):
    async def changed(self, timeout: float) -> bool:
        """True when the report changed (maybe), or the stream was woken, within timeout seconds."""
        ...

    def wake(self) -> None:
        """Wake the stream as a change would: it reads again and looks at why it was woken."""
        ...


class ProgressFeed(Protocol):
    async def get(self, report_id: str) -> ReportStatus | None: ...

    def subscription(self, report_id: str) -> AbstractAsyncContextManager[Changes]: ...

    async def close(self) -> None: ...


class Wakeup:
    """One stream's wake-up: set by a change of its report, or by whoever has another reason to wake it."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    async def changed(self, timeout: float) -> bool:
        try:
            # A deadline, not wait_for's extra task: a thousand idle streams make no garbage.
            async with asyncio.timeout(timeout):
                await self._event.wait()
        except TimeoutError:
            return False
        self._event.clear()
        return True

    def wake(self) -> None:
        self._event.set()


@dataclass
class _Followed:
    """The streams of one report, how many changes the process has heard of it, and its read in flight."""

    streams: set[Wakeup] = field(default_factory=set)
    heard: int = 0
    read: tuple[int, asyncio.Task[ReportStatus | None]] | None = None


class RedisProgressFeed:
    def __init__(self, redis_client: Any) -> None:
        self._redis = redis_client
        self._followed: dict[str, _Followed] = {}
        self._listening: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()

    async def get(self, report_id: str) -> ReportStatus | None:
        followed = self._followed.get(report_id)
        if followed is None:
            return await self._read(report_id)
        # A read that started after the last change heard is as fresh as a new one: share it.
        if followed.read is None or followed.read[0] < followed.heard or followed.read[1].done():
            followed.read = (followed.heard, asyncio.ensure_future(self._read(report_id)))
        return await asyncio.shield(followed.read[1])

    async def _read(self, report_id: str) -> ReportStatus | None:
        return decode_status(await self._redis.get(status_key(report_id)))

    @asynccontextmanager
    async def subscription(self, report_id: str) -> AsyncIterator[Changes]:
        if self._listening is None or self._listening.done():
            self._listening = asyncio.ensure_future(self._listen())
        # Subscribed before the stream's first read, so no change can fall between the read and the wait.
        try:
            await asyncio.wait_for(self._subscribed.wait(), SUBSCRIBE_TIMEOUT_SECONDS)
        except TimeoutError:
            raise redis.exceptions.ConnectionError("not subscribed to the reports' changes") from None
        changes = Wakeup()
        followed = self._followed.setdefault(report_id, _Followed())
        followed.streams.add(changes)
        try:
            yield changes
        finally:
            followed.streams.discard(changes)
            if not followed.streams and self._followed.get(report_id) is followed:
                del self._followed[report_id]

    async def _listen(self) -> None:
        """Hears every report's changes; after a lost connection, wakes every stream to read again."""
        while True:
            pubsub = self._redis.pubsub()
            try:
                await self._hear(pubsub)
            except Exception as exc:  # whatever broke it, the streams must not be left deaf
                self._subscribed.clear()
                log.warning("progress.subscription_lost", error=repr(exc))
                self._wake_all()
                await asyncio.sleep(RECONNECT_SECONDS)
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.shield(pubsub.aclose())

    async def _hear(self, pubsub: Any) -> None:
        await pubsub.psubscribe(CHANNEL_PREFIX + "*")
        # Only once Redis confirms is every later change sure to be heard.
        async with asyncio.timeout(SUBSCRIBE_TIMEOUT_SECONDS):
            while (await pubsub.get_message(timeout=SUBSCRIBE_TIMEOUT_SECONDS) or {}).get("type") != "psubscribe":
                pass
        self._subscribed.set()
        self._wake_all()  # a change may have come while the subscription was down
        loop = asyncio.get_running_loop()
        heard_at = pinged_at = loop.time()
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            now = loop.time()
            if message is not None:
                heard_at = now  # a change, or the answer to a ping: the connection lives
                if message["type"] == "pmessage":
                    self._wake(_report_of(message["channel"]))
            elif now - heard_at > SILENT_SECONDS:
                # A connection dropped without a word (a half-open socket) would leave every
                # stream of this replica deaf: asked every few seconds, it must answer.
                raise redis.exceptions.TimeoutError(f"no answer from Redis for {SILENT_SECONDS:g} s")
            if now - pinged_at >= PING_SECONDS:
                pinged_at = now
                await pubsub.ping()

    def _wake(self, report_id: str) -> None:
        followed = self._followed.get(report_id)
        if followed is None:
            return
        followed.heard += 1
        for changes in followed.streams:
            changes.wake()

    def _wake_all(self) -> None:
        for report_id in list(self._followed):
            self._wake(report_id)

    async def close(self) -> None:
        if self._listening is not None:
            self._listening.cancel()
            # Closing: whatever the listener ended with is moot.
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._listening
        await self._redis.aclose()


def _report_of(channel: bytes | str) -> str:
    name = channel.decode() if isinstance(channel, bytes) else channel
    return name.removeprefix(CHANNEL_PREFIX)
