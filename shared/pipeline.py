"""The one delivery policy, for every queue and every transport.

decode -> scope -> dedup -> cancelled? -> handle -> publish -> verdict. A transport (the kombu
consumer, the fetcher's Celery task) hands a Delivery in and carries the Verdict out: ack, retry
later, requeue or dead-letter. This is also the one place that records consumption metrics.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Protocol, Union, cast

import structlog
from pydantic import Field, TypeAdapter, ValidationError, create_model

from shared import metrics, tracing
from shared.context import EventContext, event_scope
from shared.events import (
    CONTENT_TYPE,
    EVENT_TYPES,
    CloudEvent,
    EventData,
    ReportExported,
    ReportFailed,
    raw_report_id,
    report_id_of,
)
from shared.handling import (
    Cancellations,
    EventMeta,
    EventPublisher,
    HandlerResult,
    Outgoing,
    ProcessedEvents,
    Rejected,
    RetryLater,
)
from shared.logging import log_file_scope
from shared.outcomes import OutcomePublisher

MAX_BODY_BYTES = 4 * 1024 * 1024
# A message whose handler crashes is delivered again, at most this many times, then dead-lettered.
DELIVERY_LIMIT = 5
# With delays capped at a minute, about a day of outage before a message is given up.
MAX_RETRIES = 1500
RETRY_BASE_DELAY = 1.0
RETRY_MAX_DELAY = 60.0


@dataclass(frozen=True)
class Route:
    """How one event type is handled on one queue."""

    handler: Callable[[Any, EventMeta], HandlerResult]
    # The contract's model of the event type, unless the queue carries a service's own messages.
    model: type[EventData] | None = None
    # The service that owns this step of a report fails the report when it gives a message up,
    # so the requester hears of it instead of waiting forever.
    fails_report_as: str | None = None
    # A cancelled report's pending work is dropped here, before the handler runs.
    stops_when_cancelled: bool = False
    # The handler passes the event on as it came (EventMeta.cloud_event): its data is kept as parsed
    # JSON, not as the model, so that nothing the sender wrote is dropped or added.
    forwards_envelope: bool = False


class Delivery(Protocol):
    """One message as a transport received it."""

    @property
    def body(self) -> bytes: ...

    @property
    def content_type(self) -> str | None: ...

    @property
    def message_id(self) -> str | None:
        """The transport's id of the message, for the logs of one that cannot be decoded."""
        ...

    @property
    def retries(self) -> int:
        """Delayed retries before this one (0 on the first attempt)."""
        ...

    @property
    def deliveries(self) -> int | None:
        """Times this very message was delivered, this time included (above 1 after a crash); None
        where the broker counts deliveries itself and dead-letters past the limit."""
        ...


@dataclass(frozen=True)
class Ack:
    """Done: handled, a duplicate, or dropped on purpose."""


@dataclass(frozen=True)
class RetryAfter:
    delay: float
    # Retries counted before the next attempt: one more than the delivery's, or as many for a wait
    # that does not count.
    retries: int
    reason: str
    counted: bool = True


@dataclass(frozen=True)
class Requeue:
    """The handler crashed: deliver it again now; the delivery limit bounds the loop."""

    reason: str


@dataclass(frozen=True)
class DeadLetter:
    reason: str
    # Parked, not given up: a refused publish waits in the dead-letter queue for a replay once the
    # permission is fixed, so the report is not failed for it.
    parked: bool = False


Verdict = Ack | RetryAfter | Requeue | DeadLetter


class PublishRefused(Exception):
    """The broker refused a publish (ACCESS_REFUSED): a permission is missing, not a connection."""


class PublishNotTaken(ConnectionError):
    """The broker did not take a publish after every try (nacked, or unreachable): an outage to wait out.

    A ConnectionError, so that the pipeline retries the message later and a consumer whose verdict
    could not be carried out reconnects, instead of the service exiting on a library error.
    """


@dataclass
class DeliveryPipeline:
    """Decides what becomes of each message on one queue; the same steps for every service."""

    service: str
    queue: str
    routes: Mapping[str, Route]
    publisher: EventPublisher
    outcomes: OutcomePublisher
    cancellations: Cancellations
    processed: ProcessedEvents | None = None
    transient_errors: tuple[type[BaseException], ...] = (ConnectionError, TimeoutError)
    # A replica's own queue of broadcasts: it cannot wait for a retry, and nobody else will take it.
    broadcast: bool = False
    max_retries: int = MAX_RETRIES
    retry_base_delay: float = RETRY_BASE_DELAY
    retry_max_delay: float = RETRY_MAX_DELAY
    _log: Any = field(init=False)

    def __post_init__(self) -> None:
        self._log = structlog.get_logger(f"hotrepos.{self.service}")
        self._envelopes = _envelopes_of(self.routes)

    def process(self, delivery: Delivery) -> Verdict:
        started = time.perf_counter()
        try:
            event, route, data = self._decode(delivery)
        except _Undecodable as exc:
            undecodable = DeadLetter(str(exc))
            if exc.event is not None:
                report_id = raw_report_id(exc.event)
                with self._scope(exc.event, report_id):
                    self._log_verdict(exc.event, undecodable)
                    # Whoever sent it may still be waiting: the report id it most likely meant.
                    self._give_up(
                        exc.event, exc.route, report_id or exc.event.correlationid or exc.event.id, None, undecodable
                    )
            else:
                self._log.error(
                    "message.dead_lettered", queue=self.queue, reason=undecodable.reason, message_id=delivery.message_id
                )
            metrics.EVENTS_CONSUMED.labels(type=exc.event.type if exc.event else "?", outcome="dead-lettered").inc()
            return undecodable

        report_id = report_id_of(data, event.id)
        meta = EventMeta.of(event, attempt=delivery.retries)
        handler_name = _name_of(route.handler)
        with (
            self._scope(event, report_id),
            log_file_scope(f"{self.service}.{handler_name}"),
            tracing.consume_span(event, self.queue),
        ):
            verdict, published = self._handle(event, route, data, meta, report_id, delivery, handler_name)
            if isinstance(verdict, DeadLetter | RetryAfter | Requeue):
                self._log_verdict(event, verdict)
            if isinstance(verdict, DeadLetter):
                self._give_up(event, route, report_id, data, verdict)
            outcome = _OUTCOME_LABEL[type(verdict)] if published is not None else "duplicate"
            if isinstance(verdict, RetryAfter) and not verdict.counted:
                outcome = "waiting"
            metrics.EVENTS_CONSUMED.labels(type=event.type, outcome=outcome).inc()
            if isinstance(verdict, Ack) and published is not None:
                metrics.HANDLER_SECONDS.labels(type=event.type).observe(time.perf_counter() - started)
                self._log.info("event.handled", event_id=event.id, published=len(published))
        return verdict

    def _handle(
        self,
        event: CloudEvent,
        route: Route,
        data: EventData,
        meta: EventMeta,
        report_id: str | None,
        delivery: Delivery,
        handler_name: str,
    ) -> tuple[Verdict, list[Outgoing] | None]:
        """The verdict, and what was published (None for a duplicate, which is acked unhandled)."""
        try:
            if self.processed is not None and self.processed.seen(self.queue, event.id):
                self._log.info("event.duplicate", event_id=event.id)
                return Ack(), None
            if route.stops_when_cancelled and report_id and self.cancellations.is_cancelled(report_id):
                self._log.info("event.cancelled", event_id=event.id)
                return Ack(), []
            with tracing.handle_span(event.type, handler_name):
                outgoing = [_outgoing(item) for item in route.handler(data, meta) or ()]
        except Rejected as exc:
            return DeadLetter(str(exc)), []
        except RetryLater as exc:
            waiting = [_outgoing(item) for item in exc.publish]
            try:
                for item in waiting:
                    self._publish(item)
            except Exception as publish_error:
                # Telling is a courtesy of the wait: the retry it announces still has to happen.
                self._log.warning("retry.notice_not_published", error=str(publish_error))
            return self._retry(delivery, str(exc), exc.delay, counts=exc.counts), waiting
        except self.transient_errors as exc:
            return self._retry(delivery, f"{type(exc).__name__}: {exc}", None), []
        except Exception as exc:
            self._log.exception("handler.crashed", event_id=event.id)
            return self._crashed(delivery, f"handler crashed: {type(exc).__name__}: {exc}"), []
        # Publish, then settle: a crash in between gives a redelivery, which dedup absorbs.
        try:
            for item in outgoing:
                self._publish(item)
        except PublishRefused as exc:
            return DeadLetter(str(exc), parked=True), []
        except self.transient_errors as exc:
            return self._retry(delivery, f"publishing failed: {type(exc).__name__}: {exc}", None), []
        if self.processed is not None:
            try:
                self.processed.remember(self.queue, event.id)
            except Exception as exc:
                # The effect is done and published: settle anyway; a redelivery would only be deduped
                # by the handler's own idempotency.
                self._log.warning("dedup.not_recorded", error=str(exc))
        return Ack(), outgoing

    def _retry(self, delivery: Delivery, reason: str, delay: float | None, *, counts: bool = True) -> Verdict:
        if self.broadcast:
            return DeadLetter(f"cannot retry a broadcast later: {reason}")
        retries = delivery.retries + 1 if counts else delivery.retries
        if counts and retries > self.max_retries:
            return DeadLetter(f"gave up after {self.max_retries} retries: {reason}")
        if delay is None:
            delay = min(self.retry_max_delay, self.retry_base_delay * 2 ** (retries - 1))
        return RetryAfter(max(delay, 0.001), retries, reason, counted=counts)

    def _crashed(self, delivery: Delivery, reason: str) -> Verdict:
        # A broadcast queue has no delivery limit: requeueing would loop for ever.
        if self.broadcast:
            return DeadLetter(reason)
        # A quorum queue's broker stops the loop itself (x-delivery-limit); a transport whose broker
        # cannot is stopped here, after as many deliveries.
        if delivery.deliveries is not None and delivery.deliveries > DELIVERY_LIMIT:
            return DeadLetter(f"{reason} (delivered {delivery.deliveries} times)")
        return Requeue(reason)

    def _give_up(
        self,
        event: CloudEvent,
        route: Route | None,
        report_id: str | None,
        data: EventData | None,
        verdict: DeadLetter,
    ) -> None:
        """A message given up on a report's own step fails the report, unless the broker refused us."""
        if route is None or route.fails_report_as is None or report_id is None or verdict.parked:
            return
        spec = getattr(data, "spec", None)
        try:
            failed = ReportFailed(
                report_id=report_id, stage=route.fails_report_as, reason=verdict.reason[:2000], spec=spec
            )
        except ValidationError:
            return  # no usable report id: nobody could be told, the dead letter keeps it
        try:
            self.outcomes.publish(failed)
        except Exception as exc:
            self._log.warning("report.failure_not_published", error=str(exc))

    def _publish(self, item: Outgoing) -> None:
        if isinstance(item.data, ReportExported | ReportFailed):
            self.outcomes.publish(item.data)
        else:
            self.publisher.publish(item.data, event_id=item.event_id, correlationid=item.correlationid)

    def _decode(self, delivery: Delivery) -> tuple[CloudEvent, Route, EventData]:
        body = delivery.body
        if len(body) > MAX_BODY_BYTES:
            raise _Undecodable(f"body of {len(body)} bytes exceeds the {MAX_BODY_BYTES}-byte limit")
        content_type = (delivery.content_type or "").split(";")[0].strip().lower()
        if content_type not in (CONTENT_TYPE, "application/json"):
            raise _Undecodable(f"content type {content_type or 'none'!r} is not {CONTENT_TYPE}")
        if self._envelopes is not None:
            # One pass from bytes to the event's model: the common case. Anything it refuses takes
            # the two-pass way below, which says exactly what is wrong.
            try:
                envelope = self._envelopes.validate_json(body)
            except ValidationError:
                pass
            else:
                return envelope, self.routes[envelope.type], envelope.data
        try:
            raw = json.loads(body)
        except (ValueError, RecursionError) as exc:
            raise _Undecodable(f"body is not JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise _Undecodable("body is not a JSON object, so not a CloudEvent")
        try:
            event = CloudEvent.model_validate(raw)
        except ValidationError as exc:
            raise _Undecodable(f"not a CloudEvent 1.0: {summarise(exc)}") from None
        route = self.routes.get(event.type)
        if route is None:
            raise _Undecodable(f"unknown event type {event.type!r} for queue {self.queue}")
        model = route.model or EVENT_TYPES[event.type]
        try:
            data = event.data_as(model)
        except ValidationError as exc:
            reason = f"data of {event.type} fails its schema: {summarise(exc)}"
            raise _Undecodable(reason, event, route) from None
        return event, route, data

    @contextmanager
    def _scope(self, event: CloudEvent, report_id: str | None) -> Iterator[None]:
        correlationid = event.correlationid or report_id or event.id
        structlog.contextvars.bind_contextvars(
            event_type=event.type,
            event_id=event.id,
            correlation_id=correlationid,
            report_id=report_id or correlationid,
        )
        try:
            with event_scope(EventContext(correlationid, event.locale, event.traceparent)):
                yield
        finally:
            structlog.contextvars.unbind_contextvars("event_type", "event_id", "correlation_id", "report_id")

    def _log_verdict(self, event: CloudEvent, verdict: RetryAfter | Requeue | DeadLetter) -> None:
        if isinstance(verdict, RetryAfter) and not verdict.counted:
            # Waiting one's turn is the system working as meant: no warning, no alert.
            self._log.info("message.waiting", reason=verdict.reason, delay=verdict.delay)
        elif isinstance(verdict, RetryAfter):
            self._log.warning(
                "message.retry_later", reason=verdict.reason, retries=verdict.retries, delay=verdict.delay
            )
        elif isinstance(verdict, DeadLetter):
            self._log.error("message.dead_lettered", queue=self.queue, reason=verdict.reason, event_id=event.id)


_OUTCOME_LABEL: dict[type, str] = {
    Ack: "ok",
    RetryAfter: "retried",
    Requeue: "crashed",
    DeadLetter: "dead-lettered",
}


class _Undecodable(Exception):
    def __init__(self, reason: str, event: CloudEvent | None = None, route: Route | None = None) -> None:
        super().__init__(reason)
        self.event = event
        self.route = route


def _envelopes_of(routes: Mapping[str, Route]) -> TypeAdapter[Any] | None:
    """A CloudEvent whose data is already its type's model, for each event type of a queue, told
    apart by `type`."""
    envelopes = [
        create_model(
            f"{_model_name(event_type)}Envelope",
            __base__=CloudEvent,
            type=(_literal(event_type), ...),
            data=(route.model or EVENT_TYPES[event_type], ...),
        )
        for event_type, route in routes.items()
        if not route.forwards_envelope and (route.model is not None or event_type in EVENT_TYPES)
    ]
    if not envelopes:
        return None
    if len(envelopes) == 1:
        return TypeAdapter(envelopes[0])
    union: Any = Annotated[Union[tuple(envelopes)], Field(discriminator="type")]  # noqa: UP007
    return TypeAdapter(union)


def _literal(value: str) -> Any:
    """Literal[value] for a value known at run time."""
    return cast(Any, Literal)[value]


def _model_name(event_type: str) -> str:
    return "".join(part.capitalize() for part in event_type.replace("-", ".").replace("_", ".").split("."))


def _outgoing(item: EventData | Outgoing) -> Outgoing:
    return item if isinstance(item, Outgoing) else Outgoing(item)


def _name_of(handler: Callable[..., object]) -> str:
    inner = getattr(handler, "func", handler)  # functools.partial hides the handler's name
    return str(getattr(inner, "__name__", "handler"))


def summarise(exc: ValidationError) -> str:
    """A validation error in one line: the first few fields and what is wrong with each."""
    parts = []
    for error in exc.errors()[:5]:
        where = ".".join(str(p) for p in error["loc"]) or "(root)"
        parts.append(f"{where}: {error['msg']}")
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")
