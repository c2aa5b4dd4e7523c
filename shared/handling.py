"""What a handler may use: the results it returns, the errors it raises, the ports it depends on.

Nothing here imports a transport, Redis or metrics, so `import services.<name>.handlers` loads none of
them and a unit test calls a handler with in-memory fakes.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

from shared.events import CloudEvent, EventData


@dataclass(frozen=True)
class EventMeta:
    """The envelope of the event being handled, and how many times it was tried before this one."""

    id: str
    type: str
    time: dt.datetime | None = None
    locale: str | None = None
    correlationid: str | None = None
    attempt: int = 0
    # The whole envelope as decoded, for a handler that passes the event on as it came (webhooks).
    cloud_event: CloudEvent | None = field(default=None, compare=False, repr=False)

    @classmethod
    def of(cls, event: CloudEvent, attempt: int = 0) -> EventMeta:
        return cls(event.id, event.type, event.time, event.locale, event.correlationid, attempt, event)


@dataclass(frozen=True)
class Outgoing:
    """An event a handler asks to publish; a derived event_id makes its republication dedupable.

    A report's outcome (report.exported, report.failed) needs no event_id: the outcome publisher
    derives it from the report, after claiming the outcome.
    """

    data: EventData
    event_id: str | None = None
    correlationid: str | None = None


HandlerResult = Iterable[EventData | Outgoing] | None


class RetryLater(Exception):
    """The work cannot be done now (a dependency is down, a budget is spent) but will succeed later.

    A wait that is not a failure (its turn has not come) does not count against the retry limit
    (`counts=False`), and may tell the world meanwhile (`publish`, events published before the retry).
    """

    def __init__(
        self,
        reason: str,
        delay: float | None = None,
        *,
        counts: bool = True,
        publish: Iterable[EventData | Outgoing] = (),
    ) -> None:
        super().__init__(reason)
        self.delay = delay
        self.counts = counts
        self.publish = list(publish)


class Rejected(Exception):
    """The message can never be handled: dead-letter it with this reason."""


class Claim(Enum):
    NEW = "new"  # this call decided the outcome
    SAME = "same"  # already decided, the same way: a redelivery may republish (same event id)
    OTHER = "other"  # already decided another way: publish nothing


class OutcomeLedger(Protocol):
    """One outcome per report: whoever publishes report.exported or report.failed claims it first."""

    def claim(self, report_id: str, outcome: str) -> Claim: ...

    def release(self, report_id: str, outcome: str) -> None:
        """Undo a claim whose event could not be published."""
        ...


class Cancellations(Protocol):
    def cancel(self, report_id: str) -> None: ...

    def is_cancelled(self, report_id: str) -> bool: ...


class ProcessedEvents(Protocol):
    """Remembers which events a queue has handled, so a redelivery is acked without its effect."""

    def seen(self, queue: str, event_id: str) -> bool: ...

    def remember(self, queue: str, event_id: str) -> None: ...


class EventPublisher(Protocol):
    """Publishes one event of the contract, persistent and confirmed."""

    def publish(
        self, data: EventData, *, event_id: str | None = None, correlationid: str | None = None
    ) -> CloudEvent: ...
