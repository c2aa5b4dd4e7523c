"""Whose report it is: the gateway records it when it places an order; the webhooks service reads it.

A report the gateway placed belongs to the identity that asked for it. A report asked for over the
broker by another client has no owner; a scheduled one (the beat names them scheduled-...) belongs to
everyone.
"""

from __future__ import annotations

from typing import Any, Protocol


def owner_key(report_id: str) -> str:
    return f"hotrepos:gateway:owner:{report_id}"


def is_scheduled_report(report_id: str, priority: str | None = None) -> bool:
    """A report the schedule asked for: it belongs to everyone."""
    return priority == "scheduled" or report_id.startswith("scheduled-")


class ReportOwners(Protocol):
    def owner_of(self, report_id: str) -> str | None: ...


class RedisReportOwners:
    def __init__(self, redis_client: Any) -> None:
        self._redis = redis_client

    def owner_of(self, report_id: str) -> str | None:
        owner = self._redis.get(owner_key(report_id))
        return owner.decode() if isinstance(owner, bytes) else owner
