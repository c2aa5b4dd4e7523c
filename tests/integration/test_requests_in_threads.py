"""The fetcher's request queue against a real RabbitMQ: each request in a thread of its own, its ack
sent by the consumer's loop alone, and nothing left unacked."""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import redis
from kombu.connection import Connection

from services.fetcher.worker import SettledInThreads
from shared.amqp import connect, declare_topology
from shared.consumer import QueueConsumer, ServiceConsumer
from shared.events import ReportRequested
from shared.handling import EventMeta
from shared.pipeline import Route
from shared.publisher import Publisher
from shared.settings import CommonSettings
from shared.topology import on_event
from tests.support.amqp import cloud_event, publish, queue_state
from tests.support.pipeline import delivery_pipeline
from tests.support.waiting import eventually

SUBSCRIPTION = on_event("threads", "report.requested")
CONSUMER_THREAD = "request-consumer"


class LoopConsumer(ServiceConsumer):
    """A consumer whose loop runs what other threads hand it, between two waits for messages, as
    Celery's event loop does with a task's ack."""

    def __init__(self, connection: Connection, queues: list[Any]) -> None:
        super().__init__(connection, queues, prefetch_count=8)
        self._handed: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self.ran_on: set[str] = set()
        self.ran = 0

    def call_soon(self, callback: Callable[[], None]) -> None:
        self._handed.put(callback)

    def on_iteration(self) -> None:
        while not self._handed.empty():
            self.ran_on.add(threading.current_thread().name)
            self._handed.get()()
            self.ran += 1


def test_requests_are_handled_side_by_side_and_acked_by_the_consumers_loop_alone(amqp_url: str, redis_url: str) -> None:
    running = 0
    most_at_once = 0
    handled_on: set[str] = set()
    handled: list[str] = []
    lock = threading.Lock()

    def slow(data: ReportRequested, meta: EventMeta) -> None:
        nonlocal running, most_at_once
        with lock:
            running += 1
            most_at_once = max(most_at_once, running)
            handled_on.add(threading.current_thread().name)
        time.sleep(0.3)  # a request waiting on its first page attempts
        with lock:
            running -= 1
            handled.append(meta.id)

    settings = CommonSettings(amqp_url=amqp_url, redis_url=redis_url)
    connection = connect(settings)
    declare_topology(connection, [SUBSCRIPTION])
    publisher = Publisher(connection, source="tests/threads")
    redis_client = redis.Redis.from_url(redis_url)
    pipeline = delivery_pipeline(
        "threads", SUBSCRIPTION.queue_name, {"report.requested": Route(slow)}, publisher, redis_client
    )
    in_threads = SettledInThreads(QueueConsumer(SUBSCRIPTION, pipeline, publisher), threads=8)
    consumer = LoopConsumer(connection, [in_threads])
    in_threads.settle_through(consumer.call_soon)
    thread = threading.Thread(target=consumer.run, name=CONSUMER_THREAD, daemon=True)
    thread.start()
    try:
        requests = [cloud_event("report.requested", {"report_id": uuid.uuid4().hex, "period": "day"}) for _ in range(6)]
        for request in requests:
            publish(amqp_url, "report.requested", request)
        eventually(lambda: len(handled) == len(requests), timeout=30, message="every request handled")
        eventually(lambda: consumer.ran == len(requests), timeout=30, message="every ack sent by the loop")
    finally:
        consumer.should_stop = True
        thread.join(10)
        in_threads.close()
        publisher.close()
        connection.release()
    assert sorted(handled) == sorted(request["id"] for request in requests)
    assert most_at_once > 1 and CONSUMER_THREAD not in handled_on
    assert consumer.ran_on == {CONSUMER_THREAD}
    # The consumer's connection is closed: a message it had not acked would be back in the queue.
    assert queue_state(amqp_url, SUBSCRIPTION.queue_name).messages == 0
