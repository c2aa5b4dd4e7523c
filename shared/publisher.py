"""CloudEvents out: built from the event's data and the scope being handled, published confirmed."""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
from collections.abc import Mapping
from typing import Any

import structlog
from amqp.exceptions import MessageNacked
from kombu.connection import Connection
from kombu.entity import Exchange
from kombu.exceptions import LimitExceeded, OperationalError
from kombu.pools import ProducerPool

from shared import metrics, tracing
from shared.context import EventContext, current_context
from shared.events import CONTENT_TYPE, CloudEvent, EventData, event_type_of, new_event_id
from shared.pipeline import PublishNotTaken, PublishRefused
from shared.topology import EVENTS, exchange_of

log = structlog.get_logger("hotrepos.publisher")

CONFIRM_TIMEOUT_SECONDS = 15
ACCESS_REFUSED = 403
DEFAULT_EXCHANGE_NAME = "amq.default"
PUBLISH_RETRY_POLICY = {"max_retries": 20, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 5}


class _Nacked(Exception):
    """The broker nacked a publish: some queue it routes to did not take it (a quorum queue electing
    its leader, a full queue that rejects). kombu would send it again at once, up to its retry limit,
    to be nacked again, each time leaving one more copy in every queue that did take it."""


def _stop_at_a_nack(exc: BaseException, interval: float) -> None:
    # kombu's retry loop calls this on every connection error it is about to retry; a nack is one.
    if isinstance(exc, MessageNacked):
        raise _Nacked() from exc


def build_event(
    data: EventData,
    *,
    source: str,
    event_id: str | None = None,
    context: EventContext | None = None,
    event_type: str | None = None,
) -> CloudEvent:
    """The CloudEvent of data, in the given scope (by default, the scope being handled)."""
    context = context or current_context()
    return CloudEvent(
        specversion="1.0",
        id=event_id or new_event_id(),
        type=event_type or event_type_of(data),
        source=source,
        time=dt.datetime.now(dt.UTC),
        datacontenttype="application/json",
        # The model itself: encode_event writes it in one pass, by its own serializer.
        data=data,
        correlationid=context.correlationid,
        locale=context.locale,
        traceparent=context.traceparent,
    )


def encode_event(event: CloudEvent) -> bytes:
    if not isinstance(event.data, EventData):
        return event.model_dump_json(exclude_none=True).encode()
    # The data by its model's own serializer, spliced in where the envelope has it: one pass over the
    # data, not one to a dict and one more to JSON, which for a page or an aggregate was most of a
    # publish. The bytes are those of the envelope with the data as a dict, which a forwarder re-encodes.
    head = event.model_dump_json(exclude_none=True, include=_BEFORE_DATA)
    tail = event.model_dump_json(exclude_none=True, exclude={*_BEFORE_DATA, "data"})
    rest = f",{tail[1:]}" if tail != "{}" else "}"
    return f'{head[:-1]},"data":{event.data.model_dump_json()}{rest}'.encode()


_BEFORE_DATA = set(itertools.takewhile(lambda name: name != "data", CloudEvent.model_fields))


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
        self._retry_policy = {**(retry_policy or PUBLISH_RETRY_POLICY), "errback": _stop_at_a_nack}
        self._connections = connection.clone().Pool(limit=pool_size)
        self._producers = ProducerPool(self._connections, limit=pool_size)

    def publish(
        self,
        data: EventData,
        *,
        event_id: str | None = None,
        correlationid: str | None = None,
    ) -> CloudEvent:
        event_type = event_type_of(data)
        exchange = exchange_of(event_type)
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
        """Publish bytes as they are; returns once the broker has confirmed them.

        Raises PublishRefused when the broker user may not publish there, and PublishNotTaken when
        the broker kept nacking or could not be reached through every try of the retry policy.
        """
        declare = [exchange] if isinstance(exchange, Exchange) and exchange.name else []
        name = exchange.name if isinstance(exchange, Exchange) else exchange
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
        except (_Nacked, OperationalError, LimitExceeded) as exc:
            # A nack, or kombu's retries spent: the caller's backoff takes over.
            raise not_taken(
                exc, f"the publish to {name or DEFAULT_EXCHANGE_NAME!r} with routing key {routing_key!r}"
            ) from exc
        except self._connection.channel_errors as exc:
            if getattr(exc, "reply_code", None) != ACCESS_REFUSED:
                raise
            # Not a broker outage: this user may not publish there, and retrying cannot change that.
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


def not_taken(exc: BaseException, what: str) -> PublishNotTaken:
    """kombu's error once its retries are spent (OperationalError, or LimitExceeded for a full pool),
    as the outage the pipeline waits out; kombu's own words say little, so the cause is named."""
    if isinstance(exc, LimitExceeded):
        detail = f"no free producer (pool of {exc})"
    elif isinstance(exc, _Nacked):
        detail = "nacked: a queue it is routed to did not take it"
    else:
        detail = str(exc) or type(exc.__cause__).__name__
    return PublishNotTaken(f"broker did not take {what}: {detail}")
