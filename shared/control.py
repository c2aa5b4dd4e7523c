"""Cancel: a command broadcast on hotrepos.control that every replica of every service obeys."""

from __future__ import annotations

from typing import Any

from shared.events import ReportCancelRequested, ReportFailed
from shared.handling import Cancellations, EventMeta

CANCELLED_TTL_SECONDS = 7 * 24 * 3600
CANCELLED_STAGE = "cancelled"
KNOWN_IN_MEMORY = 10_000


class RedisCancellations:
    """Cancelled report ids, shared so that a replica started after the broadcast knows too."""

    def __init__(self, redis_client: Any) -> None:
        self._redis = redis_client
        self._known: set[str] = set()

    def cancel(self, report_id: str) -> None:
        if len(self._known) >= KNOWN_IN_MEMORY:
            self._known.clear()  # only a cache of Redis: forgetting costs a lookup, not a cancel
        self._known.add(report_id)
        self._redis.set(f"hotrepos:cancelled:{report_id}", 1, ex=CANCELLED_TTL_SECONDS)

    def is_cancelled(self, report_id: str) -> bool:
        if report_id in self._known:
            return True
        if self._redis.exists(f"hotrepos:cancelled:{report_id}"):
            self._known.add(report_id)
            return True
        return False


def handle_report_cancel_requested(
    event: ReportCancelRequested, meta: EventMeta, *, cancellations: Cancellations, may_fail_reports: bool
) -> list[ReportFailed]:
    cancellations.cancel(event.report_id)
    if not may_fail_reports:
        return []  # the notifier and the gateway only stop their own work
    # Every replica hears the broadcast and may tell: the outcome is claimed once and published under
    # one id, and a replica that dies before publishing cannot leave the report without an outcome.
    return [ReportFailed(report_id=event.report_id, stage=CANCELLED_STAGE, reason=event.reason)]
