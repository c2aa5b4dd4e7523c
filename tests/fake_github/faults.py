"""Fault rules that make the fake misbehave on purpose, consumed request by request."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

FAULT_KINDS = frozenset(
    {
        "status",
        "rate_limit",
        "retry_after",
        "timeout",
        "truncated",
        "incomplete",
        "shift",
        "missing_fields",
    }
)
# Kinds that answer with an error instead of the page.
ERROR_KINDS = frozenset({"status", "rate_limit", "retry_after"})
DEFAULT_TIMEOUT_SECONDS = 40.0
DEFAULT_RETRY_AFTER_SECONDS = 1
DEFAULT_RESET_IN_SECONDS = 1


@dataclass
class FaultRule:
    """One rule: which page it hits, what it does, and how many more times."""

    kind: str
    page: int | None = None
    times: int | None = None
    status: int = 500
    body: Any = None
    seconds: float | None = None
    reset_in: float = DEFAULT_RESET_IN_SECONDS

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; expected one of {sorted(FAULT_KINDS)}")
        if self.page is not None and (not isinstance(self.page, int) or self.page < 1):
            raise ValueError(f"fault page must be a positive int or null, got {self.page!r}")
        if self.times is not None and (not isinstance(self.times, int) or self.times < 0):
            raise ValueError(f"fault times must be a non-negative int or null, got {self.times!r}")
        if not isinstance(self.status, int) or not 100 <= self.status <= 599:
            raise ValueError(f"fault status must be an HTTP status code, got {self.status!r}")

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> FaultRule:
        """Build a rule from its JSON form, rejecting unknown keys."""
        known = set(cls.__dataclass_fields__)
        unknown = set(raw) - known
        if unknown:
            raise ValueError(f"unknown fault fields {sorted(unknown)}; known: {sorted(known)}")
        if "kind" not in raw:
            raise ValueError("a fault needs a 'kind'")
        return cls(**dict(raw))

    @property
    def wait_seconds(self) -> float:
        """Seconds to sleep (timeout) or to announce in Retry-After (retry_after)."""
        if self.seconds is not None:
            return float(self.seconds)
        if self.kind == "timeout":
            return DEFAULT_TIMEOUT_SECONDS
        return float(DEFAULT_RETRY_AFTER_SECONDS)

    def matches(self, page: int) -> bool:
        """Whether this rule still applies to a request for the page."""
        return (self.times is None or self.times > 0) and self.page in (None, page)

    def to_dict(self) -> dict[str, Any]:
        """JSON form, as accepted by `from_mapping`."""
        return asdict(self)


class FaultBook:
    """Ordered fault rules; the first live rule matching a request is used up by it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: list[FaultRule] = []

    def add(self, rule: FaultRule) -> None:
        """Append a rule after the existing ones."""
        with self._lock:
            self._rules.append(rule)

    def clear(self) -> None:
        """Remove every rule."""
        with self._lock:
            self._rules.clear()

    def take(self, page: int) -> FaultRule | None:
        """The rule to apply to a request for the page, consuming one of its times."""
        with self._lock:
            for rule in self._rules:
                if rule.matches(page):
                    if rule.times is not None:
                        rule.times -= 1
                    return rule
        return None

    def snapshot(self) -> list[dict[str, Any]]:
        """Current rules with their remaining times."""
        with self._lock:
            return [rule.to_dict() for rule in self._rules]
