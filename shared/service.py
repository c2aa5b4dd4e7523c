"""Start a pipeline service: logging, alerts, topology, publisher, and its consumers."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial

import redis
import structlog
from kombu.connection import Connection

from shared.alerts import AlertHandler
from shared.control import RedisCancellations, handle_report_cancel_requested
from shared.dedup import RedisProcessedEvents
from shared.logging import configure_logging
from shared.messaging import (
    MessageHandler,
    ProcessedEvents,
    Publisher,
    Route,
    ServiceConsumer,
    connect,
    declare_topology,
)
from shared.observability import ObservabilityServer, start_observability
from shared.outcomes import RedisOutcomeLedger
from shared.settings import CommonSettings
from shared.topology import PUBLISHES, Subscription, control_of
from shared.tracing import configure_tracing

log = structlog.get_logger("hotrepos.service")


@dataclass
class Runtime:
    """The adapters every service shares, built once at start."""

    service: str
    settings: CommonSettings
    connection: Connection
    publisher: Publisher
    redis: redis.Redis
    alerts: AlertHandler
    cancellations: RedisCancellations
    outcomes: RedisOutcomeLedger
    observability: ObservabilityServer | None = None

    def control_routes(self) -> dict[Subscription, dict[str, Route]]:
        """This replica's exclusive queue on hotrepos.control, handled like any other."""
        cancel = partial(
            handle_report_cancel_requested,
            cancellations=self.cancellations,
            outcomes=self.outcomes,
            may_fail_reports="report.failed" in PUBLISHES.get(self.service, ()),
        )
        return {control_of(self.service): {"report.cancel.requested": Route(cancel)}}


def start_runtime(service: str, settings: CommonSettings) -> Runtime:
    connection = connect(settings)

    def alert_publisher() -> Publisher:
        return Publisher(connect(settings), source=f"hotrepos/{service}", pool_size=1)

    alerts = AlertHandler(service, alert_publisher, interval_seconds=settings.alert_interval_seconds)
    configure_logging(service, settings.log_level, settings.log_dir, extra_handlers=[alerts])
    configure_tracing(service)
    redis_client = redis.Redis.from_url(settings.redis_url, socket_timeout=10, health_check_interval=30)
    return Runtime(
        service=service,
        settings=settings,
        connection=connection,
        publisher=Publisher(connection, source=f"hotrepos/{service}"),
        redis=redis_client,
        alerts=alerts,
        cancellations=RedisCancellations(redis_client),
        outcomes=RedisOutcomeLedger(redis_client),
        observability=start_observability(settings, connection),
    )


def declare_when_reachable(runtime: Runtime, subscriptions: tuple[Subscription, ...]) -> None:
    """The broker may still be starting: retry with backoff instead of dying."""
    delay = 0.5
    while True:
        try:
            with runtime.connection.clone() as connection:
                declare_topology(connection, subscriptions)
            return
        except runtime.connection.connection_errors as exc:
            log.warning("broker.unreachable", error=str(exc), retry_in=delay)
            time.sleep(delay)
            delay = min(delay * 2, 10)


def build_handlers(
    runtime: Runtime,
    routes: Mapping[Subscription, Mapping[str, Route]],
    *,
    processed: ProcessedEvents | None = None,
) -> list[MessageHandler]:
    """One MessageHandler per subscription, for a service that runs its ServiceConsumer itself."""
    if processed is None:
        processed = RedisProcessedEvents(runtime.redis)
    return [
        MessageHandler(
            runtime.service,
            subscription,
            subscription_routes,
            runtime.publisher,
            # A broadcast is meant for every replica: none may skip it as "already handled".
            None if subscription.exclusive else processed,
        )
        for subscription, subscription_routes in routes.items()
    ]


def run_consumers(
    runtime: Runtime,
    routes: Mapping[Subscription, Mapping[str, Route]],
    *,
    processed: ProcessedEvents | None = None,
    prefetch_count: int = 16,
    on_stop: Callable[[], None] | None = None,
) -> None:
    """Consume until SIGTERM/SIGINT; in-flight messages finish, unacked ones go back to their queue."""
    routes = {**routes, **runtime.control_routes()}
    declare_when_reachable(runtime, tuple(routes))
    handlers = build_handlers(runtime, routes, processed=processed)
    consumer = ServiceConsumer(runtime.connection, handlers, prefetch_count=prefetch_count)
    consumer.stop_on_signals()
    log.info("service.started", queues=[s.queue_name for s in routes])
    try:
        consumer.run()
    finally:
        if on_stop is not None:
            on_stop()
        runtime.alerts.flush()
        runtime.publisher.close()
        logging.shutdown()
        log.info("service.stopped")
