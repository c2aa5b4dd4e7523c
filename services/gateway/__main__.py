"""Composition root of the gateway: `python -m services.gateway`, the web page and HTTP API."""

from __future__ import annotations

import datetime as dt
import gc
import sys
from collections.abc import Mapping
from functools import partial
from pathlib import Path

import redis
import redis.asyncio
import uvicorn
from pydantic import Field, ValidationInfo, field_validator

from services.gateway.access import Authentication, AuthMode, TrustedProxies, none_only_on_loopback
from services.gateway.feed import RedisProgressFeed
from services.gateway.handlers import (
    handle_report_aggregated,
    handle_report_exported,
    handle_report_failed,
    handle_report_page_fetched,
    handle_report_queued,
    handle_report_requested,
)
from services.gateway.hardening import DEFAULT_MAX_BODY_BYTES, CorsOrigins
from services.gateway.idempotency import RedisIdempotencyKeys, RedisRecentOrders
from services.gateway.quota import RedisRequestQuota, RequestQuota, Unlimited
from services.gateway.routes import GatewayDependencies, create_app
from services.gateway.store import RedisReportReader, RedisReportStatuses
from services.gateway.webhooks import WebhookAdmin
from shared.api_tokens import RedisTokenLookup
from shared.bootstrap import BackgroundConsumer, Service, bootstrap
from shared.events import utc_today
from shared.pipeline import PublishNotTaken, Route
from shared.publisher import Publisher
from shared.settings import CommonSettings, load_settings
from shared.topology import GATEWAY_PROGRESS
from shared.webhooks import AllowedHosts, RedisDeliveryRecords, RedisWebhookSubscriptions, UrlGuard

# An HTTP client is waiting: a broker that does not answer at once gives a 503, not a long stall.
FAIL_FAST_RETRY_POLICY = {"max_retries": 1, "interval_start": 0.1, "interval_step": 0.2, "interval_max": 0.5}
PROBE_TIMEOUT_SECONDS = 2
# The API's reads and the streams' one subscription share these; past them a read waits its turn
# (up to REDIS_WAIT_SECONDS) rather than failing, so a burst of requests queues instead of erroring.
REDIS_CONNECTIONS = 64
GC_YOUNG_THRESHOLD = 5_000
GIL_SWITCH_SECONDS = 0.001
REDIS_WAIT_SECONDS = 5


class GatewaySettings(CommonSettings):
    gateway_host: str = "127.0.0.1"
    gateway_port: int = Field(default=8000, ge=1, le=65535)
    gateway_auth: AuthMode = Field(
        default="token", description="token (API tokens), proxy (an authenticating proxy), none (demo, loopback only)"
    )
    gateway_trusted_proxies: TrustedProxies = Field(
        default_factory=list, description="Addresses or networks whose X-Forwarded-User proxy mode believes"
    )
    gateway_requests_per_hour: int = Field(
        default=60, ge=0, description="Report requests per identity per hour, on all replicas together (0: no limit)"
    )
    reports_dir: Path = Path("reports")
    gateway_debug_faults: bool = Field(default=False, description="Serve /api/_debug/fail (tests only)")
    today: dt.date | None = Field(default=None, description="Pin 'today' (demos and tests only)")
    webhook_allowed_hosts: AllowedHosts = Field(
        default_factory=list, description="Hosts a webhook may reach over plain http and inside the network"
    )
    gateway_cors_origins: CorsOrigins = Field(
        default_factory=list, description="Origins whose pages may call the API (empty: none, CORS off)"
    )
    gateway_access_log: bool = Field(
        default=False, description="A log line per request (refusals and errors are logged either way)"
    )
    gateway_max_body_bytes: int = Field(
        default=DEFAULT_MAX_BODY_BYTES, ge=1024, description="A request body over this gets a 413"
    )

    # Checked as the settings are read, so before the gateway connects to anything.
    @field_validator("gateway_auth")
    @classmethod
    def _none_on_loopback_only(cls, mode: AuthMode, info: ValidationInfo) -> AuthMode:
        return none_only_on_loopback(mode, str(info.data.get("gateway_host", "")))


def consume_progress(service: Service, statuses: RedisReportStatuses) -> BackgroundConsumer:
    """Every report event on the gateway's queue folds into the statuses the API reads."""
    return service.run_in_background(
        {
            GATEWAY_PROGRESS: {
                "report.requested": Route(partial(handle_report_requested, statuses=statuses)),
                "report.queued": Route(partial(handle_report_queued, statuses=statuses)),
                "report.page.fetched": Route(partial(handle_report_page_fetched, statuses=statuses)),
                "report.aggregated": Route(partial(handle_report_aggregated, statuses=statuses)),
                "report.exported": Route(partial(handle_report_exported, statuses=statuses)),
                "report.failed": Route(partial(handle_report_failed, statuses=statuses)),
            }
        }
    )


def main() -> None:
    settings = load_settings(GatewaySettings)
    service = bootstrap("gateway", settings)
    statuses = RedisReportStatuses(service.redis)
    consumer = consume_progress(service, statuses)

    request_connection = service.connection.clone(
        connect_timeout=PROBE_TIMEOUT_SECONDS,
        transport_options={**(service.connection.transport_options or {}), "max_retries": 1},
    )
    publisher = Publisher(request_connection, source="hotrepos/gateway", retry_policy=FAIL_FAST_RETRY_POLICY)
    probe_redis = redis.Redis.from_url(
        settings.redis_url, socket_timeout=PROBE_TIMEOUT_SECONDS, socket_connect_timeout=PROBE_TIMEOUT_SECONDS
    )

    def readiness() -> Mapping[str, str]:
        checks: dict[str, str] = {}
        try:
            with service.connection.clone(connect_timeout=PROBE_TIMEOUT_SECONDS) as probe:
                probe.connect()
            checks["broker"] = "ok"
        except Exception as exc:
            checks["broker"] = f"unreachable: {exc}"
        try:
            probe_redis.ping()
            checks["redis"] = "ok"
        except Exception as exc:
            checks["redis"] = f"unreachable: {exc}"
        checks["projection"] = "ok" if consumer.consuming else "not consuming yet"
        return checks

    async_redis = redis.asyncio.Redis(
        connection_pool=redis.asyncio.BlockingConnectionPool.from_url(
            settings.redis_url,
            max_connections=REDIS_CONNECTIONS,
            timeout=REDIS_WAIT_SECONDS,
            socket_connect_timeout=PROBE_TIMEOUT_SECONDS,
            # A read stuck on a dead connection ends, and so does the request or check waiting on it.
            socket_timeout=REDIS_WAIT_SECONDS,
            socket_keepalive=True,
        )
    )
    pinned_today = settings.today
    quota: RequestQuota = (
        RedisRequestQuota(service.redis, settings.gateway_requests_per_hour)
        if settings.gateway_requests_per_hour
        else Unlimited()
    )
    app = create_app(
        GatewayDependencies(
            publisher=publisher,
            broker_errors=(PublishNotTaken, *request_connection.connection_errors),
            statuses=statuses,
            reader=RedisReportReader(async_redis),
            feed=RedisProgressFeed(async_redis),
            idempotency=RedisIdempotencyKeys(service.redis),
            processed=service.processed,
            reports_dir=settings.reports_dir,
            readiness=readiness,
            today=(lambda: pinned_today) if pinned_today else utc_today,
            webhooks=WebhookAdmin(
                subscriptions=RedisWebhookSubscriptions(service.redis),
                deliveries=RedisDeliveryRecords(service.redis),
                guard=UrlGuard.allowing(settings.webhook_allowed_hosts),
            ),
            recent_orders=RedisRecentOrders(service.redis),
            authentication=Authentication(
                mode=settings.gateway_auth,
                tokens=RedisTokenLookup(async_redis),
                trusted_proxies=tuple(settings.gateway_trusted_proxies),
            ),
            quota=quota,
            debug_faults=settings.gateway_debug_faults,
            cors_origins=tuple(settings.gateway_cors_origins),
            max_body_bytes=settings.gateway_max_body_bytes,
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
            access_log=settings.gateway_access_log,
        )
    )
    # Everything built so far (modules, the app, its routes and models) lives as long as the process:
    # out of the collector's sight, so that a full collection walks what requests and streams made,
    # not the whole import graph. An open stream holds about 240 objects the collector tracks; with a
    # thousand open, collections every few seconds paused the loop 0.1 to 0.3 s. Rarer young
    # collections let most of a request's objects go by reference counting before any collection
    # sees them, so fewer reach the old generations: one full collection in a 30 s run of that load.
    # The projection's consumer is a thread beside the event loop: at each Redis round trip it gives
    # the GIL up and waits for it back, 5 ms at most by default. With the loop busy (a thousand
    # streams), an event then took tens of ms, and report.exported reached the streams up to 1.6 s
    # late at one replica; at 1 ms, 0.45 s at most, in the same load.
    sys.setswitchinterval(GIL_SWITCH_SECONDS)
    gc.collect()  # what start-up left behind is collected now, not frozen with the rest
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 50)
    try:
        server.run()
    finally:
        consumer.stop()
        publisher.close()
        service.close()


if __name__ == "__main__":
    main()
