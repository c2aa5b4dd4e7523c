"""pika, an AMQP client independent of ours: publish test events and listen in on the wire."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import threading
import uuid
from collections.abc import Callable
from typing import Any

import pika

from tests.support.waiting import eventually

CLOUDEVENTS = "application/cloudevents+json"


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
    """An exclusive queue bound to hotrepos.events, as any new subscriber would bind one."""

    def __init__(self, amqp_url: str, binding_key: str = "#", exchange: str = "hotrepos.events") -> None:
        self.events: list[dict[str, Any]] = []
        self.raw: list[tuple[Any, bytes]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(amqp_url, binding_key, exchange), daemon=True)
        self._thread.start()
        if not self._ready.wait(20):
            raise RuntimeError("listener did not bind its queue")

    def _run(self, amqp_url: str, binding_key: str, exchange: str) -> None:
        connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
        channel = connection.channel()
        kind = "fanout" if exchange in ("hotrepos.alerts", "hotrepos.control") else "topic"
        channel.exchange_declare(exchange, kind, durable=True)
        queue = channel.queue_declare("", exclusive=True).method.queue
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
        with self._lock:
            self.raw.append((properties, body))
            with contextlib.suppress(ValueError):
                self.events.append(json.loads(body))

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


def queue_depth(amqp_url: str, queue: str) -> int:
    """Messages ready in a queue, from the broker itself (the management API's figures lag)."""
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        return int(connection.channel().queue_declare(queue, passive=True).method.message_count)
    finally:
        connection.close()
