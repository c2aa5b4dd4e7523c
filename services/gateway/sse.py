"""A report's progress as Server-Sent Events: its steps replayed, then followed to the outcome."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import structlog

from services.gateway.access import TokenWatch
from services.gateway.feed import Changes, ProgressFeed
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
    token: Callable[[Changes], AbstractContextManager[TokenWatch | None]] = lambda _: nullcontext(),
) -> AsyncIterator[bytes]:
    """Replays the steps after `after`, then follows: a change wakes it, the store is the truth.

    It sleeps between changes, with a keepalive when none comes; `token` watches the token it came
    with, and wakes it to end once that token is revoked.
    """
    sent = after
    yield b"retry: 3000\n\n"
    try:
        # Subscribed before reading, so no change can fall between the read and the wait.
        async with feed.subscription(report_id) as changes:
            with token(changes) as watch:
                # Counted from the last byte sent, so wake-ups that send nothing do not put it off.
                keepalive_at = time.monotonic() + keepalive_seconds
                while watch is None or not watch.revoked:
                    status = await feed.get(report_id)
                    if status is not None:
                        for step in status.progress:
                            if step.seq > sent:
                                yield progress_event(step, status)
                                sent = step.seq
                                keepalive_at = time.monotonic() + keepalive_seconds
                        if status.terminal and sent >= status.last_seq:
                            return
                    # Without a change, the re-read after a keepalive also covers a wake-up lost in a
                    # reconnection to Redis.
                    if not await changes.changed(timeout=max(0.0, keepalive_at - time.monotonic())):
                        yield b": keepalive\n\n"
                        keepalive_at = time.monotonic() + keepalive_seconds
                log.info("progress.stream_ended", report_id=report_id, reason="its token was revoked")
    except interrupted_by as exc:
        # The client's EventSource reconnects with Last-Event-ID and resumes where it stopped.
        log.warning("progress.stream_interrupted", report_id=report_id, error=str(exc))
