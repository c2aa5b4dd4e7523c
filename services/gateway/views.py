"""The HTTP API's models: what a client sends to ask for a report, and how a report's status reads."""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, EmailStr, Field

from shared.events import LOCALE_PATTERN, LanguageCount, Layout, Locale, Period
from shared.progress import ReportStatus


def _iso_date_text(value: object) -> object:
    # Lax parsing would take 0 for 1970-01-01 and a datetime for its date: a client meant neither.
    if not isinstance(value, str | dt.date) or (isinstance(value, str) and not _ISO_DATE.fullmatch(value)):
        raise ValueError("must be a date written YYYY-MM-DD")
    return value


_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
IsoDate = Annotated[dt.date, BeforeValidator(_iso_date_text)]


class ReportOrder(BaseModel):
    """A report as the page or an API client asks for it; the field types are the contract's own."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"period": "week", "notify": "me@example.com", "locale": "fr"}]},
    )

    period: Period
    ref_date: IsoDate | None = Field(default=None, description="Defaults to today in UTC; not in the future")
    notify: EmailStr | None = Field(default=None, description="Who gets the email when it is ready")
    layout: Layout = "rows"
    locale: Locale | None = Field(default=None, description="BCP 47; defaults to Accept-Language, then en")


class ReportAccepted(BaseModel):
    report_id: str
    status_url: str
    events_url: str


class Failure(BaseModel):
    stage: str
    reason: str


class QueueView(BaseModel):
    position: int = Field(description="Reports served before this one")
    eta_seconds: float = Field(description="About how long it still waits for GitHub's search budget")


class ReportStatusView(BaseModel):
    """A report's status as the API shows it."""

    report_id: str
    state: str = Field(description="requested, fetching, aggregated, exported or failed")
    period: str | None
    ref_date: dt.date | None
    since: dt.date | None
    layout: str | None
    locale: str | None
    priority: str | None = Field(description="interactive, scheduled or bulk: its place in line for GitHub's budget")
    queue: QueueView | None = Field(description="Set while the report waits for GitHub's search budget")
    requested_at: dt.datetime
    updated_at: dt.datetime
    pages_fetched: int
    pages: int
    repositories: int | None
    languages: list[LanguageCount] = Field(description="Repositories per language")
    rows: int | None
    sha256: str | None
    download_url: str | None
    partial: bool = Field(description="GitHub answered some pages only in part, even after retries")
    incomplete_pages: list[int] = Field(description="Those pages")
    failure: Failure | None
    status_url: str
    events_url: str


class ReportPage(BaseModel):
    items: list[ReportStatusView]
    total: int
    offset: int
    limit: int
    next_offset: int | None


def status_url(report_id: str) -> str:
    return f"/api/reports/{report_id}"


def events_url(report_id: str) -> str:
    return f"{status_url(report_id)}/events"


def accepted(report_id: str) -> ReportAccepted:
    return ReportAccepted(report_id=report_id, status_url=status_url(report_id), events_url=events_url(report_id))


def view_of(status: ReportStatus) -> ReportStatusView:
    url = status_url(status.report_id)
    exported = status.state == "exported" and status.file_name is not None
    return ReportStatusView(
        report_id=status.report_id,
        state=status.state,
        period=status.period,
        ref_date=status.ref_date,
        since=status.since,
        layout=status.layout,
        locale=status.locale,
        priority=status.priority,
        queue=QueueView(position=status.queue.position, eta_seconds=status.queue.eta_seconds)
        if status.queue is not None
        else None,
        requested_at=status.first_seen,
        updated_at=status.updated_at,
        pages_fetched=status.pages_fetched,
        pages=status.pages,
        repositories=status.repositories,
        languages=list(status.languages),
        rows=status.rows,
        sha256=status.sha256,
        download_url=f"{url}/download" if exported else None,
        partial=bool(status.incomplete_pages),
        incomplete_pages=list(status.incomplete_pages),
        failure=Failure(stage=status.failed_stage or "?", reason=status.failure_reason or "")
        if status.state == "failed"
        else None,
        status_url=url,
        events_url=events_url(status.report_id),
    )


def locale_from_accept_language(header: str | None) -> str | None:
    """The client's most preferred language that is a well-formed tag; '*' and garbage are skipped."""
    best: tuple[float, str] | None = None
    for part in (header or "").split(","):
        tag, _, params = part.strip().partition(";")
        tag = tag.strip()
        if not LOCALE_PATTERN.match(tag) or len(tag) > 35:
            continue
        quality = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name.strip() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if quality > 0 and (best is None or quality > best[0]):
            best = (quality, tag)
    return best[1] if best else None
