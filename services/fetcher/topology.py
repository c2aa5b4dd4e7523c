"""The fetcher's own broker entities, beside the shared contract: its Celery tasks' exchange and queues."""

from __future__ import annotations

from kombu.entity import Exchange, Queue

from shared.topology import DLX

# Celery's task messages never leave the fetcher: own exchange and queue, on the same vhost.
TASK_EXCHANGE = Exchange("fetcher.tasks", type="direct", durable=True)
TASK_QUEUE = Queue(
    "fetcher.tasks",
    TASK_EXCHANGE,
    routing_key="fetcher.tasks",
    durable=True,
    # Classic, not quorum: Celery's countdown retries on quorum queues would need its
    # delayed-delivery exchanges, a second topology nobody else should see.
    queue_arguments={
        "x-queue-type": "classic",
        "x-dead-letter-exchange": DLX.name,
        "x-dead-letter-routing-key": "fetcher.tasks",
    },
)
# Where a page task the worker gives up on waits, for `hotrepos dlq replay fetcher.tasks`.
TASK_DEAD_LETTER_QUEUE = Queue(
    "fetcher.tasks.dlq", DLX, routing_key="fetcher.tasks", durable=True, queue_arguments={"x-queue-type": "quorum"}
)
