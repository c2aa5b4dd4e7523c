"""Hears when a report is done, the same way for both designs: a pika consumer, pushed to, not polling.

Each arrival is stamped in the listener's own thread the moment pika hands it over, so the two designs
are timed by identical code from publish to arrival.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from dataclasses import dataclass

import pika


@dataclass(frozen=True)
class Completion:
    report_id: str
    arrived: float  # time.perf_counter()
    ok: bool
    body: dict[str, object]
    # When the event says it was published (a CloudEvent's `time`), on the wall clock; None without one.
    published: float | None = None


class CompletionListener:
    """Consumes one queue (or a fresh exclusive queue bound to `bindings`) and records each report's end."""

    def __init__(self, amqp_url: str, *, queue: str | None = None, bindings: tuple[tuple[str, str], ...] = ()) -> None:
        self._lock = threading.Lock()
        self._done: dict[str, Completion] = {}
        self._waiters: dict[str, threading.Event] = {}
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(amqp_url, queue, bindings), daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError(f"completion listener could not start: {self._error}")

    def _run(self, amqp_url: str, queue: str | None, bindings: tuple[tuple[str, str], ...]) -> None:
        try:
            connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
            channel = connection.channel()
            if queue is None:
                queue = channel.queue_declare("", exclusive=True).method.queue
                for exchange, key in bindings:
                    channel.queue_bind(queue, exchange, key)
            else:
                channel.queue_declare(queue, durable=True)
            channel.basic_consume(queue, self._on_message, auto_ack=True)
        except BaseException as exc:
            self._error = exc
            raise
        self._ready.set()
        try:
            while not self._stop.is_set():
                connection.process_data_events(time_limit=0.2)
            connection.close()
        except pika.exceptions.AMQPError:
            pass  # the vhost went away with the scenario

    def _on_message(self, channel: object, method: object, properties: object, body: bytes) -> None:
        arrived = time.perf_counter()
        event = json.loads(body)
        data = event.get("data", event)  # hotrepos sends a CloudEvent, the baseline a plain object
        report_id = str(data.get("report_id"))
        ok = event.get("type", "report.exported") != "report.failed"
        stamped = event.get("time")
        published = dt.datetime.fromisoformat(stamped).timestamp() if isinstance(stamped, str) else None
        completion = Completion(report_id, arrived, ok, data, published)
        with self._lock:
            self._done.setdefault(report_id, completion)
            waiter = self._waiters.get(report_id)
        if waiter is not None:
            waiter.set()

    def expect(self, report_id: str) -> None:
        """Register interest before publishing, so a fast answer is never missed."""
        with self._lock:
            self._waiters.setdefault(report_id, threading.Event())

    def wait(self, report_id: str, timeout: float) -> Completion:
        with self._lock:
            waiter = self._waiters.setdefault(report_id, threading.Event())
            if report_id in self._done:
                return self._done[report_id]
        if not waiter.wait(timeout):
            raise TimeoutError(f"no completion for {report_id} within {timeout}s")
        with self._lock:
            return self._done[report_id]

    def arrived(self, report_id: str) -> Completion | None:
        """The report's end, if it has been heard of."""
        with self._lock:
            return self._done.get(report_id)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
