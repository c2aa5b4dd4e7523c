"""Gateway handlers: every report event folds into the status projection that the HTTP API reads."""

from __future__ import annotations

from typing import Protocol

from shared.events import CloudEvent, EventData


class ReportStatuses(Protocol):
    def apply(self, data: EventData, meta: CloudEvent) -> object: ...


def handle_report_event(event: EventData, meta: CloudEvent, *, statuses: ReportStatuses) -> None:
    statuses.apply(event, meta)
