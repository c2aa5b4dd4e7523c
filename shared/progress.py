"""A report's progress as a pure fold of its events: one fold per event type, whatever their order.

The gateway keeps the result in Redis for its API and its progress streams; the CLI folds the same
events to draw `hotrepos request --wait`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import PurePath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from shared.events import (
    PAGES_PER_REPORT,
    EventData,
    LanguageCount,
    Layout,
    Period,
    Priority,
    ReportAggregated,
    ReportExported,
    ReportFailed,
    ReportPageFetched,
    ReportQueued,
    ReportRequested,
    ReportSpec,
    report_id_of,
    since_date,
)
from shared.handling import EventMeta

ReportState = Literal["requested", "fetching", "aggregated", "exported", "failed"]
# A state never goes back: events of one report may arrive out of order, from competing replicas.
STATE_RANK: dict[str, int] = {"requested": 0, "fetching": 1, "aggregated": 2, "exported": 3, "failed": 3}
TERMINAL_STATES = frozenset({"exported", "failed"})


class QueuePlace(BaseModel):
    """Where a report waiting for GitHub's budget stands: reports served before it, and about how long."""

    model_config = ConfigDict(frozen=True)

    position: int
    eta_seconds: float
    at: dt.datetime

    def describe(self) -> str:
        return f"waiting for GitHub: {self.position} ahead, about {round(self.eta_seconds)} s"


class ProgressStep(BaseModel):
    """One visible change of a report's progress: what the SSE stream sends, in order."""

    model_config = ConfigDict(frozen=True)

    seq: int
    state: ReportState
    at: dt.datetime
    pages_fetched: int = 0
    pages: int = PAGES_PER_REPORT
    queue: QueuePlace | None = None


class ReportStatus(BaseModel):
    """Everything known of one report, built from its events alone."""

    model_config = ConfigDict(frozen=True)

    report_id: str
    state: ReportState
    first_seen: dt.datetime
    updated_at: dt.datetime
    period: Period | None = None
    ref_date: dt.date | None = None
    since: dt.date | None = None
    layout: Layout | None = None
    locale: str | None = None
    priority: Priority | None = None
    # Set while the report waits for GitHub's budget, from its latest report.queued.
    queue: QueuePlace | None = None
    pages: int = PAGES_PER_REPORT
    fetched_pages: tuple[int, ...] = ()
    repositories: int | None = None
    languages: tuple[LanguageCount, ...] = ()
    rows: int | None = None
    sha256: str | None = None
    file_name: str | None = None
    path: str | None = None
    failed_stage: str | None = None
    failure_reason: str | None = None
    incomplete_pages: tuple[int, ...] = ()
    progress: tuple[ProgressStep, ...] = ()

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    @property
    def pages_fetched(self) -> int:
        if self.state in ("aggregated", "exported"):
            return self.pages  # aggregating needs every page, even if some page event is still in flight
        return len(self.fetched_pages)

    @property
    def pages_in_part(self) -> str:
        return ", ".join(map(str, self.incomplete_pages))

    @property
    def last_seq(self) -> int:
        return self.progress[-1].seq if self.progress else 0

    def describe(self) -> str:
        """One line on where the report stands, as a person reads it."""
        if self.state == "exported":
            partial = f" (partial: GitHub answered pages {self.pages_in_part} in part)" if self.incomplete_pages else ""
            return f"exported: {self.rows} rows, {self.repositories} repositories{partial}"
        if self.state == "failed":
            return f"failed at {self.failed_stage}: {self.failure_reason}"
        if self.state == "aggregated":
            return f"aggregated: {self.repositories} repositories, writing the CSV"
        if self.queue is not None:
            fetched = f"page {len(self.fetched_pages)} of {self.pages}; " if self.fetched_pages else ""
            return f"{fetched}{self.queue.describe()}"
        if self.fetched_pages:
            return f"fetching: page {len(self.fetched_pages)} of {self.pages}"
        return "requested"


# What one event changes: the fields it brings, and the state it moves the report to (if any).
Change = tuple[dict[str, Any], ReportState | None]


def fold_report_requested(status: ReportStatus, data: ReportRequested, meta: EventMeta, fresh: bool) -> Change:
    changes = _fill(
        status,
        period=data.period,
        ref_date=data.ref_date,
        layout=data.layout,
        locale=meta.locale,
        priority=data.priority,
    )
    if data.ref_date is not None and status.since is None:
        changes["since"] = since_date(data.period, data.ref_date)
    return changes, "requested" if fresh else None


def fold_report_queued(status: ReportStatus, data: ReportQueued, meta: EventMeta, fresh: bool) -> Change:
    changes = _fill(status, priority=data.priority)
    at = meta.time or status.updated_at
    # A place in line older than what is known since (a page fetched later) is no longer news.
    if status.state in ("requested", "fetching") and (fresh or at >= status.updated_at):
        changes["queue"] = QueuePlace(position=data.position, eta_seconds=data.eta_seconds, at=at)
    return changes, None


def fold_report_page_fetched(status: ReportStatus, data: ReportPageFetched, meta: EventMeta, fresh: bool) -> Change:
    changes = _fill_spec(status, data.spec)
    if data.page in status.fetched_pages:
        return changes, None
    changes["fetched_pages"] = tuple(sorted({*status.fetched_pages, data.page}))
    changes["pages"] = data.pages
    changes["queue"] = None
    return changes, "fetching"


def fold_report_aggregated(status: ReportStatus, data: ReportAggregated, meta: EventMeta, fresh: bool) -> Change:
    changes = _fill_spec(status, data.spec)
    changes["repositories"] = data.total
    changes["languages"] = tuple(
        LanguageCount(language=group.language, count=len(group.repositories)) for group in data.languages
    )
    changes["incomplete_pages"] = tuple(data.incomplete_pages)
    changes["queue"] = None
    return changes, "aggregated"


def fold_report_exported(status: ReportStatus, data: ReportExported, meta: EventMeta, fresh: bool) -> Change:
    changes = _fill_spec(status, data.spec)
    changes.update(
        rows=data.rows,
        sha256=data.sha256,
        repositories=data.repositories,
        file_name=PurePath(data.path).name,
        path=data.path,
        layout=data.layout,
        incomplete_pages=tuple(data.incomplete_pages),
        queue=None,
    )
    if not status.languages:
        changes["languages"] = tuple(data.top_languages)
    return changes, "exported"


def fold_report_failed(status: ReportStatus, data: ReportFailed, meta: EventMeta, fresh: bool) -> Change:
    changes = _fill_spec(status, data.spec) if data.spec is not None else {}
    if not status.terminal:
        changes.update(failed_stage=data.stage, failure_reason=data.reason, queue=None)
    return changes, "failed"


Fold = Callable[[ReportStatus, Any, EventMeta, bool], Change]
FOLDS: dict[type[EventData], Fold] = {
    ReportRequested: fold_report_requested,
    ReportQueued: fold_report_queued,
    ReportPageFetched: fold_report_page_fetched,
    ReportAggregated: fold_report_aggregated,
    ReportExported: fold_report_exported,
    ReportFailed: fold_report_failed,
}


def apply_event(
    status: ReportStatus | None, data: EventData, meta: EventMeta, *, received_at: dt.datetime
) -> ReportStatus | None:
    """The status after one more event; the same status when the event changes nothing."""
    fold = FOLDS.get(type(data))
    report_id = report_id_of(data, meta.id)
    if fold is None or report_id is None:
        return status
    at = meta.time or received_at
    fresh = status is None
    if status is None:
        status = ReportStatus(report_id=report_id, state="requested", first_seen=at, updated_at=at)
    changes, new_state = fold(status, data, meta, fresh)
    if new_state is not None and not status.terminal and (fresh or STATE_RANK[new_state] > STATE_RANK[status.state]):
        changes["state"] = new_state
    changes = {key: value for key, value in changes.items() if getattr(status, key) != value}
    if not changes and not fresh:
        return status
    updated = status.model_copy(update={**changes, "updated_at": max(status.updated_at, at)})
    another_page = "fetched_pages" in changes and updated.state == "fetching"
    if fresh or "state" in changes or another_page or "queue" in changes:
        step = ProgressStep(
            seq=status.last_seq + 1,
            state=updated.state,
            at=at,
            pages_fetched=updated.pages_fetched,
            pages=updated.pages,
            queue=updated.queue,
        )
        steps = status.progress
        # A newer place in line replaces the one before it: a long wait keeps one step, not hundreds.
        moved_in_line = not (fresh or "state" in changes or another_page)
        if moved_in_line and steps and steps[-1].queue is not None and steps[-1].state == step.state:
            steps = steps[:-1]
        updated = updated.model_copy(update={"progress": (*steps, step)})
    return updated


def _fill(status: ReportStatus, **values: Any) -> dict[str, Any]:
    """Values the status does not know yet; what it knows stays, whatever order events come in."""
    return {key: value for key, value in values.items() if value is not None and getattr(status, key) is None}


def _fill_spec(status: ReportStatus, spec: ReportSpec) -> dict[str, Any]:
    return _fill(status, period=spec.period, since=spec.since, layout=spec.layout)
