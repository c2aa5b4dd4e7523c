"""One outcome per report: every path that ends a report claims the outcome, then publishes it."""

from __future__ import annotations

from typing import Any

from shared.events import CloudEvent, ReportExported, ReportFailed, derived_event_id
from shared.handling import Claim, EventPublisher, OutcomeLedger

OUTCOME_TTL_SECONDS = 7 * 24 * 3600


def outcome_of(data: ReportExported | ReportFailed) -> str:
    return "exported" if isinstance(data, ReportExported) else "failed"


class OutcomePublisher:
    """Claims a report's outcome and publishes it under an id derived from the report.

    Whoever claims first decides; the same outcome claimed again (a redelivery, a replica that heard
    the same cancel) republishes the same event id, which every consumer deduplicates.
    """

    def __init__(self, ledger: OutcomeLedger, publisher: EventPublisher) -> None:
        self._ledger = ledger
        self._publisher = publisher

    def publish(self, data: ReportExported | ReportFailed) -> CloudEvent | None:
        """The published event, or None when the report already ended the other way."""
        outcome = outcome_of(data)
        claim = self._ledger.claim(data.report_id, outcome)
        if claim is Claim.OTHER:
            return None
        try:
            # In the scope of the event being handled, which carries the report's correlation id.
            return self._publisher.publish(data, event_id=derived_event_id(data.report_id, outcome))
        except BaseException:
            if claim is Claim.NEW:
                # Undecided again: the retry that follows may end the report either way, and must
                # not find it decided with nothing published.
                self._ledger.release(data.report_id, outcome)
            raise


# Only the outcome this caller claimed is released, never one another caller decided since.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class RedisOutcomeLedger:
    def __init__(self, redis_client: Any) -> None:
        self._redis = redis_client
        self._release = redis_client.register_script(_RELEASE)

    def claim(self, report_id: str, outcome: str) -> Claim:
        key = f"hotrepos:outcome:{report_id}"
        if self._redis.set(key, outcome, nx=True, ex=OUTCOME_TTL_SECONDS):
            return Claim.NEW
        current = self._redis.get(key)
        current = current.decode() if isinstance(current, bytes) else current
        return Claim.SAME if current == outcome else Claim.OTHER

    def release(self, report_id: str, outcome: str) -> None:
        self._release(keys=[f"hotrepos:outcome:{report_id}"], args=[outcome])
