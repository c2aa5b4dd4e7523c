"""pika, an AMQP client independent of ours: publish test events and listen in on the wire."""

from __future__ import annotations

import datetime as dt
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pika

from tests.support.waiting import eventually

CLOUDEVENTS = "application/cloudevents+json"
# A routing key and event type no service binds or knows: the tests' own marker in a queue.
SENTINEL = "test.sentinel"


def cloud_event(
    event_type: str,
    data: Any,
    *,
    event_id: str | None = None,
    locale: str | None = None,
    correlationid: str | None = None,
) -> dict[str, Any]:
    event: dict[str, Any] = {
        "specversion": "1.0",
        "id": event_id or str(uuid.uuid4()),
        "type": event_type,
        "source": "tests/pika",
        "time": dt.datetime.now(dt.UTC).isoformat(),
        "datacontenttype": "application/json",
        "data": data,
    }
    if locale:
        event["locale"] = locale
    if correlationid:
        event["correlationid"] = correlationid
    return event


def publish(
    amqp_url: str,
    routing_key: str,
    body: bytes | dict[str, Any],
    *,
    exchange: str = "hotrepos.events",
    content_type: str = CLOUDEVENTS,
    headers: dict[str, Any] | None = None,
    message_id: str | None = None,
) -> None:
    """Publish one persistent message with publisher confirms, as any AMQP client would."""
    if isinstance(body, dict):
        message_id = message_id or body.get("id")
        body = json.dumps(body).encode()
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish(
            exchange,
            routing_key,
            body,
            pika.BasicProperties(content_type=content_type, delivery_mode=2, message_id=message_id, headers=headers),
        )
    finally:
        connection.close()


class EventListener:
    """An exclusive queue bound to hotrepos.events, as any new subscriber would bind one.

    A listener whose binding keys take SENTINEL (`#` does) can catch up: see catch_up().
    """

    def __init__(
        self, amqp_url: str, binding_key: str | tuple[str, ...] = "#", exchange: str = "hotrepos.events"
    ) -> None:
        self.amqp_url = amqp_url
        self.exchange = exchange
        self.events: list[dict[str, Any]] = []
        self.raw: list[tuple[Any, bytes]] = []
        # The listener's own sentinels are kept apart: they are not events under test.
        self._sentinels: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ready = threading.Event()
        binding_keys = (binding_key,) if isinstance(binding_key, str) else binding_key
        self._thread = threading.Thread(target=self._run, args=(amqp_url, binding_keys, exchange), daemon=True)
        self._thread.start()
        if not self._ready.wait(20):
            raise RuntimeError("listener did not bind its queue")

    def _run(self, amqp_url: str, binding_keys: tuple[str, ...], exchange: str) -> None:
        connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
        channel = connection.channel()
        kind = "fanout" if exchange in ("hotrepos.alerts", "hotrepos.control") else "topic"
        channel.exchange_declare(exchange, kind, durable=True)
        queue = channel.queue_declare("", exclusive=True).method.queue
        for binding_key in binding_keys:
            channel.queue_bind(queue, exchange, binding_key)
        self._ready.set()
        try:
            # Pushed by the broker as they come; the short inactivity timeout only lets close() be heard.
            for method, properties, body in channel.consume(queue, auto_ack=True, inactivity_timeout=0.1):
                if self._stop.is_set():
                    break
                if method is not None:
                    self._record(properties, body)
            connection.close()
        except pika.exceptions.AMQPError:
            pass  # the test's vhost is gone: nothing more to hear

    def _record(self, properties: Any, body: bytes) -> None:
        try:
            event = json.loads(body)
        except ValueError:
            event = None
        with self._lock:
            if isinstance(event, dict) and event.get("type") == SENTINEL:
                self._sentinels.add(str(event.get("id")))
                return
            self.raw.append((properties, body))
            if event is not None:
                self.events.append(event)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def of(self, event_type: str, report_id: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [
                e
                for e in self.events
                if e.get("type") == event_type
                and (report_id is None or (e.get("data") or {}).get("report_id") == report_id)
            ]

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 60) -> dict[str, Any]:
        """The first event heard that matches."""

        def matching() -> dict[str, Any] | None:
            with self._lock:
                return next((event for event in self.events if predicate(event)), None)

        def seen() -> str:
            with self._lock:
                heard = [(e.get("type"), (e.get("data") or {}).get("report_id")) for e in self.events]
            return f"no matching event; seen: {heard[-30:]}"

        return eventually(matching, timeout=timeout, message=seen, interval=0.05)

    def wait_for_outcome(self, report_id: str, timeout: float = 60) -> dict[str, Any]:
        return self.wait_for(
            lambda e: (
                e.get("type") in ("report.exported", "report.failed")
                and (e.get("data") or {}).get("report_id") == report_id
            ),
            timeout,
        )

    def catch_up(self, timeout: float = 30) -> None:
        """Until everything published on hotrepos.events before this call has reached the listener.

        A sentinel published now lands in the listener's queue behind every event already routed
        there, and the queue is read in order: once the sentinel is heard, so is all that came before.
        """
        if self.exchange != "hotrepos.events":
            # On a fanout, every service's queue would get the sentinel too.
            raise ValueError(f"a listener on {self.exchange} cannot catch up with a sentinel")
        sentinel = str(uuid.uuid4())
        publish(self.amqp_url, SENTINEL, cloud_event(SENTINEL, {}, event_id=sentinel))

        def heard() -> bool:
            with self._lock:
                return sentinel in self._sentinels

        eventually(heard, timeout=timeout, message=f"the listener's sentinel on {SENTINEL}", interval=0.05)


def dead_letters(amqp_url: str, queue: str) -> list[tuple[Any, bytes]]:
    """Every message in a dead-letter queue, read and put back (nack with requeue)."""
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        found = []
        tags = []
        while True:
            method, properties, body = channel.basic_get(queue, auto_ack=False)
            if method is None:
                break
            found.append((properties, body))
            tags.append(method.delivery_tag)
        for tag in tags:
            channel.basic_nack(tag, requeue=True)
        return found
    finally:
        connection.close()


@dataclass(frozen=True)
class QueueState:
    messages: int  # ready, not counting those delivered and unacknowledged
    consumers: int


def queue_state(amqp_url: str, queue: str) -> QueueState:
    """A queue's figures from the broker itself, as of now (the management API's figures lag by seconds)."""
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        declared = connection.channel().queue_declare(queue, passive=True).method
        return QueueState(int(declared.message_count), int(declared.consumer_count))
    finally:
        connection.close()


def queue_depth(amqp_url: str, queue: str) -> int:
    """Messages ready in a queue, from the broker itself (the management API's figures lag)."""
    return queue_state(amqp_url, queue).messages


@contextmanager
def nacking_queue(amqp_url: str, exchange: str, routing_key: str) -> Iterator[None]:
    """A queue that takes nothing and says so: the broker nacks every publish routed to it, as a
    quorum queue does while it has no leader. Deleted on leaving, and the publishes go through."""
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        queue = f"probe-nacking-{uuid.uuid4().hex[:8]}"
        channel.queue_declare(queue, arguments={"x-max-length": 0, "x-overflow": "reject-publish"})
        channel.queue_bind(queue, exchange, routing_key)
        yield
        channel.queue_delete(queue)
    finally:
        connection.close()
