"""The CLI's own exclusive queue on hotrepos.events, bound the way any new subscriber would bind one."""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from kombu.connection import Connection
from kombu.entity import Exchange, Queue, binding
from kombu.message import Message
from kombu.messaging import Consumer
from pydantic import ValidationError

from shared.events import EVENT_TYPES, CloudEvent, EventData
from shared.topology import EVENTS


class Inbox:
    """Messages as they arrive on the queue, one at a time."""

    def __init__(self, connection: Connection, queue: Queue) -> None:
        self.queue = queue
        self._connection = connection
        self._messages: deque[Message] = deque()

    def receive(self, message: Message) -> None:
        self._messages.append(message)

    def next(self, timeout: float) -> Message | None:
        """The next message, or None if none came within timeout seconds."""
        if not self._messages:
            try:
                self._connection.drain_events(timeout=timeout)
            except TimeoutError:
                return None
        return self._messages.popleft() if self._messages else None


@contextmanager
def subscribe(connection: Connection, binding_keys: Sequence[str], exchange: Exchange = EVENTS) -> Iterator[Inbox]:
    """A server-named queue that lives as long as this connection and touches no service's queue."""
    channel = connection.channel()
    queue = Queue(
        "",
        bindings=[binding(exchange, routing_key=key) for key in binding_keys],
        exclusive=True,
        auto_delete=True,
        durable=False,
    )(channel)
    queue.declare()
    inbox = Inbox(connection, queue)
    # Declared above: declaring again would use the server-given amq.gen-* name, which is refused.
    consumer = Consumer(channel, queues=[queue], on_message=inbox.receive, no_ack=True, auto_declare=False)
    consumer.consume()
    try:
        yield inbox
    finally:
        consumer.cancel()
        channel.close()


def decode(message: Message) -> tuple[CloudEvent | None, EventData | None]:
    """The CloudEvent in a message and its data when they pass the contract's schemas."""
    body = message.body if isinstance(message.body, bytes) else str(message.body).encode()
    try:
        event = CloudEvent.model_validate(json.loads(body))
    except (ValueError, ValidationError):
        return None, None
    model = EVENT_TYPES.get(event.type)
    if model is None:
        return event, None
    try:
        return event, event.data_as(model)
    except ValidationError:
        return event, None
