"""The gateway's HTTP API and page, built from the adapters its composition root hands it."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Annotated, Any, Protocol

import anyio
import redis.exceptions
import structlog
from fastapi import FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, BeforeValidator, ConfigDict, EmailStr, Field, TypeAdapter, ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.gateway.idempotency import IdempotentRequest, RedisIdempotencyKeys
from services.gateway.projection import ProgressFeed, ProgressStep, RedisReportStatuses, ReportStatus
from shared.context import EventContext, event_scope
from shared.events import (
    LOCALE_PATTERN,
    CloudEvent,
    EventData,
    LanguageCount,
    Layout,
    Locale,
    Period,
    ReportCancelRequested,
    ReportId,
    ReportRequested,
    derived_event_id,
)

log = structlog.get_logger("hotrepos.gateway")

STATIC_DIR = Path(__file__).parent / "static"
RETRY_AFTER_SECONDS = 5
REDIS_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
_report_ids: TypeAdapter[str] = TypeAdapter(ReportId)


class EventPublisher(Protocol):
    def publish(self, data: EventData, *, event_id: str | None = None) -> CloudEvent: ...


@dataclass(frozen=True)
class GatewayDependencies:
    """Everything the app talks to; the composition root builds them, tests may build others."""

    publisher: EventPublisher
    broker_errors: tuple[type[BaseException], ...]
    statuses: RedisReportStatuses
    feed: ProgressFeed
    idempotency: RedisIdempotencyKeys
    reports_dir: Path
    readiness: Callable[[], Mapping[str, str]]
    today: Callable[[], dt.date]
    debug_faults: bool = False
    keepalive_seconds: float = 15.0


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


class ReportStatusView(BaseModel):
    """A report's status as the API shows it."""

    report_id: str
    state: str = Field(description="requested, fetching, aggregated, exported or failed")
    period: str | None
    ref_date: dt.date | None
    since: dt.date | None
    layout: str | None
    locale: str | None
    requested_at: dt.datetime
    updated_at: dt.datetime
    pages_fetched: int
    pages: int
    repositories: int | None
    languages: list[LanguageCount] = Field(description="Repositories per language")
    rows: int | None
    sha256: str | None
    download_url: str | None
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
        requested_at=status.first_seen,
        updated_at=status.updated_at,
        pages_fetched=status.pages_fetched,
        pages=status.pages,
        repositories=status.repositories,
        languages=list(status.languages),
        rows=status.rows,
        sha256=status.sha256,
        download_url=f"{url}/download" if exported else None,
        failure=Failure(stage=status.failed_stage or "?", reason=status.failure_reason or "")
        if status.state == "failed"
        else None,
        status_url=url,
        events_url=f"{url}/events",
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


class ServiceUnavailable(Exception):
    """A dependency (broker, Redis) does not answer: the client should retry later."""


def _unavailable(reason: str) -> JSONResponse:
    return JSONResponse(
        {"detail": f"service unavailable: {reason}; nothing was done, retry later"},
        status_code=503,
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


class UnhandledErrors:
    """A crash in a request is logged at ERROR, which alerts the admins, and answered with a plain 500."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            log.exception("request.crashed", method=scope.get("method"), path=scope.get("path"))
            if not started:
                response = JSONResponse({"detail": "internal server error; the admins were told"}, 500)
                await response(scope, receive, send)


def create_app(deps: GatewayDependencies) -> FastAPI:
    """The FastAPI application: the API under /api, the page at /, its OpenAPI docs at /docs."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await deps.feed.close()

    app = FastAPI(
        title="hotrepos gateway",
        description="Ask for a report of GitHub's hottest new repositories, follow it, download it.",
        version="1",
        lifespan=lifespan,
    )
    app.add_middleware(UnhandledErrors)

    @app.exception_handler(ServiceUnavailable)
    async def service_unavailable(_: Request, exc: ServiceUnavailable) -> JSONResponse:
        return _unavailable(str(exc))

    for redis_error in REDIS_ERRORS:

        @app.exception_handler(redis_error)
        async def redis_unavailable(_: Request, exc: Exception) -> JSONResponse:
            log.warning("redis.unreachable", error=str(exc))
            return _unavailable("Redis does not answer")

    def known_status(report_id: str) -> ReportStatus | None:
        try:
            _report_ids.validate_python(report_id)
        except ValidationError:
            return None  # an id no report can have: as unknown as any other
        return deps.statuses.get(report_id)

    def not_found(report_id: str, what: str = "report") -> JSONResponse:
        return JSONResponse({"detail": f"no {what} for report {report_id!r}"}, status_code=404)

    @app.post(
        "/api/reports",
        status_code=202,
        response_model=ReportAccepted,
        tags=["reports"],
        responses={422: {"description": "A field is invalid"}, 503: {"description": "Retry later"}},
    )
    def request_report(
        order: ReportOrder,
        idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", min_length=1, max_length=255)] = None,
        accept_language: Annotated[str | None, Header(alias="Accept-Language")] = None,
    ) -> JSONResponse:
        """Queue a report: publishes report.requested and answers at once with where to follow it."""
        today = deps.today()
        if order.ref_date is not None and order.ref_date > today:
            raise RequestValidationError(
                [
                    {
                        "type": "value_error",
                        "loc": ("body", "ref_date"),
                        "msg": f"Value error, must not be in the future (today is {today.isoformat()} UTC)",
                        "input": order.ref_date.isoformat(),
                    }
                ]
            )
        locale = order.locale or locale_from_accept_language(accept_language)
        request_hash = _hash_of(order, locale)
        request = IdempotentRequest(report_id=uuid.uuid4().hex, request_hash=request_hash)
        if idempotency_key is not None:
            request = deps.idempotency.claim(idempotency_key, request)
            if request.request_hash != request_hash:
                raise RequestValidationError(
                    [
                        {
                            "type": "value_error",
                            "loc": ("header", "Idempotency-Key"),
                            "msg": "Value error, already used for a different request",
                            "input": idempotency_key,
                        }
                    ]
                )
        if not request.published:
            try:
                event = _publish_request(deps, request.report_id, order, locale)
            except deps.broker_errors as exc:
                log.warning("broker.unreachable", error=str(exc), report_id=request.report_id)
                raise ServiceUnavailable("the broker does not answer") from None
            log.info("report.accepted", report_id=request.report_id, period=order.period)
            _after_publishing(deps, idempotency_key, request, event)
        accepted = ReportAccepted(
            report_id=request.report_id,
            status_url=status_url(request.report_id),
            events_url=f"{status_url(request.report_id)}/events",
        )
        return JSONResponse(accepted.model_dump(), status_code=202, headers={"Location": accepted.status_url})

    @app.get("/api/reports", response_model=ReportPage, tags=["reports"])
    def list_reports(
        offset: Annotated[int, Query(ge=0)] = 0, limit: Annotated[int, Query(ge=1, le=100)] = 20
    ) -> ReportPage:
        """The report history, newest first."""
        statuses, total = deps.statuses.recent(offset=offset, limit=limit)
        return ReportPage(
            items=[view_of(status) for status in statuses],
            total=total,
            offset=offset,
            limit=limit,
            next_offset=offset + limit if offset + limit < total else None,
        )

    @app.get(
        "/api/reports/{report_id}",
        response_model=ReportStatusView,
        tags=["reports"],
        responses={404: {"description": "Unknown report"}},
    )
    def report_status(report_id: str) -> ReportStatusView | JSONResponse:
        """Where a report stands, built from its events alone."""
        status = known_status(report_id)
        return view_of(status) if status else not_found(report_id)

    @app.delete(
        "/api/reports/{report_id}",
        status_code=202,
        tags=["reports"],
        responses={
            404: {"description": "Unknown report"},
            409: {"description": "Already finished"},
            503: {"description": "Retry later"},
        },
    )
    def cancel_report(report_id: str) -> JSONResponse:
        """Cancel a report: broadcast on hotrepos.control, every replica of every service drops its work."""
        status = known_status(report_id)
        if status is None:
            return not_found(report_id)
        if status.state in ("exported", "failed"):
            return JSONResponse({"detail": f"report {report_id!r} is already {status.state}"}, status_code=409)
        command = ReportCancelRequested(report_id=report_id, reason="cancelled by request")
        try:
            with event_scope(EventContext(correlationid=report_id)):
                deps.publisher.publish(command)
        except deps.broker_errors as exc:
            log.warning("broker.unreachable", error=str(exc), report_id=report_id)
            raise ServiceUnavailable("the broker does not answer") from None
        log.info("report.cancel_requested", report_id=report_id)
        return JSONResponse({"report_id": report_id, "status_url": status_url(report_id)}, status_code=202)

    @app.get(
        "/api/reports/{report_id}/download",
        tags=["reports"],
        responses={200: {"content": {"text/csv": {}}}, 404: {"description": "No such file"}},
    )
    def download_report(report_id: str) -> Response:
        """The report's CSV file, as an attachment."""
        status = known_status(report_id)
        if status is None or status.state != "exported" or not status.file_name:
            return not_found(report_id, "file")
        path = _inside(deps.reports_dir, status.file_name)
        if path is None:
            log.warning("download.refused", report_id=report_id, file_name=status.file_name)
            return not_found(report_id, "file")
        return FileResponse(
            path, media_type="text/csv; charset=utf-8", filename=path.name, headers={"Cache-Control": "no-store"}
        )

    @app.get(
        "/api/reports/{report_id}/events",
        tags=["reports"],
        responses={200: {"content": {"text/event-stream": {}}}, 404: {"description": "Unknown report"}},
    )
    async def report_events(
        report_id: str, last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None
    ) -> Response:
        """Server-Sent Events of the report's progress, from its first step (or Last-Event-ID) on."""
        status = await anyio.to_thread.run_sync(known_status, report_id)
        if status is None:
            return not_found(report_id)
        after = int(last_event_id) if last_event_id and last_event_id.isdigit() else 0
        if status.terminal and after >= status.last_seq:
            return Response(status_code=204)  # tells EventSource not to reconnect
        return StreamingResponse(
            _progress_stream(deps, report_id, after),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @app.get("/healthz", tags=["operations"])
    def healthz() -> dict[str, str]:
        """Answers while the process lives."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"], responses={503: {"description": "A dependency is down"}})
    def readyz() -> JSONResponse:
        """Answers 200 only while the broker and Redis answer and the projection is being fed."""
        checks = dict(deps.readiness())
        ready = all(value == "ok" for value in checks.values())
        return JSONResponse(
            {"status": "ready" if ready else "unavailable", "checks": checks},
            status_code=200 if ready else 503,
            headers={} if ready else {"Retry-After": str(RETRY_AFTER_SECONDS)},
        )

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html; charset=utf-8")

    if deps.debug_faults:

        @app.get("/api/_debug/fail", tags=["operations"])
        def fail_on_purpose() -> None:
            """Crashes on purpose, to check that a 500 reaches the admins (GATEWAY_DEBUG_FAULTS only)."""
            raise RuntimeError("forced failure from /api/_debug/fail")

    return app


def _hash_of(order: ReportOrder, locale: str | None) -> str:
    canonical = json.dumps([order.model_dump(mode="json"), locale], sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _publish_request(deps: GatewayDependencies, report_id: str, order: ReportOrder, locale: str | None) -> CloudEvent:
    data = ReportRequested(
        report_id=report_id,
        period=order.period,
        ref_date=order.ref_date,
        notify=order.notify,
        layout=order.layout,
    )
    with event_scope(EventContext(correlationid=report_id, locale=locale)):
        # Derived from the report id: a retry that publishes again is deduplicated by every consumer.
        return deps.publisher.publish(data, event_id=derived_event_id(report_id, "requested"))


def _after_publishing(
    deps: GatewayDependencies, idempotency_key: str | None, request: IdempotentRequest, event: CloudEvent
) -> None:
    """Record what the broker confirmed; the request is queued, so a Redis hiccup here must not fail it."""
    try:
        if idempotency_key is not None:
            deps.idempotency.mark_published(idempotency_key, request)
        # Folding our own event at once lets a GET right after the 202 find the report.
        deps.statuses.apply(ReportRequested.model_validate(event.data), event)
    except REDIS_ERRORS as exc:
        log.warning("projection.deferred", error=str(exc), report_id=request.report_id)


def _inside(root: Path, file_name: str) -> Path | None:
    """The file of that name directly in root, or None: no name, link or dot-segment leads out of it."""
    name = PurePath(file_name).name
    if not name or name in (".", ".."):
        return None
    try:
        base = root.resolve()
        path = (base / name).resolve()
    except (OSError, ValueError):
        return None
    if path.parent != base or not path.is_file():
        return None
    return path


def _sse(step: ProgressStep, status: ReportStatus) -> bytes:
    payload: dict[str, Any] = {"report_id": status.report_id, **step.model_dump(mode="json")}
    if step.seq == status.last_seq and status.terminal:
        view = view_of(status)
        if status.state == "exported":
            payload.update(
                download_url=view.download_url, rows=status.rows, sha256=status.sha256, repositories=status.repositories
            )
        else:
            payload.update(stage=status.failed_stage, reason=status.failure_reason)
    return f"id: {step.seq}\nevent: progress\ndata: {json.dumps(payload)}\n\n".encode()


async def _progress_stream(deps: GatewayDependencies, report_id: str, after: int) -> AsyncIterator[bytes]:
    """Replays the steps after `after`, then follows: Redis pub/sub wakes it, the store is the truth."""
    sent = after
    yield b"retry: 3000\n\n"
    try:
        async with deps.feed.subscription(report_id) as changes:
            idle = 0.0
            while True:
                # Subscribed before reading, so no change can fall between the read and the wait.
                status = await deps.feed.get(report_id)
                if status is not None:
                    for step in status.progress:
                        if step.seq > sent:
                            yield _sse(step, status)
                            sent = step.seq
                    if status.terminal and sent >= status.last_seq:
                        return
                # The periodic re-read also covers a wake-up lost while Redis reconnected.
                while not await changes.changed(timeout=1.0):
                    idle += 1.0
                    if idle >= deps.keepalive_seconds:
                        idle = 0.0
                        yield b": keepalive\n\n"
                        break
    except REDIS_ERRORS as exc:
        # The client's EventSource reconnects with Last-Event-ID and resumes where it stopped.
        log.warning("progress.stream_interrupted", report_id=report_id, error=str(exc))
