"""Everything one fake server knows: dataset, settings, faults, budgets, counters."""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime
from typing import Any

from .dataset import DEFAULT_REPOSITORY_COUNT, DEFAULT_SEED, generate_repositories
from .faults import FaultBook, FaultRule
from .ratelimit import WINDOW_SECONDS, RollingWindowLimiter
from .search import MAX_PER_PAGE, MAX_RESULTS, SearchIndex, SearchQuery
from .stats import RequestStats

CONFIG_KEYS = frozenset({"latency_ms", "rate_limit_per_minute", "rate_limit_window_seconds", "today"})


def utc_today() -> date:
    """Today's date in UTC, the default for the dataset's `today`."""
    return datetime.now(UTC).date()


def _checked_latency(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"latency_ms must be a non-negative int, got {value!r}")
    return value


def _checked_window(value: object) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 < value <= 3600:
        raise ValueError(f"rate_limit_window_seconds must be a number of seconds in (0, 3600], got {value!r}")
    return float(value)


def _checked_rate_limit(value: object) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"rate_limit_per_minute must be a positive int or null, got {value!r}")
    return value


class FakeState:
    """Mutable state shared by all handler threads of one fake server."""

    def __init__(
        self,
        *,
        seed: int = DEFAULT_SEED,
        repository_count: int = DEFAULT_REPOSITORY_COUNT,
        today: date | None = None,
        latency_ms: int = 0,
        rate_limit_per_minute: int | None = None,
        rate_limit_window_seconds: float = WINDOW_SECONDS,
        faults: Iterable[Mapping[str, Any]] = (),
    ) -> None:
        self.seed = seed
        self.repository_count = repository_count
        self.latency_ms = _checked_latency(latency_ms)
        self.limiter = RollingWindowLimiter(
            _checked_rate_limit(rate_limit_per_minute), window_seconds=_checked_window(rate_limit_window_seconds)
        )
        self.faults = FaultBook()
        self.stats = RequestStats()
        self.stopping = threading.Event()
        self._request_ids = itertools.count(1)
        self._lock = threading.Lock()
        self._today = today or utc_today()
        self._index = SearchIndex(generate_repositories(seed, repository_count, self._today))
        for raw in faults:
            self.faults.add(FaultRule.from_mapping(raw))

    @property
    def today(self) -> date:
        """The date the dataset's creation times count back from."""
        return self._today

    @property
    def index(self) -> SearchIndex:
        """The search index of the current dataset."""
        with self._lock:
            return self._index

    def set_today(self, today: date) -> None:
        """Regenerate the dataset (same seed) relative to a new date."""
        if today == self._today:
            return
        index = SearchIndex(generate_repositories(self.seed, self.repository_count, today))
        with self._lock:
            self._today, self._index = today, index

    def set_latency(self, latency_ms: int) -> None:
        """Delay every API request by this many milliseconds."""
        self.latency_ms = _checked_latency(latency_ms)

    def set_rate_limit(self, per_minute: int | None) -> None:
        """Allow this many API requests per client per rolling minute (None: unlimited)."""
        self.limiter.limit = _checked_rate_limit(per_minute)

    def set_rate_limit_window(self, seconds: float) -> None:
        """Count the limit over this many seconds instead of a minute (compressed runs)."""
        self.limiter.window_seconds = _checked_window(seconds)

    def apply_config(self, config: Mapping[str, Any]) -> None:
        """Apply a `/_fake/config` payload; raises ValueError on bad input."""
        unknown = set(config) - CONFIG_KEYS
        if unknown:
            raise ValueError(f"unknown config keys {sorted(unknown)}; known: {sorted(CONFIG_KEYS)}")
        if "latency_ms" in config:
            self.set_latency(config["latency_ms"])
        if "rate_limit_per_minute" in config:
            self.set_rate_limit(config["rate_limit_per_minute"])
        if "rate_limit_window_seconds" in config:
            self.set_rate_limit_window(config["rate_limit_window_seconds"])
        if "today" in config:
            self.set_today(date.fromisoformat(str(config["today"])))

    def config(self) -> dict[str, Any]:
        """Current settings as JSON-ready data."""
        return {
            "latency_ms": self.latency_ms,
            "rate_limit_per_minute": self.limiter.limit,
            "rate_limit_window_seconds": self.limiter.window_seconds,
            "today": self.today.isoformat(),
            "seed": self.seed,
            "repos": self.repository_count,
        }

    def reset(self) -> None:
        """Clear faults, counters and rate-limit windows; settings are kept."""
        self.faults.clear()
        self.stats.reset()
        self.limiter.reset()

    def pause(self, seconds: float) -> bool:
        """Sleep in the calling handler thread; False if the server began stopping."""
        if seconds <= 0:
            return not self.stopping.is_set()
        return not self.stopping.wait(seconds)

    def next_request_id(self) -> str:
        """A GitHub-looking X-GitHub-Request-Id value."""
        number = next(self._request_ids)
        return f"F4KE:{number:06X}:{self.seed:04X}:{number * 7919 % 0xFFFFFF:06X}:67400000"

    def expected_items(self, since: date, pages: int = 5, per_page: int = 100) -> list[dict[str, Any]]:
        """Items an honest client gets from pages 1..pages when nothing misbehaves."""
        index = self.index
        per_page = min(max(per_page, 1), MAX_PER_PAGE)
        items: list[dict[str, Any]] = []
        for page in range(1, pages + 1):
            query = SearchQuery(since, True, page, per_page, ())
            if query.start >= MAX_RESULTS:
                break
            page_items = json.loads(index.page(query).body)["items"]
            if not page_items:
                break
            items.extend(page_items)
        return items
