"""The one composition root every service starts from: bootstrap(), then bind routes and consume.

    service = bootstrap("aggregator", settings)
    service.run({AGGREGATOR_PAGE_FETCHED: {"report.page.fetched": Route(handler, ...)}})

bootstrap() builds the adapters every service shares (logging and alerts, tracing, the broker
connection and publisher, Redis, the outcome publisher, cancellations, dedup, the metrics port).
A service's __main__ builds its own adapters from them and binds its handlers into routes. Nothing
else reaches into a Service: handlers get exactly the dependencies their routes give them.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial

import redis
import redis.exceptions
import structlog
from kombu.connection import Connection

from shared.alerts import AlertHandler
from shared.amqp import connect, declare_when_reachable
from shared.consumer import QueueConsumer, ServiceConsumer
from shared.control import RedisCancellations, handle_report_cancel_requested
from shared.dedup import RedisProcessedEvents
from shared.handling import Cancellations
from shared.logging import configure_logging
from shared.observability import ObservabilityServer, start_observability
from shared.outcomes import OutcomePublisher, RedisOutcomeLedger
from shared.pipeline import DeliveryPipeline, Route
from shared.publisher import Publisher
from shared.settings import CommonSettings
from shared.topology import PUBLISHES, Subscription, control_of
from shared.tracing import configure_tracing

log = structlog.get_logger("hotrepos.service")

RouteTable = Mapping[Subscription, Mapping[str, Route]]

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    ConnectionError,
    TimeoutError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
)


@dataclass
class Service:
    """A started service: the adapters bootstrap() built, and the ways to consume its queues."""

    name: str
    settings: CommonSettings
    connection: Connection
    publisher: Publisher
    redis: redis.Redis
    outcomes: OutcomePublisher
    cancellations: RedisCancellations
    processed: RedisProcessedEvents
    alerts: AlertHandler
    observability: ObservabilityServer | None = None

    def pipeline(self, queue: str, routes: Mapping[str, Route], *, broadcast: bool = False) -> DeliveryPipeline:
        """The delivery pipeline of one queue, with the adapters every service shares."""
        return DeliveryPipeline(
            service=self.name,
            queue=queue,
            routes=routes,
            publisher=self.publisher,
            outcomes=self.outcomes,
            cancellations=self.cancellations,
            # A broadcast is meant for every replica: none may skip it as "already handled".
            processed=None if broadcast else self.processed,
            transient_errors=TRANSIENT_ERRORS,
            broadcast=broadcast,
        )

    def queue_consumers(self, routes: RouteTable, *, cancellations: Cancellations | None = None) -> list[QueueConsumer]:
        """Each queue with its pipeline, the replica's own control queue included; declared on the broker.

        A service whose cancel does more than remember (the fetcher takes the report out of the line
        for GitHub's budget) gives its own cancellations for the control queue.
        """
        routes = {**routes, **self._control_routes(cancellations or self.cancellations)}
        declare_when_reachable(self.connection, routes)
        return [
            QueueConsumer(
                subscription,
                self.pipeline(subscription.queue_name, queue_routes, broadcast=subscription.exclusive),
                self.publisher,
            )
            for subscription, queue_routes in routes.items()
        ]

    def run(self, routes: RouteTable, *, prefetch_count: int = 16) -> None:
        """Consume until SIGTERM/SIGINT; in-flight messages finish, unacked ones go back to their queue."""
        consumer = ServiceConsumer(self.connection, self.queue_consumers(routes), prefetch_count=prefetch_count)
        consumer.stop_on_signals()
        log.info("service.started", queues=[q.subscription.queue_name for q in consumer.queues])
        try:
            consumer.run()
        finally:
            self.close()

    def run_in_background(self, routes: RouteTable) -> BackgroundConsumer:
        """Consume in a thread beside another main loop (the gateway's HTTP server)."""
        return BackgroundConsumer(self, routes).start()

    def close(self) -> None:
        self.alerts.flush()
        self.publisher.close()
        logging.shutdown()
        log.info("service.stopped")

    def _control_routes(self, cancellations: Cancellations) -> dict[Subscription, dict[str, Route]]:
        """Each replica's exclusive queue on hotrepos.control, handled like any other."""
        cancel = partial(
            handle_report_cancel_requested,
            cancellations=cancellations,
            may_fail_reports="report.failed" in PUBLISHES.get(self.name, ()),
        )
        return {control_of(self.name): {"report.cancel.requested": Route(cancel)}}


class BackgroundConsumer:
    """A service's consumer on a daemon thread; if it dies, the process stops to be restarted."""

    def __init__(self, service: Service, routes: RouteTable) -> None:
        self._service = service
        self._routes = routes
        self._consumer: ServiceConsumer | None = None
        self._declared = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"{service.name}-consumer", daemon=True)

    def _run(self) -> None:
        try:
            queues = self._service.queue_consumers(self._routes)
            self._consumer = ServiceConsumer(self._service.connection, queues)
            self._declared.set()
            self._consumer.run()
        except Exception:
            # A service whose consumer froze must not go on answering: stop, and be restarted.
            log.exception("consumer.died")
            os.kill(os.getpid(), signal.SIGTERM)

    def start(self) -> BackgroundConsumer:
        self._thread.start()
        return self

    @property
    def consuming(self) -> bool:
        """The queues exist (events wait in them from then on) and the thread that drains them lives."""
        return self._declared.is_set() and self._thread.is_alive()

    def stop(self, timeout: float = 10) -> None:
        if self._consumer is not None:
            self._consumer.should_stop = True
        self._thread.join(timeout)


def bootstrap(name: str, settings: CommonSettings) -> Service:
    """Logging and alerts first (so start-up errors reach the admins), then the shared adapters."""
    connection = connect(settings)

    def alert_publisher() -> Publisher:
        return Publisher(connect(settings), source=f"hotrepos/{name}", pool_size=1)

    alerts = AlertHandler(name, alert_publisher, interval_seconds=settings.alert_interval_seconds)
    configure_logging(name, settings.log_level, settings.log_dir, extra_handlers=[alerts])
    configure_tracing(name)
    redis_client = redis.Redis.from_url(settings.redis_url, socket_timeout=10, health_check_interval=30)
    publisher = Publisher(connection, source=f"hotrepos/{name}")
    return Service(
        name=name,
        settings=settings,
        connection=connection,
        publisher=publisher,
        redis=redis_client,
        outcomes=OutcomePublisher(RedisOutcomeLedger(redis_client), publisher),
        cancellations=RedisCancellations(redis_client),
        processed=RedisProcessedEvents(redis_client),
        alerts=alerts,
        observability=start_observability(settings, connection),
    )
