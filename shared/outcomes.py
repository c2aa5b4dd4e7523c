"""One outcome per report: whoever publishes report.exported or report.failed claims it first."""

from __future__ import annotations

from enum import Enum
from typing import Any, Protocol

OUTCOME_TTL_SECONDS = 7 * 24 * 3600


class Claim(Enum):
    NEW = "new"  # this call decided the outcome
    SAME = "same"  # already decided, the same way: a redelivery may republish (same event id)
    OTHER = "other"  # already decided another way: publish nothing


class OutcomeLedger(Protocol):
    def claim(self, report_id: str, outcome: str) -> Claim: ...


class RedisOutcomeLedger:
    def __init__(self, redis_client: Any) -> None:
        self._redis = redis_client

    def claim(self, report_id: str, outcome: str) -> Claim:
        key = f"hotrepos:outcome:{report_id}"
        if self._redis.set(key, outcome, nx=True, ex=OUTCOME_TTL_SECONDS):
            return Claim.NEW
        current = self._redis.get(key)
        current = current.decode() if isinstance(current, bytes) else current
        return Claim.SAME if current == outcome else Claim.OTHER
