"""The event contract: every event type, its routing key and its data schema, defined once."""

from __future__ import annotations

import builtins
import datetime as dt
import re
import uuid
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    EmailStr,
    Field,
    StringConstraints,
)

SPECVERSION = "1.0"
CONTENT_TYPE = "application/cloudevents+json"

PAGES_PER_REPORT = 5
ITEMS_PER_PAGE = 100

Period = Literal["day", "week", "month"]
Layout = Literal["rows", "by-language"]
# Who waits for GitHub's budget first: a person, then the schedule, then bulk jobs.
Priority = Literal["interactive", "scheduled", "bulk"]
PRIORITIES: tuple[Priority, ...] = ("interactive", "scheduled", "bulk")
PERIOD_DAYS: dict[str, int] = {"day": 1, "week": 7, "month": 30}
UNKNOWN_LANGUAGE = "Unknown"


def _no_dot_segments(value: str) -> str:
    if ".." in value:
        raise ValueError("must not contain '..'")
    return value


# A report id ends up in file names and URLs: keep it to a safe alphabet.
ReportId = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"),
    AfterValidator(_no_dot_segments),
    Field(description="Report id: 1-64 of A-Z a-z 0-9 . _ -, no '..'", examples=["6f1c9a7e-1b2c"]),
]

# BCP 47 tags only: the locale is copied into email headers and templates.
LOCALE_PATTERN = re.compile(r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$")
Locale = Annotated[str, StringConstraints(pattern=LOCALE_PATTERN.pattern, max_length=35)]


class EventData(BaseModel):
    """Base of every event's data: strict about unknown fields, so typos fail loudly."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ReportSpec(EventData):
    """What a report covers and how it is delivered; travels with every stage's event."""

    period: Period
    since: dt.date = Field(description="First creation date covered (inclusive)")
    layout: Layout = "rows"
    notify: EmailStr | None = None
    requested_at: dt.datetime | None = Field(
        default=None, description="When the report was requested; measures how long it took"
    )


class ReportRequested(EventData):
    """Someone asked for a report."""

    report_id: ReportId | None = Field(default=None, description="Defaults to the event's id when absent")
    period: Period
    ref_date: dt.date | None = Field(default=None, description="Defaults to today in UTC")
    notify: EmailStr | None = None
    layout: Layout = "rows"
    priority: Priority = Field(
        default="interactive",
        description="Order in which reports waiting for GitHub's search budget are served: interactive "
        "(a person waits), then scheduled, then bulk",
    )


class Repository(EventData):
    """One search result, trimmed to the fields the report uses."""

    id: int
    full_name: str = Field(max_length=300)
    html_url: str = Field(max_length=500)
    description: str | None = Field(default=None, max_length=2000)
    language: str | None = Field(default=None, max_length=100)
    stargazers_count: int = Field(ge=0)
    forks_count: int = Field(ge=0)
    created_at: str = Field(max_length=40)


class ReportQueued(EventData):
    """A report waits for GitHub's search budget: where it stands in line, and about how long it waits."""

    report_id: ReportId
    priority: Priority
    position: int = Field(ge=0, description="Reports served before this one")
    eta_seconds: float = Field(
        ge=0, description="About how long until its last waiting page gets budget, from the budget's real rate"
    )


class ReportPageFetched(EventData):
    """One page of search results arrived."""

    report_id: ReportId
    page: int = Field(ge=1)
    pages: int = Field(ge=1, le=10)
    spec: ReportSpec
    items: list[Repository] = Field(max_length=ITEMS_PER_PAGE)
    incomplete_results: bool = False


class LanguageGroup(EventData):
    language: str
    repositories: list[Repository]


class ReportAggregated(EventData):
    """All pages of a report arrived: repositories deduplicated and grouped by language."""

    report_id: ReportId
    spec: ReportSpec
    total: int = Field(ge=0)
    languages: list[LanguageGroup] = Field(description="In report order")
    incomplete_pages: list[int] = Field(
        default_factory=list,
        description="Pages GitHub still answered with incomplete results after every retry: the report may be partial",
    )


class LanguageCount(EventData):
    language: str
    count: int


class ReportExported(EventData):
    """The CSV file is written."""

    report_id: ReportId
    path: str
    rows: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    layout: Layout
    spec: ReportSpec
    repositories: int = Field(ge=0)
    top_languages: list[LanguageCount] = Field(max_length=10)
    incomplete_pages: list[int] = Field(
        default_factory=list,
        description="Pages GitHub still answered with incomplete results after every retry: the report may be partial",
    )


class ReportFailed(EventData):
    """A report cannot be produced; stage says where it stopped."""

    report_id: ReportId
    stage: str = Field(max_length=40)
    reason: str = Field(max_length=2000)
    spec: ReportSpec | None = None


class AlertRaised(EventData):
    """An error worth an admin's attention, from any service."""

    service: str = Field(max_length=60)
    level: str = Field(max_length=20)
    logger: str = Field(max_length=200)
    message: str = Field(max_length=4000)
    exception: str | None = Field(default=None, max_length=20000)
    fingerprint: str = Field(max_length=64, description="Identical errors share one fingerprint")
    suppressed: int = Field(default=0, ge=0, description="Identical alerts dropped since the last one")
    report_id: str | None = Field(default=None, max_length=64)


class ReportCancelRequested(EventData):
    """Broadcast on the control exchange: drop this report's pending work."""

    report_id: ReportId
    reason: str = Field(default="cancelled by request", max_length=500)


EVENT_TYPES: dict[str, type[EventData]] = {
    "report.requested": ReportRequested,
    "report.queued": ReportQueued,
    "report.page.fetched": ReportPageFetched,
    "report.aggregated": ReportAggregated,
    "report.exported": ReportExported,
    "report.failed": ReportFailed,
    "alert.raised": AlertRaised,
    "report.cancel.requested": ReportCancelRequested,
}
EVENT_TYPE_OF: dict[type[EventData], str] = {model: name for name, model in EVENT_TYPES.items()}


class CloudEvent(BaseModel):
    """A CloudEvents 1.0 envelope in JSON structured mode, with our extension attributes."""

    model_config = ConfigDict(extra="allow", frozen=True)

    specversion: Literal["1.0"]
    id: str = Field(min_length=1, max_length=128)
    type: str = Field(min_length=1, max_length=100)
    source: str = Field(min_length=1, max_length=200)
    time: dt.datetime | None = None
    datacontenttype: Literal["application/json"] = "application/json"
    data: Any = None
    correlationid: str | None = Field(default=None, max_length=64)
    locale: Locale | None = None
    traceparent: str | None = Field(default=None, pattern=r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")

    def data_as(self, model: builtins.type[EventData]) -> EventData:
        return model.model_validate(self.data)


def event_type_of(data: EventData) -> str:
    return EVENT_TYPE_OF[type(data)]


def new_event_id() -> str:
    return str(uuid.uuid4())


def request_report_id(report_id: str | None, event_id: str) -> str:
    """A request's report id: its own, else its event's id, else (an id unfit for file names) one derived from it."""
    if report_id:
        return report_id
    if _REPORT_ID_PATTERN.fullmatch(event_id) and ".." not in event_id:
        return event_id
    return derived_event_id("report", event_id)


def report_id_of(data: EventData, event_id: str) -> str | None:
    """Whose report an event is about; a request without report_id is known by its event's id."""
    if isinstance(data, ReportRequested):
        return request_report_id(data.report_id, event_id)
    report_id = getattr(data, "report_id", None)
    return report_id if isinstance(report_id, str) else None


def raw_report_id(event: CloudEvent) -> str | None:
    """The report id that an event whose data failed its schema most likely meant."""
    report_id = event.data.get("report_id") if isinstance(event.data, dict) else None
    if event.type == "report.requested" and report_id is None:
        return request_report_id(None, event.id)
    return report_id if isinstance(report_id, str) and len(report_id) <= 64 else None


_REPORT_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def derived_event_id(*parts: str) -> str:
    """A stable id for an event that is a pure function of its inputs, so republishing it dedupes."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "hotrepos:" + ":".join(parts)))


def utc_today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


def since_date(period: str, ref_date: dt.date) -> dt.date:
    """The report covers repositories created on or after this date."""
    return ref_date - dt.timedelta(days=PERIOD_DAYS[period])


def json_schemas() -> dict[str, dict[str, Any]]:
    """JSON Schema of every event's data, keyed by event type, for publishers in other languages."""
    return {name: model.model_json_schema() for name, model in EVENT_TYPES.items()}
