"""The kombu side of the delivery pipeline: a message in, its verdict carried out on the broker."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

import structlog
from kombu.connection import Connection
from kombu.entity import Exchange
from kombu.message import Message
from kombu.messaging import Consumer as KombuConsumer
from kombu.mixins import ConsumerMixin

from shared.events import CONTENT_TYPE
from shared.pipeline import Ack, DeadLetter, DeliveryPipeline, PublishNotTaken, Requeue, RetryAfter, Verdict
from shared.publisher import Publisher
from shared.topology import (
    DEATH_HEADERS,
    DELAY,
    DLX,
    ORIGINAL_EXCHANGE_HEADER,
    ORIGINAL_ROUTING_KEY_HEADER,
    REASON_HEADER,
    RETRIES_HEADER,
    Subscription,
    delayed_routing_key,
)

log = structlog.get_logger("hotrepos.consumer")

# A verdict's republish that the broker will not take (a queue electing its leader) is tried again,
# the message held, before the consumer reconnects: a reconnect hands back every message it holds,
# and a quorum queue counts each return toward the delivery limit that dead-letters a message.
# About 15 s in all, well inside the heartbeats' timeout, since the consumer sends none meanwhile.
REPUBLISH_PAUSES_SECONDS = (0.5, 1.0, 2.0, 4.0, 8.0)


class KombuDelivery:
    """A kombu message as the pipeline reads it."""

    def __init__(self, message: Message) -> None:
        self.message = message

    @property
    def body(self) -> bytes:
        return _raw_body(self.message)

    @property
    def content_type(self) -> str | None:
        content_type = self.message.content_type
        return content_type if isinstance(content_type, str) else None

    @property
    def message_id(self) -> str | None:
        message_id = self.message.properties.get("message_id")
        return message_id if isinstance(message_id, str) else None

    @property
    def retries(self) -> int:
        return _count(self.headers.get(RETRIES_HEADER))

    @property
    def deliveries(self) -> None:
        # Every queue consumed here is a quorum queue, whose x-delivery-limit dead-letters a message
        # that keeps crashing its handler; a replica's exclusive queue is never requeued.
        return None

    @property
    def headers(self) -> Mapping[str, Any]:
        return self.message.headers or {}


class QueueConsumer:
    """One queue: each message through its pipeline, then the verdict carried out."""

    def __init__(self, subscription: Subscription, pipeline: DeliveryPipeline, publisher: Publisher) -> None:
        self.subscription = subscription
        self.pipeline = pipeline
        self._publisher = publisher

    def __call__(self, message: Message) -> None:
        self.settle(message, self.pipeline.process(KombuDelivery(message)))

    def settle(self, message: Message, verdict: Verdict) -> None:
        if isinstance(verdict, Ack):
            message.ack()
        elif isinstance(verdict, Requeue):
            # The quorum queue counts deliveries and dead-letters a message that keeps crashing its
            # handler once its delivery limit is reached.
            message.requeue()
        elif isinstance(verdict, RetryAfter):
            self._retry_later(message, verdict)
        elif isinstance(verdict, DeadLetter):
            self._dead_letter(message, verdict.reason)

    def _dead_letter(self, message: Message, reason: str) -> None:
        # A dead letter keeps the content type it came with, or none: it may not be an event at all.
        self._republish(message, DLX, {REASON_HEADER: reason[:1000]}, default_type="application/octet-stream")

    def _retry_later(self, message: Message, verdict: RetryAfter) -> None:
        # Through the broker's delay levels, back to this queue alone once the delay has passed.
        key = delayed_routing_key(verdict.delay, self.subscription.queue_name)
        self._republish(message, DELAY, {RETRIES_HEADER: verdict.retries}, routing_key=key)

    def _republish(
        self,
        message: Message,
        exchange: Exchange,
        headers: dict[str, Any],
        *,
        routing_key: str | None = None,
        default_type: str = CONTENT_TYPE,
    ) -> None:
        """The message as it came, without the broker's death headers, keyed by this queue's name and
        with where it was first published, then acked."""
        delivery = message.delivery_info or {}
        original = {k: v for k, v in (message.headers or {}).items() if k not in DEATH_HEADERS}
        original.setdefault(ORIGINAL_EXCHANGE_HEADER, delivery.get("exchange", ""))
        original.setdefault(ORIGINAL_ROUTING_KEY_HEADER, delivery.get("routing_key", ""))
        for pause in (*REPUBLISH_PAUSES_SECONDS, None):
            try:
                self._publisher.publish_raw(
                    _raw_body(message),
                    exchange=exchange,
                    routing_key=routing_key or self.subscription.queue_name,
                    message_id=message.properties.get("message_id"),
                    headers={**original, **headers},
                    content_type=message.content_type or default_type,
                )
                break
            except PublishNotTaken as exc:
                if pause is None:
                    raise
                log.warning("republish.not_taken", queue=self.subscription.queue_name, retry_in=pause, error=str(exc))
                time.sleep(pause)
        message.ack()


class ServiceConsumer(ConsumerMixin):
    """Consumes a service's queues, one QueueConsumer each; reconnects with backoff."""

    def __init__(self, connection: Connection, queues: Iterable[QueueConsumer], *, prefetch_count: int = 16) -> None:
        self.connection = connection
        self.queues = list(queues)
        self.prefetch_count = prefetch_count

    def get_consumers(self, Consumer: Any, channel: Any) -> list[KombuConsumer]:
        return [
            Consumer(queues=[queue.subscription.queue()], on_message=queue, prefetch_count=self.prefetch_count)
            for queue in self.queues
        ]

    def on_connection_error(self, exc: BaseException, interval: float) -> None:
        log.warning("broker.unreachable", error=str(exc), retry_in=interval)

    def on_consume_ready(self, connection: Connection, channel: Any, consumers: Any, **kwargs: Any) -> None:
        log.info("consumer.ready", queues=[q.subscription.queue_name for q in self.queues])

    def stop_on_signals(self) -> None:
        """SIGTERM/SIGINT stop taking messages; in-flight ones finish, unacked ones return to the queue."""

        def stop(signum: int, frame: object) -> None:
            log.info("consumer.stopping", signal=signum)
            self.should_stop = True

        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, stop)
            signal.signal(signal.SIGINT, stop)


def _count(value: object) -> int:
    # Headers are the publisher's to write: anything but a small count means none.
    try:
        count = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError, OverflowError):
        return 0
    return count if 0 <= count < 1_000_000 else 0


def _raw_body(message: Message) -> bytes:
    body = message.body
    return body.encode() if isinstance(body, str) else bytes(body)
