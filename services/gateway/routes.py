"""The gateway's HTTP API and page: one route per thing a client does, over the adapters it is given."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path, PurePath
from typing import Annotated, Any

import anyio
import fastapi_offline
import redis.exceptions
import structlog
from fastapi import FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import TypeAdapter, ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.gateway.access import OPEN, Authentication, Caller, Identity, StreamTokens, may_see
from services.gateway.feed import ProgressFeed
from services.gateway.hardening import (
    DEFAULT_MAX_BODY_BYTES,
    BodyLimit,
    RefusalLoggingCors,
    SecurityHeaders,
    log_refusal,
)
from services.gateway.idempotency import IdempotencyKeys, RecentOrders
from services.gateway.orders import FutureDate, KeyReused, Ordering, QuotaExceeded, place_order
from services.gateway.quota import RequestQuota, Unlimited
from services.gateway.sse import progress_stream
from services.gateway.store import ReportReader, ReportStatuses
from services.gateway.views import (
    ReportAccepted,
    ReportOrder,
    ReportPage,
    ReportStatusView,
    accepted,
    locale_from_accept_language,
    status_url,
    view_of,
)
from services.gateway.webhooks import WebhookAdmin, webhook_routes
from shared.context import EventContext, event_scope
from shared.events import ReportCancelRequested, ReportId
from shared.handling import EventPublisher, ProcessedEvents
from shared.progress import ReportStatus

log = structlog.get_logger("hotrepos.gateway")

STATIC_DIR = Path(__file__).parent / "static"
# Swagger UI's own files, from a locked PyPI package: /docs needs no CDN, so it works offline.
SWAGGER_UI_DIR = Path(fastapi_offline.__file__).parent / "static"
RETRY_AFTER_SECONDS = 5
REDIS_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
_report_ids: TypeAdapter[str] = TypeAdapter(ReportId)


@dataclass(frozen=True)
class GatewayDependencies:
    """Everything the app talks to; the composition root builds them, tests may build others."""

    publisher: EventPublisher
    broker_errors: tuple[type[BaseException], ...]
    statuses: ReportStatuses
    reader: ReportReader
    feed: ProgressFeed
    idempotency: IdempotencyKeys
    processed: ProcessedEvents
    reports_dir: Path
    readiness: Callable[[], Mapping[str, str]]
    today: Callable[[], dt.date]
    webhooks: WebhookAdmin
    recent_orders: RecentOrders
    authentication: Authentication = OPEN
    quota: RequestQuota = field(default_factory=Unlimited)
    debug_faults: bool = False
    keepalive_seconds: float = 15.0
    cors_origins: tuple[str, ...] = ()  # validated origins (hardening.cors_origin); empty: no CORS at all
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES

    def ordering(self) -> Ordering:
        return Ordering(
            publisher=self.publisher,
            statuses=self.statuses,
            idempotency=self.idempotency,
            processed=self.processed,
            today=self.today,
            recent_orders=self.recent_orders,
            quota=self.quota,
            store_errors=REDIS_ERRORS,
        )


class ServiceUnavailable(Exception):
    """A dependency (broker, Redis) does not answer: the client should retry later."""


def _unavailable(reason: str) -> JSONResponse:
    return JSONResponse(
        {"detail": f"service unavailable: {reason}; nothing was done, retry later"},
        status_code=503,
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def _invalid(where: tuple[str, str], message: str, value: object) -> RequestValidationError:
    """A 422 in FastAPI's own shape, for what only the route can check."""
    return RequestValidationError(
        [{"type": "value_error", "loc": where, "msg": f"Value error, {message}", "input": value}]
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


class RevalidatedStaticFiles(StaticFiles):
    """Static files a browser asks about again each time (a 304 while unchanged): an upgrade is seen at once."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers["Cache-Control"] = "no-cache"
        return response


def create_app(deps: GatewayDependencies) -> FastAPI:
    """The FastAPI application: the API under /api, the page at /, its OpenAPI docs at /docs."""

    stream_tokens = StreamTokens(deps.authentication)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await stream_tokens.close()
        await deps.feed.close()

    app = FastAPI(
        title="hotrepos gateway",
        description="Ask for a report of GitHub's hottest new repositories, follow it, download it.",
        version="1",
        lifespan=lifespan,
        # FastAPI's own pages load Swagger UI and Redoc from a CDN, with inline scripts the CSP forbids:
        # /docs is served below from packaged files; Redoc, which injects inline styles, is left out.
        docs_url=None,
        redoc_url=None,
        swagger_ui_oauth2_redirect_url=None,
        # Our spans come from shared.tracing, which sets no global OpenTelemetry provider: FastAPI's own
        # telemetry would look for one in the environment on every request, and never find it.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    # The last added runs first: the headers go on every answer, a 413 and a 500 included, and a listed
    # origin's page can read a 413 too, since it passes through CORS.
    app.add_middleware(BodyLimit, max_bytes=deps.max_body_bytes)
    app.add_middleware(UnhandledErrors)
    if deps.cors_origins:
        app.add_middleware(RefusalLoggingCors, origins=deps.cors_origins)
    app.add_middleware(SecurityHeaders)
    app.mount("/static", RevalidatedStaticFiles(directory=STATIC_DIR), name="static")
    app.mount("/docs/assets", RevalidatedStaticFiles(directory=SWAGGER_UI_DIR), name="swagger-ui")
    app.state.authentication = deps.authentication  # read by access.current_identity
    app.include_router(webhook_routes(deps.webhooks))
    ordering = deps.ordering()

    @app.exception_handler(ServiceUnavailable)
    async def service_unavailable(_: Request, exc: ServiceUnavailable) -> JSONResponse:
        return _unavailable(str(exc))

    for redis_error in REDIS_ERRORS:

        @app.exception_handler(redis_error)
        async def redis_unavailable(_: Request, exc: Exception) -> JSONResponse:
            log.warning("redis.unreachable", error=str(exc))
            return _unavailable("Redis does not answer")

    @app.exception_handler(QuotaExceeded)
    async def quota_exceeded(request: Request, exc: QuotaExceeded) -> JSONResponse:
        log_refusal(request.scope, 429, "quota", identity=exc.identity, retry_after=exc.retry_after)
        return JSONResponse({"detail": str(exc)}, status_code=429, headers={"Retry-After": str(int(exc.retry_after))})

    async def visible_status(
        request: Request, report_id: str, identity: Identity
    ) -> tuple[ReportStatus | None, str | None]:
        """The report and its owner, if the caller may see it: to anyone else it does not exist, so ids
        leak nothing."""
        try:
            _report_ids.validate_python(report_id)
        except ValidationError:
            return None, None  # an id no report can have: as unknown as any other
        status, owner = await deps.reader.status_and_owner(report_id)
        if status is None or identity.admin or may_see(identity, status, owner):
            return status, owner
        log_refusal(request.scope, 404, "another identity's report", identity=identity.name, report_id=report_id)
        return None, None

    def not_found(report_id: str, what: str = "report") -> JSONResponse:
        return JSONResponse({"detail": f"no {what} for report {report_id!r}"}, status_code=404)

    @app.post(
        "/api/reports",
        status_code=202,
        response_model=ReportAccepted,
        tags=["reports"],
        responses={
            422: {"description": "A field is invalid"},
            429: {"description": "Over GATEWAY_REQUESTS_PER_HOUR: retry after Retry-After seconds"},
            503: {"description": "Retry later"},
        },
    )
    def request_report(
        order: ReportOrder,
        identity: Caller,
        idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", min_length=1, max_length=255)] = None,
        accept_language: Annotated[str | None, Header(alias="Accept-Language")] = None,
    ) -> JSONResponse:
        """Queue a report: publishes report.requested and answers at once with where to follow it."""
        locale = order.locale or locale_from_accept_language(accept_language)
        try:
            report_id = place_order(ordering, order, locale, idempotency_key, identity)
        except FutureDate as exc:
            raise _invalid(("body", "ref_date"), str(exc), order.ref_date and order.ref_date.isoformat()) from None
        except KeyReused as exc:
            raise _invalid(("header", "Idempotency-Key"), str(exc), idempotency_key) from None
        except deps.broker_errors as exc:
            log.warning("broker.unreachable", error=str(exc))
            raise ServiceUnavailable("the broker does not answer") from None
        answer = accepted(report_id)
        return JSONResponse(answer.model_dump(), status_code=202, headers={"Location": answer.status_url})

    @app.get("/api/reports", response_model=ReportPage, tags=["reports"])
    async def list_reports(
        identity: Caller,
        offset: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
    ) -> ReportPage:
        """The report history, newest first: one's own reports and the scheduled ones (an admin's: all)."""
        visible_to = None if identity.admin else identity.name
        statuses, total = await deps.reader.recent(offset=offset, limit=limit, visible_to=visible_to)
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
    async def report_status(request: Request, report_id: str, identity: Caller) -> ReportStatusView | JSONResponse:
        """Where a report stands, built from its events alone."""
        status, _ = await visible_status(request, report_id, identity)
        return view_of(status) if status else not_found(report_id)

    @app.delete(
        "/api/reports/{report_id}",
        status_code=202,
        tags=["reports"],
        responses={
            403: {"description": "A scheduled report: only an admin may cancel it"},
            404: {"description": "Unknown report"},
            409: {"description": "Already finished"},
            503: {"description": "Retry later"},
        },
    )
    async def cancel_report(request: Request, report_id: str, identity: Caller) -> JSONResponse:
        """Cancel a report: broadcast on hotrepos.control, every replica of every service drops its work."""
        status, owner = await visible_status(request, report_id, identity)
        if status is None:
            return not_found(report_id)
        if not identity.admin and owner != identity.name:
            # A scheduled report is everyone's to see, and so no one's but an admin's to cancel.
            log_refusal(request.scope, 403, "a scheduled report", identity=identity.name, report_id=report_id)
            return JSONResponse({"detail": "a scheduled report: only an admin may cancel it"}, status_code=403)
        if status.terminal:
            return JSONResponse({"detail": f"report {report_id!r} is already {status.state}"}, status_code=409)
        command = ReportCancelRequested(report_id=report_id, reason="cancelled by request")

        def publish() -> None:
            with event_scope(EventContext(correlationid=report_id)):
                deps.publisher.publish(command)

        try:
            # The publisher blocks until the broker confirms: in a thread, not on the event loop.
            await anyio.to_thread.run_sync(publish)
        except deps.broker_errors as exc:
            log.warning("broker.unreachable", error=str(exc), report_id=report_id)
            raise ServiceUnavailable("the broker does not answer") from None
        log.info("report.cancel_requested", report_id=report_id, identity=identity.name)
        return JSONResponse({"report_id": report_id, "status_url": status_url(report_id)}, status_code=202)

    @app.get(
        "/api/reports/{report_id}/download",
        tags=["reports"],
        responses={200: {"content": {"text/csv": {}}}, 404: {"description": "No such file"}},
    )
    async def download_report(request: Request, report_id: str, identity: Caller) -> Response:
        """The report's CSV file, as an attachment."""
        status, _ = await visible_status(request, report_id, identity)
        if status is None or status.state != "exported" or not status.file_name:
            return not_found(report_id, "file")
        path = await anyio.to_thread.run_sync(file_inside, deps.reports_dir, status.file_name)
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
        request: Request,
        report_id: str,
        identity: Caller,
        last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    ) -> Response:
        """Server-Sent Events of the report's progress, from its first step (or Last-Event-ID) on."""
        status, _ = await visible_status(request, report_id, identity)
        if status is None:
            return not_found(report_id)
        after = int(last_event_id) if last_event_id and last_event_id.isdigit() else 0
        if status.terminal and after >= status.last_seq:
            return Response(status_code=204)  # tells EventSource not to reconnect
        return StreamingResponse(
            progress_stream(
                deps.feed,
                report_id,
                after,
                keepalive_seconds=deps.keepalive_seconds,
                interrupted_by=REDIS_ERRORS,
                token=partial(stream_tokens.watching, identity),
            ),
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

    @app.get("/docs", include_in_schema=False)
    def api_docs() -> FileResponse:
        return FileResponse(STATIC_DIR / "docs.html", media_type="text/html; charset=utf-8")

    if deps.debug_faults:

        @app.get("/api/_debug/fail", tags=["operations"])
        def fail_on_purpose() -> None:
            """Crashes on purpose, to check that a 500 reaches the admins (GATEWAY_DEBUG_FAULTS only)."""
            raise RuntimeError("forced failure from /api/_debug/fail")

    return app


def file_inside(root: Path, file_name: str) -> Path | None:
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
