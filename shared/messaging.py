"""The one AMQP layer: CloudEvents in and out, and the wrapper that owns ack, retry and dead-letter."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import signal
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import redis.exceptions
import structlog
from kombu.connection import Connection
from kombu.entity import Exchange
from kombu.message import Message
from kombu.messaging import Consumer as KombuConsumer
from kombu.mixins import ConsumerMixin
from kombu.pools import ProducerPool
from pydantic import ValidationError

from shared import metrics, tracing
from shared.context import EventContext, current_context, event_scope
from shared.events import (
    CONTENT_TYPE,
    EVENT_TYPES,
    CloudEvent,
    EventData,
    ReportFailed,
    event_type_of,
    new_event_id,
    request_report_id,
)
from shared.logging import log_file_scope
from shared.settings import CommonSettings
from shared.topology import (
    DLX,
    EVENTS,
    EXCHANGES,
    ORIGINAL_EXCHANGE_HEADER,
    ORIGINAL_ROUTING_KEY_HEADER,
    REASON_HEADER,
    RETRIES_HEADER,
    RETRY,
    Subscription,
    exchange_of,
)

log = structlog.get_logger("hotrepos.messaging")

MAX_BODY_BYTES = 4 * 1024 * 1024
CONFIRM_TIMEOUT_SECONDS = 15
ACCESS_REFUSED = 403
DEFAULT_EXCHANGE_NAME = "amq.default"
PUBLISH_RETRY_POLICY = {"max_retries": 20, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 5}


def connect(settings: CommonSettings, *, heartbeat: int = 30) -> Connection:
    """A broker connection with publisher confirms, heartbeats and, for amqps://, TLS from settings."""
    ssl_options: dict[str, Any] | bool = False
    if settings.amqp_url.startswith("amqps://"):
        context = ssl.create_default_context(cafile=str(settings.amqp_ca_file) if settings.amqp_ca_file else None)
        if settings.amqp_cert_file:
            context.load_cert_chain(
                str(settings.amqp_cert_file),
                str(settings.amqp_key_file) if settings.amqp_key_file else None,
            )
        ssl_options = {"context": context}
    return Connection(
        settings.amqp_url,
        heartbeat=heartbeat,
        ssl=ssl_options,
        transport_options={"confirm_publish": True, "client_properties": {"product": "hotrepos"}},
        connect_timeout=10,
    )


def declare_topology(connection: Connection, subscriptions: Iterable[Subscription]) -> None:
    """Declare every exchange and the given subscriptions' queues; declaring is idempotent."""
    channel = connection.default_channel
    for exchange in EXCHANGES:
        exchange(channel).declare()
    for subscription in subscriptions:
        for queue in subscription.all_queues():
            queue(channel).declare()


@dataclass(frozen=True)
class Outgoing:
    """An event a handler asks to publish; a derived event_id makes its republication dedupable."""

    data: EventData
    event_id: str | None = None
    exchange: Exchange | None = None
    correlationid: str | None = None


HandlerResult = Iterable[EventData | Outgoing] | None


def build_event(
    data: EventData, *, source: str, event_id: str | None = None, context: EventContext | None = None
) -> CloudEvent:
    context = context or current_context()
    return CloudEvent(
        specversion="1.0",
        id=event_id or new_event_id(),
        type=event_type_of(data),
        source=source,
        time=dt.datetime.now(dt.UTC),
        datacontenttype="application/json",
        data=data.model_dump(mode="json"),
        correlationid=context.correlationid,
        locale=context.locale,
        traceparent=context.traceparent,
    )


def encode_event(event: CloudEvent) -> bytes:
    return event.model_dump_json(exclude_none=True).encode()


class Publisher:
    """Publishes CloudEvents, persistent and confirmed, through a pool of producers (thread-safe)."""

    def __init__(
        self,
        connection: Connection,
        source: str,
        *,
        pool_size: int = 8,
        retry_policy: Mapping[str, Any] | None = None,
    ) -> None:
        self.source = source
        self._connection = connection
        self._retry_policy = dict(retry_policy or PUBLISH_RETRY_POLICY)
        self._connections = connection.clone().Pool(limit=pool_size)
        self._producers = ProducerPool(self._connections, limit=pool_size)

    def publish(
        self,
        data: EventData,
        *,
        event_id: str | None = None,
        exchange: Exchange | None = None,
        correlationid: str | None = None,
    ) -> CloudEvent:
        event_type = event_type_of(data)
        exchange = exchange or exchange_of(event_type)
        with tracing.publish_span(event_type, exchange.name) as span:
            # Inside the span, so that the event carries it as its traceparent.
            context = current_context()
            if correlationid:
                context = context.merged(correlationid=correlationid)
            event = build_event(data, source=self.source, event_id=event_id, context=context)
            span.set_attribute("messaging.message.id", event.id)
            self.publish_event(event, exchange=exchange)
        return event

    def publish_event(self, event: CloudEvent, *, exchange: Exchange = EVENTS) -> None:
        routing_key = event.type if exchange.type == "topic" else ""
        self.publish_raw(
            encode_event(event),
            exchange=exchange,
            routing_key=routing_key,
            message_id=event.id,
            headers=EventContext(event.correlationid, event.locale, event.traceparent).as_headers(),
        )
        metrics.record_published(event)
        log.debug("event.published", published_type=event.type, event_id=event.id)

    def publish_raw(
        self,
        body: bytes,
        *,
        exchange: Exchange | str,
        routing_key: str,
        message_id: str | None = None,
        headers: Mapping[str, Any] | None = None,
        content_type: str = CONTENT_TYPE,
        expiration: float | None = None,
    ) -> None:
        """Publish bytes as they are; returns once the broker has confirmed them."""
        declare = [exchange] if isinstance(exchange, Exchange) and exchange.name else []
        try:
            with self._producers.acquire(block=True, timeout=30) as producer:
                producer.publish(
                    body,
                    exchange=exchange,
                    routing_key=routing_key,
                    content_type=content_type,
                    content_encoding="utf-8",
                    delivery_mode=2,
                    message_id=message_id,
                    headers=dict(headers or {}),
                    expiration=expiration,
                    declare=declare,
                    retry=True,
                    retry_policy=self._retry_policy,
                    # A broker that dies between publish and confirm must not hang the caller for ever.
                    confirm_timeout=CONFIRM_TIMEOUT_SECONDS,
                )
        except self._connection.channel_errors as exc:
            if getattr(exc, "reply_code", None) != ACCESS_REFUSED:
                raise
            # Not a broker outage: this user may not publish there, and retrying cannot change that.
            name = exchange.name if isinstance(exchange, Exchange) else exchange
            log.error(
                "publish.refused", exchange=name or DEFAULT_EXCHANGE_NAME, routing_key=routing_key, reason=str(exc)
            )
            raise PublishRefused(
                f"broker refused publishing to {name or DEFAULT_EXCHANGE_NAME!r} with routing key "
                f"{routing_key!r}: {exc}"
            ) from exc

    def close(self) -> None:
        self._producers.force_close_all()
        # That leaves the producers' connections open, and the connection pool's own force_close_all only
        # drops their sockets (it is meant for after a fork): the broker would log each connection as
        # unexpectedly closed. Each idle one is closed with AMQP's Connection.Close instead.
        with contextlib.suppress(self._connections.LimitExceeded):
            for _ in range(self._connections.limit):
                self._connections.replace(self._connections.acquire(block=False))


class PublishRefused(Exception):
    """The broker refused a publish (ACCESS_REFUSED): a permission is missing, not a connection."""


class RetryLater(Exception):
    """The work cannot be done now (a dependency is down) but will succeed later."""

    def __init__(self, reason: str, delay: float | None = None) -> None:
        super().__init__(reason)
        self.delay = delay


class Rejected(Exception):
    """The message can never be handled: dead-letter it with this reason."""


class ProcessedEvents(Protocol):
    """Remembers which events a queue has handled, so a redelivery is acked without its effect."""

    def seen(self, queue: str, event_id: str) -> bool: ...

    def remember(self, queue: str, event_id: str) -> None: ...


@dataclass(frozen=True)
class Route:
    """How one event type is handled on one queue."""

    handler: Callable[[Any, CloudEvent], HandlerResult]
    # The service that owns the next step of a report turns invalid data into report.failed,
    # so the requester hears of it instead of waiting forever.
    fails_report_as: str | None = None


TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    ConnectionError,
    TimeoutError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
)


@dataclass
class MessageHandler:
    """Decodes, validates, scopes, dispatches, publishes, then acks: the same for every service."""

    service: str
    subscription: Subscription
    routes: Mapping[str, Route]
    publisher: Publisher
    processed: ProcessedEvents | None = None
    transient_errors: tuple[type[BaseException], ...] = TRANSIENT_ERRORS
    # With delays capped at retry_max_delay (a minute), about a day of outage before dead-lettering.
    max_retries: int = 1500
    retry_base_delay: float = 1.0
    retry_max_delay: float = 60.0
    _log: Any = field(init=False)

    def __post_init__(self) -> None:
        self._log = structlog.get_logger(f"hotrepos.{self.service}")

    def __call__(self, message: Message) -> None:
        queue = self.subscription.queue_name
        started = time.perf_counter()
        event_type = "?"
        try:
            event, route, data = self._decode(message)
            event_type = event.type
        except Rejected as exc:
            self._dead_letter(message, str(exc))
            metrics.EVENTS_CONSUMED.labels(type=event_type, outcome="dead-lettered").inc()
            return
        except _InvalidData as exc:
            with self._scope(exc.event, None):
                if exc.route.fails_report_as:
                    self._fail_report(exc.event, exc.route.fails_report_as, str(exc))
                self._dead_letter(message, str(exc))
            metrics.EVENTS_CONSUMED.labels(type=exc.event.type, outcome="dead-lettered").inc()
            return

        handler_name = _name_of(route.handler)
        with (
            self._scope(event, data),
            log_file_scope(f"{self.service}.{handler_name}"),
            tracing.consume_span(event, queue),
        ):
            try:
                if self.processed is not None and self.processed.seen(queue, event.id):
                    self._log.info("event.duplicate", event_id=event.id)
                    message.ack()
                    metrics.EVENTS_CONSUMED.labels(type=event_type, outcome="duplicate").inc()
                    return
                with tracing.handle_span(event_type, handler_name):
                    outgoing = list(route.handler(data, event) or ())
            except Rejected as exc:
                self._dead_letter(message, str(exc))
                metrics.EVENTS_CONSUMED.labels(type=event_type, outcome="dead-lettered").inc()
                return
            except RetryLater as exc:
                self._retry_later(message, str(exc), exc.delay)
                metrics.EVENTS_CONSUMED.labels(type=event_type, outcome="retried").inc()
                return
            except self.transient_errors as exc:
                self._retry_later(message, f"{type(exc).__name__}: {exc}", None)
                metrics.EVENTS_CONSUMED.labels(type=event_type, outcome="retried").inc()
                return
            except Exception as exc:
                self._log.exception("handler.crashed", event_id=event.id)
                if self.subscription.exclusive:
                    # A replica's own queue has no delivery limit: requeueing would loop for ever.
                    self._dead_letter(message, f"handler crashed: {type(exc).__name__}: {exc}")
                    return
                # Requeue: the quorum queue counts deliveries and dead-letters a message that keeps
                # crashing its handler once DELIVERY_LIMIT is reached.
                message.requeue()
                metrics.EVENTS_CONSUMED.labels(type=event_type, outcome="crashed").inc()
                return
            # Publish-then-ack: a crash in between gives a redelivery, which dedup absorbs.
            try:
                for item in outgoing:
                    self._publish(item)
            except PublishRefused as exc:
                # Kept in the dead-letter queue for a replay once the permission is fixed.
                self._dead_letter(message, str(exc))
                metrics.EVENTS_CONSUMED.labels(type=event_type, outcome="dead-lettered").inc()
                return
            if self.processed is not None:
                try:
                    self.processed.remember(queue, event.id)
                except Exception as exc:
                    # The effect is done and published: ack anyway; a redelivery would only be deduped
                    # by the handler's own idempotency.
                    self._log.warning("dedup.not_recorded", error=str(exc))
            message.ack()
            metrics.EVENTS_CONSUMED.labels(type=event_type, outcome="ok").inc()
            metrics.HANDLER_SECONDS.labels(type=event_type).observe(time.perf_counter() - started)
            self._log.info("event.handled", event_id=event.id, published=len(outgoing))

    def _decode(self, message: Message) -> tuple[CloudEvent, Route, EventData]:
        body = message.body
        if isinstance(body, str):
            body = body.encode()
        if len(body) > MAX_BODY_BYTES:
            raise Rejected(f"body of {len(body)} bytes exceeds the {MAX_BODY_BYTES}-byte limit")
        content_type = (message.content_type or "").split(";")[0].strip().lower()
        if content_type not in (CONTENT_TYPE, "application/json"):
            raise Rejected(f"content type {content_type or 'none'!r} is not {CONTENT_TYPE}")
        try:
            raw = json.loads(body)
        except (ValueError, RecursionError) as exc:
            raise Rejected(f"body is not JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise Rejected("body is not a JSON object, so not a CloudEvent")
        try:
            event = CloudEvent.model_validate(raw)
        except ValidationError as exc:
            raise Rejected(f"not a CloudEvent 1.0: {_summarise(exc)}") from None
        route = self.routes.get(event.type)
        if route is None:
            raise Rejected(f"unknown event type {event.type!r} for queue {self.subscription.queue_name}")
        try:
            data = event.data_as(EVENT_TYPES[event.type])
        except ValidationError as exc:
            reason = f"data of {event.type} fails its schema: {_summarise(exc)}"
            raise _InvalidData(event, route, reason) from None
        return event, route, data

    def _scope(self, event: CloudEvent, data: EventData | None) -> _ScopeGuard:
        report_id = _report_id_of(event, data)
        correlationid = event.correlationid or report_id or event.id
        structlog.contextvars.bind_contextvars(
            event_type=event.type,
            event_id=event.id,
            correlation_id=correlationid,
            report_id=report_id or correlationid,
        )
        return _ScopeGuard(EventContext(correlationid, event.locale, event.traceparent))

    def _publish(self, item: EventData | Outgoing) -> None:
        if isinstance(item, EventData):
            item = Outgoing(item)
        self.publisher.publish(
            item.data, event_id=item.event_id, exchange=item.exchange, correlationid=item.correlationid
        )

    def _fail_report(self, event: CloudEvent, stage: str, reason: str) -> None:
        report_id = _report_id_of(event, None) or event.correlationid or event.id
        try:
            failed = ReportFailed(report_id=report_id, stage=stage, reason=reason[:2000])
        except ValidationError:
            return  # no usable report id: nobody could be told, the dead letter keeps it
        self.publisher.publish(failed, correlationid=report_id)

    def _dead_letter(self, message: Message, reason: str) -> None:
        queue = self.subscription.queue_name
        self._log.error(
            "message.dead_lettered",
            queue=queue,
            reason=reason,
            message_id=message.properties.get("message_id"),
        )
        headers = dict(message.headers or {})
        headers[REASON_HEADER] = reason[:1000]
        delivery = message.delivery_info or {}
        headers.setdefault(ORIGINAL_EXCHANGE_HEADER, delivery.get("exchange", ""))
        headers.setdefault(ORIGINAL_ROUTING_KEY_HEADER, delivery.get("routing_key", ""))
        self.publisher.publish_raw(
            _raw_body(message),
            exchange=DLX,
            routing_key=queue,
            message_id=message.properties.get("message_id"),
            headers=headers,
            content_type=message.content_type or "application/octet-stream",
        )
        message.ack()

    def _retry_later(self, message: Message, reason: str, delay: float | None) -> None:
        headers = dict(message.headers or {})
        retries = int(headers.get(RETRIES_HEADER, 0) or 0) + 1
        if self.subscription.exclusive:
            self._dead_letter(message, f"cannot retry a broadcast later: {reason}")
            return
        if retries > self.max_retries:
            self._dead_letter(message, f"gave up after {self.max_retries} retries: {reason}")
            return
        if delay is None:
            delay = min(self.retry_max_delay, self.retry_base_delay * 2 ** (retries - 1))
        self._log.warning("message.retry_later", reason=reason, retries=retries, delay=delay)
        headers[RETRIES_HEADER] = retries
        delivery = message.delivery_info or {}
        headers.setdefault(ORIGINAL_EXCHANGE_HEADER, delivery.get("exchange", ""))
        headers.setdefault(ORIGINAL_ROUTING_KEY_HEADER, delivery.get("routing_key", ""))
        self.publisher.publish_raw(
            _raw_body(message),
            exchange=RETRY,
            routing_key=self.subscription.queue_name,
            message_id=message.properties.get("message_id"),
            headers=headers,
            content_type=message.content_type or CONTENT_TYPE,
            expiration=max(delay, 0.001),
        )
        message.ack()


class _InvalidData(Exception):
    def __init__(self, event: CloudEvent, route: Route, reason: str) -> None:
        super().__init__(reason)
        self.event = event
        self.route = route


class _ScopeGuard:
    def __init__(self, context: EventContext) -> None:
        self._scope = event_scope(context)

    def __enter__(self) -> EventContext:
        return self._scope.__enter__()

    def __exit__(self, *exc: object) -> None:
        self._scope.__exit__(None, None, None)
        structlog.contextvars.unbind_contextvars("event_type", "event_id", "correlation_id", "report_id")


def _name_of(handler: Callable[..., object]) -> str:
    inner = getattr(handler, "func", handler)  # functools.partial hides the handler's name
    return str(getattr(inner, "__name__", "handler"))


def _report_id_of(event: CloudEvent, data: EventData | None) -> str | None:
    report_id = getattr(data, "report_id", None)
    if report_id is None and isinstance(event.data, dict):
        report_id = event.data.get("report_id")
    if event.type == "report.requested" and report_id is None:
        return request_report_id(None, event.id)
    return report_id if isinstance(report_id, str) and len(report_id) <= 64 else None


def _raw_body(message: Message) -> bytes:
    body = message.body
    return body.encode() if isinstance(body, str) else bytes(body)


def _summarise(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors()[:5]:
        where = ".".join(str(p) for p in error["loc"]) or "(root)"
        parts.append(f"{where}: {error['msg']}")
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


class ServiceConsumer(ConsumerMixin):
    """Consumes a service's queues with one MessageHandler each; reconnects with backoff."""

    def __init__(self, connection: Connection, handlers: Iterable[MessageHandler], *, prefetch_count: int = 16) -> None:
        self.connection = connection
        self.handlers = list(handlers)
        self.prefetch_count = prefetch_count

    def get_consumers(self, Consumer: Any, channel: Any) -> list[KombuConsumer]:
        return [
            Consumer(
                queues=[handler.subscription.queue()],
                on_message=handler,
                prefetch_count=self.prefetch_count,
            )
            for handler in self.handlers
        ]

    def on_connection_error(self, exc: BaseException, interval: float) -> None:
        log.warning("broker.unreachable", error=str(exc), retry_in=interval)

    def on_consume_ready(self, connection: Connection, channel: Any, consumers: Any, **kwargs: Any) -> None:
        log.info("consumer.ready", queues=[h.subscription.queue_name for h in self.handlers])

    def stop_on_signals(self) -> None:
        """SIGTERM/SIGINT stop taking messages; in-flight ones finish, unacked ones return to the queue."""

        def stop(signum: int, frame: object) -> None:
            log.info("consumer.stopping", signal=signum)
            self.should_stop = True

        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, stop)
            signal.signal(signal.SIGINT, stop)
