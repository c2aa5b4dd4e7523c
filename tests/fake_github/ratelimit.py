"""Per-client request budget over a rolling window, reported like GitHub's headers."""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

WINDOW_SECONDS = 60.0
# Reported when no limit is configured, so clients that pace themselves on
# X-RateLimit-Remaining never slow down a benchmark.
UNLIMITED_REPORTED_LIMIT = 1_000_000


@dataclass(frozen=True)
class RateDecision:
    """Outcome of one request against the budget, plus the header values to send."""

    allowed: bool
    limit: int
    remaining: int
    used: int
    reset_epoch: int

    def headers(self) -> dict[str, str]:
        """The X-RateLimit-* headers GitHub sends for the search resource."""
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset_epoch),
            "X-RateLimit-Used": str(self.used),
            "X-RateLimit-Resource": "search",
        }


class RollingWindowLimiter:
    """At most `limit` counted requests per key in any window of `window_seconds` (GitHub's: a minute)."""

    def __init__(
        self, limit: int | None, clock: Callable[[], float] = time.time, window_seconds: float = WINDOW_SECONDS
    ) -> None:
        self.limit = limit
        self.window_seconds = window_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._windows: dict[str, deque[float]] = {}

    def take(self, key: str, consume: bool = True) -> RateDecision:
        """Check the key's budget and, when allowed and asked to, spend one request."""
        now = self._clock()
        with self._lock:
            window = self._windows.setdefault(key, deque())
            while window and window[0] <= now - self.window_seconds:
                window.popleft()
            limit = self.limit if self.limit is not None else UNLIMITED_REPORTED_LIMIT
            allowed = len(window) < limit
            if allowed and consume:
                window.append(now)
            oldest = window[0] if window else now
            return RateDecision(
                allowed=allowed,
                limit=limit,
                remaining=max(limit - len(window), 0),
                used=len(window),
                reset_epoch=math.ceil(oldest + self.window_seconds),
            )

    def reset(self) -> None:
        """Forget every client's history."""
        with self._lock:
            self._windows.clear()
