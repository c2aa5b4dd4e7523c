"""The one way a test polls: `eventually(condition, ...)`, for what it cannot be told of.

A test that checks that something did *not* happen does not poll for it: it publishes a sentinel
that is processed after the thing in question, and waits for the sentinel's effect instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

# How much of what the condition last returned goes into the failure's message.
SHOWN_CHARS = 500


def eventually(
    condition: Callable[[], T | None],
    *,
    timeout: float,
    message: str | Callable[[], str],
    interval: float = 0.1,
) -> T:
    """The condition's first truthy value, asked every `interval` seconds for up to `timeout` seconds.

    It is asked once more when the time is up, so a slow condition still gets its last look. Past
    that, AssertionError names `message` (called then, when it describes the state at the time)
    and what the condition last returned. An exception the condition raises ends the wait at once.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(_timed_out(timeout, message, value))
        time.sleep(interval)


def _timed_out(timeout: float, message: str | Callable[[], str], last: object) -> str:
    text = f"not within {timeout:g}s: {message() if callable(message) else message}"
    if last is None or last is False:
        return text  # says nothing the message does not
    shown = repr(last)
    if len(shown) > SHOWN_CHARS:
        shown = shown[:SHOWN_CHARS] + "..."
    return f"{text} (last returned {shown})"
