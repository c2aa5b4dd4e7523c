"""The fetcher's own broker entities, beside the shared contract: its Celery tasks' exchange and queues."""

from __future__ import annotations

from kombu.entity import Exchange, Queue

from shared.topology import DLX

# Celery's task messages never leave the fetcher: own exchange and queue, on the same vhost. A quorum
# queue, replicated like every other; Celery's countdowns then go through the broker's delay levels
# (shared/topology.py), which need a topic exchange to come back through.
TASK_EXCHANGE = Exchange("fetcher.tasks", type="topic", durable=True)
TASK_QUEUE = Queue(
    "fetcher.tasks",
    TASK_EXCHANGE,
    routing_key="fetcher.tasks",
    durable=True,
    queue_arguments={
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": DLX.name,
        "x-dead-letter-routing-key": "fetcher.tasks",
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    },
)
# Where a page task the worker gives up on waits, for `hotrepos dlq replay fetcher.tasks`.
TASK_DEAD_LETTER_QUEUE = Queue(
    "fetcher.tasks.dlq", DLX, routing_key="fetcher.tasks", durable=True, queue_arguments={"x-queue-type": "quorum"}
)
