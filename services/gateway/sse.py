"""A report's progress as Server-Sent Events: its steps replayed, then followed to the outcome."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import structlog

from services.gateway.feed import ProgressFeed
from services.gateway.views import view_of
from shared.progress import ProgressStep, ReportStatus

log = structlog.get_logger("hotrepos.gateway")


def progress_event(step: ProgressStep, status: ReportStatus) -> bytes:
    """One SSE frame; the last step of a finished report carries its outcome."""
    payload: dict[str, Any] = {"report_id": status.report_id, **step.model_dump(mode="json")}
    if step.seq == status.last_seq and status.terminal:
        view = view_of(status)
        if status.state == "exported":
            payload.update(
                download_url=view.download_url,
                rows=status.rows,
                sha256=status.sha256,
                repositories=status.repositories,
                incomplete_pages=list(status.incomplete_pages),
            )
        else:
            payload.update(stage=status.failed_stage, reason=status.failure_reason)
    return f"id: {step.seq}\nevent: progress\ndata: {json.dumps(payload)}\n\n".encode()


async def progress_stream(
    feed: ProgressFeed,
    report_id: str,
    after: int,
    *,
    keepalive_seconds: float,
    interrupted_by: tuple[type[BaseException], ...] = (),
    still_allowed: Callable[[], Awaitable[bool]] | None = None,
) -> AsyncIterator[bytes]:
    """Replays the steps after `after`, then follows: a change wakes it, the store is the truth.

    still_allowed is asked again about once a second: a stream whose token is revoked ends then.
    """
    sent = after
    yield b"retry: 3000\n\n"
    allowed = _every_second(still_allowed)
    try:
        async with feed.subscription(report_id) as changes:
            idle = 0.0
            while await allowed():
                # Subscribed before reading, so no change can fall between the read and the wait.
                status = await feed.get(report_id)
                if status is not None:
                    for step in status.progress:
                        if step.seq > sent:
                            yield progress_event(step, status)
                            sent = step.seq
                    if status.terminal and sent >= status.last_seq:
                        return
                # The periodic re-read also covers a wake-up lost while Redis reconnected.
                while not await changes.changed(timeout=1.0):
                    if not await allowed():
                        break
                    idle += 1.0
                    if idle >= keepalive_seconds:
                        idle = 0.0
                        yield b": keepalive\n\n"
                        break
            log.info("progress.stream_ended", report_id=report_id, reason="its token was revoked")
    except interrupted_by as exc:
        # The client's EventSource reconnects with Last-Event-ID and resumes where it stopped.
        log.warning("progress.stream_interrupted", report_id=report_id, error=str(exc))


def _every_second(still_allowed: Callable[[], Awaitable[bool]] | None) -> Callable[[], Awaitable[bool]]:
    """still_allowed, asked at most once a second; the answer in between is the last one."""
    # Allowed when the stream opened: the request was just let in.
    last: dict[str, float | bool] = {"at": time.monotonic(), "answer": True}

    async def allowed() -> bool:
        if still_allowed is None:
            return True
        now = time.monotonic()
        if now - float(last["at"]) >= 1.0:
            last["at"], last["answer"] = now, await still_allowed()
        return bool(last["answer"])

    return allowed
