"""Request counters exposed at /_fake/stats."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

ANONYMOUS = "anonymous"


class RequestStats:
    """Thread-safe counters of what clients asked for and what they got."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Zero every counter."""
        with self._lock:
            self._requests = 0
            self._by_status: Counter[int] = Counter()
            self._by_page: Counter[int] = Counter()
            self._by_token: Counter[str] = Counter()
            self._faults: Counter[str] = Counter()
            self._rate_limited = 0
            self._not_modified = 0
            self._first_request_at: float | None = None
            self._last_request_at: float | None = None

    def record_request(self, token: str | None, page: int | None) -> None:
        """Count an API request as it arrives (control requests are not counted)."""
        now = time.time()
        with self._lock:
            self._requests += 1
            self._first_request_at = self._first_request_at or now
            self._last_request_at = now
            self._by_token[token or ANONYMOUS] += 1
            if page is not None:
                self._by_page[page] += 1

    def record_response(self, status: int, rate_limited: bool = False) -> None:
        """Count the status an API request was answered with."""
        with self._lock:
            self._by_status[status] += 1
            self._not_modified += status == 304
            self._rate_limited += rate_limited

    def record_fault(self, kind: str) -> None:
        """Count a fault rule being applied."""
        with self._lock:
            self._faults[kind] += 1

    def snapshot(self) -> dict[str, Any]:
        """Counters as JSON-ready data; dict keys are strings like in JSON."""
        with self._lock:
            return {
                "requests": self._requests,
                "by_status": {str(k): v for k, v in sorted(self._by_status.items())},
                "by_page": {str(k): v for k, v in sorted(self._by_page.items())},
                "rate_limited": self._rate_limited,
                "not_modified": self._not_modified,
                "by_token": dict(sorted(self._by_token.items())),
                "faults": dict(sorted(self._faults.items())),
                # Epoch seconds of the first and last API request since the last reset (None before any).
                "first_request_at": self._first_request_at,
                "last_request_at": self._last_request_at,
            }
