"""Composition root of the gateway: `python -m services.gateway`, the web page and HTTP API."""

from __future__ import annotations

import datetime as dt
import os
import signal
import threading
from collections.abc import Mapping
from functools import partial
from pathlib import Path

import redis
import redis.asyncio
import structlog
import uvicorn
from kombu.exceptions import LimitExceeded, OperationalError
from pydantic import Field

from services.gateway.app import GatewayDependencies, create_app
from services.gateway.handlers import handle_report_event
from services.gateway.idempotency import RedisIdempotencyKeys
from services.gateway.projection import ProgressFeed, RedisReportStatuses
from shared.events import EVENT_TYPES, utc_today
from shared.messaging import Publisher, Route, ServiceConsumer
from shared.service import Runtime, build_handlers, declare_when_reachable, start_runtime
from shared.settings import CommonSettings, load_settings
from shared.topology import GATEWAY_PROGRESS

log = structlog.get_logger("hotrepos.gateway")

# An HTTP client is waiting: a broker that does not answer at once gives a 503, not a long stall.
FAIL_FAST_RETRY_POLICY = {"max_retries": 1, "interval_start": 0.1, "interval_step": 0.2, "interval_max": 0.5}
PROBE_TIMEOUT_SECONDS = 2


class GatewaySettings(CommonSettings):
    gateway_host: str = "127.0.0.1"
    gateway_port: int = Field(default=8000, ge=1, le=65535)
    reports_dir: Path = Path("reports")
    gateway_debug_faults: bool = Field(default=False, description="Serve /api/_debug/fail (tests only)")
    today: dt.date | None = Field(default=None, description="Pin 'today' (demos and tests only)")


class ProgressConsumer:
    """Feeds the projection from the gateway's queue, in a thread beside the HTTP server."""

    def __init__(self, runtime: Runtime, statuses: RedisReportStatuses) -> None:
        handler = partial(handle_report_event, statuses=statuses)
        # Every report event type: one the fold ignores is acked, not dead-lettered as unknown.
        routes = {name: Route(handler) for name in EVENT_TYPES if name.startswith("report.")}
        self._runtime = runtime
        handlers = build_handlers(runtime, {GATEWAY_PROGRESS: routes, **runtime.control_routes()})
        self._consumer = ServiceConsumer(runtime.connection, handlers)
        self._declared = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gateway-consumer", daemon=True)

    def _run(self) -> None:
        try:
            declare_when_reachable(self._runtime, (GATEWAY_PROGRESS, *self._runtime.control_routes()))
            self._declared.set()
            self._consumer.run()
        except Exception:
            # A gateway whose projection froze must not go on answering: stop, and be restarted.
            log.exception("consumer.died")
            os.kill(os.getpid(), signal.SIGTERM)

    def start(self) -> None:
        self._thread.start()

    @property
    def feeding(self) -> bool:
        """The queue exists (events wait in it from then on) and the thread that drains it lives."""
        return self._declared.is_set() and self._thread.is_alive()

    def stop(self, timeout: float = 10) -> None:
        self._consumer.should_stop = True
        self._thread.join(timeout)


def main() -> None:
    settings = load_settings(GatewaySettings)
    runtime = start_runtime("gateway", settings)
    statuses = RedisReportStatuses(runtime.redis)
    consumer = ProgressConsumer(runtime, statuses)
    consumer.start()

    request_connection = runtime.connection.clone(
        connect_timeout=PROBE_TIMEOUT_SECONDS,
        transport_options={**(runtime.connection.transport_options or {}), "max_retries": 1},
    )
    publisher = Publisher(request_connection, source="hotrepos/gateway", retry_policy=FAIL_FAST_RETRY_POLICY)
    probe_redis = redis.Redis.from_url(
        settings.redis_url, socket_timeout=PROBE_TIMEOUT_SECONDS, socket_connect_timeout=PROBE_TIMEOUT_SECONDS
    )

    def readiness() -> Mapping[str, str]:
        checks: dict[str, str] = {}
        try:
            with runtime.connection.clone(connect_timeout=PROBE_TIMEOUT_SECONDS) as probe:
                probe.connect()
            checks["broker"] = "ok"
        except Exception as exc:
            checks["broker"] = f"unreachable: {exc}"
        try:
            probe_redis.ping()
            checks["redis"] = "ok"
        except Exception as exc:
            checks["redis"] = f"unreachable: {exc}"
        checks["projection"] = "ok" if consumer.feeding else "not consuming yet"
        return checks

    pinned_today = settings.today
    app = create_app(
        GatewayDependencies(
            publisher=publisher,
            broker_errors=(OperationalError, LimitExceeded, *request_connection.connection_errors),
            statuses=statuses,
            feed=ProgressFeed(redis.asyncio.Redis.from_url(settings.redis_url, socket_connect_timeout=5)),
            idempotency=RedisIdempotencyKeys(runtime.redis),
            reports_dir=settings.reports_dir,
            readiness=readiness,
            today=(lambda: pinned_today) if pinned_today else utc_today,
            debug_faults=settings.gateway_debug_faults,
        )
    )
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=settings.gateway_host,
            port=settings.gateway_port,
            log_config=None,  # our JSON logging, so uvicorn's own errors become alerts too
            timeout_graceful_shutdown=5,  # open event streams must not hold a shutdown forever
            server_header=False,
        )
    )
    try:
        server.run()
    finally:
        consumer.stop()
        runtime.alerts.flush()
        publisher.close()
        runtime.publisher.close()


if __name__ == "__main__":
    main()
