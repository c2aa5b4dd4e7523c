"""The broker's share of a report's latency: one message through as many confirmed hops as a report
makes, with no work at any hop, on quorum queues (as hotrepos declares them) and on classic ones.

A report crosses the broker five times in a row: the request, the page tasks, the pages, the
aggregate, the outcome. Each hop here does what a hop of hotrepos does on the wire, and nothing else:
consume, publish the next message persistent and wait for its confirm, then ack. The message sizes are
a report's (a page event carries 100 trimmed repositories, the aggregate 500). The tasks and the pages
of a report travel five at once; here one message makes each hop, so this is a floor, not a model.
"""

from __future__ import annotations

import statistics
import threading
import time
from typing import Any

import pika

from bench.scenarios import percentile
from tests.support.broker import Broker

# The bytes of each hop's message, in the order a report makes them (measured on a `month` report).
HOP_BYTES = (900, 1_500, 31_000, 155_000, 1_200)
QUEUE_TYPES = ("quorum", "classic")


class Forwarder:
    """One hop: consumes its queue and forwards each message to the next, confirmed, then acks."""

    def __init__(self, url: str, queue: str, next_queue: str, next_bytes: int) -> None:
        self._connection = pika.BlockingConnection(pika.URLParameters(url))
        self._channel = self._connection.channel()
        self._channel.confirm_delivery()
        self._channel.basic_qos(prefetch_count=16)
        self._next_queue = next_queue
        self._body = b"x" * next_bytes
        self._channel.basic_consume(queue, self._forward)
        self._thread = threading.Thread(target=self._channel.start_consuming, daemon=True)

    def _forward(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        channel.basic_publish("", self._next_queue, self._body, pika.BasicProperties(delivery_mode=2))
        channel.basic_ack(method.delivery_tag)

    def start(self) -> Forwarder:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._connection.add_callback_threadsafe(self._channel.stop_consuming)
        self._thread.join(10)
        if not self._thread.is_alive():  # else the connection is still its thread's: the vhost's end closes it
            self._connection.close()


class Chain:
    """The hops of one queue type, and the end where the timer stops."""

    def __init__(self, url: str, queue_type: str) -> None:
        # A queue per hop; between two queues, a forwarder (the fetcher, its worker, the aggregator,
        # the exporter); the last queue is the completion's, consumed by the timer.
        self.queues = [f"floor-{queue_type}-{hop}" for hop in range(1, len(HOP_BYTES) + 1)]
        self._connection = pika.BlockingConnection(pika.URLParameters(url))
        self._channel = self._connection.channel()
        for queue in self.queues:
            self._channel.queue_declare(queue, durable=True, arguments={"x-queue-type": queue_type})
        self._channel.confirm_delivery()
        self._forwarders = [
            Forwarder(url, self.queues[hop], self.queues[hop + 1], HOP_BYTES[hop + 1]).start()
            for hop in range(len(self.queues) - 1)
        ]

    def once(self) -> float:
        """Seconds from publishing the first message to the last one's arrival at the end."""
        started = time.perf_counter()
        self._channel.basic_publish("", self.queues[0], b"x" * HOP_BYTES[0], pika.BasicProperties(delivery_mode=2))
        for method, _, _ in self._channel.consume(self.queues[-1], inactivity_timeout=30):
            if method is None:
                raise RuntimeError("a message did not come through the chain within 30 s")
            self._channel.basic_ack(method.delivery_tag)
            break
        arrived = time.perf_counter()
        self._channel.cancel()
        return arrived - started

    def close(self) -> None:
        for forwarder in self._forwarders:
            forwarder.stop()
        self._connection.close()


def measure(broker: Broker, runs: int) -> dict[str, Any]:
    """p50 and p95 through every hop, per queue type, the types interleaved run by run."""
    with broker.vhost("hotrepos-bench-floor") as vhost:
        url = broker.amqp_url(vhost)
        chains: dict[str, Chain] = {}
        try:
            for queue_type in QUEUE_TYPES:
                chains[queue_type] = Chain(url, queue_type)
            for chain in chains.values():
                chain.once()  # connections and queues warm
            seconds: dict[str, list[float]] = {queue_type: [] for queue_type in QUEUE_TYPES}
            for _ in range(runs):
                for queue_type, chain in chains.items():
                    seconds[queue_type].append(chain.once())
        finally:
            for chain in chains.values():
                chain.close()
    hops = len(HOP_BYTES)
    figures: dict[str, Any] = {"hops": hops, "message_bytes": list(HOP_BYTES), "runs": runs}
    for queue_type, durations in seconds.items():
        p50 = statistics.median(durations) * 1000
        figures[queue_type] = {
            "p50_ms": round(p50, 1),
            "p95_ms": round(percentile(durations, 0.95) * 1000, 1),
            "per_hop_p50_ms": round(p50 / hops, 1),
        }
    return figures
