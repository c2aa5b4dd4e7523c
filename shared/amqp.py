"""Broker connections: confirms, heartbeats, TLS from settings, and the topology declared at start."""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterable
from typing import Any

import structlog
from kombu.connection import Connection
from kombu.entity import Queue
from kombu.transport.native_delayed_delivery import declare_native_delayed_delivery_exchanges_and_queues

from shared.settings import CommonSettings
from shared.topology import EXCHANGES, Subscription

log = structlog.get_logger("hotrepos.amqp")

PRECONDITION_FAILED = 406
QUEUE_TYPE_MIGRATION = (
    "The queue exists with other arguments than this release declares (every queue is a quorum queue "
    "now), and RabbitMQ cannot change them in place: move its messages out, delete it, start this "
    "release, and move them back, as docs/operations.md says under 'Moving to quorum queues'."
)


def connect(settings: CommonSettings, *, heartbeat: int = 30) -> Connection:
    """A broker connection with publisher confirms, heartbeats and, for amqps://, TLS from settings."""
    ssl_options: dict[str, Any] | bool = False
    if settings.amqp_url.startswith("amqps://"):
        context = ssl.create_default_context(cafile=str(settings.amqp_ca_file) if settings.amqp_ca_file else None)
        if settings.amqp_cert_file:
            context.load_cert_chain(
                str(settings.amqp_cert_file),
                str(settings.amqp_key_file) if settings.amqp_key_file else None,
            )
        ssl_options = {"context": context}
    return Connection(
        settings.amqp_url,
        heartbeat=heartbeat,
        ssl=ssl_options,
        transport_options={"confirm_publish": True, "client_properties": {"product": "hotrepos"}},
        connect_timeout=10,
    )


def declare_topology(connection: Connection, subscriptions: Iterable[Subscription]) -> None:
    """Declare every exchange, the delay levels and the given subscriptions' queues; all idempotent."""
    channel = connection.default_channel
    for exchange in EXCHANGES:
        exchange(channel).declare()
    # Declared as kombu declares them for Celery, argument for argument, so whoever comes first wins nothing.
    declare_native_delayed_delivery_exchanges_and_queues(connection, "quorum")
    for subscription in subscriptions:
        for queue in subscription.all_queues():
            queue(channel).declare()


def declare_when_reachable(
    connection: Connection, subscriptions: Iterable[Subscription], *, extra: Iterable[Queue] = ()
) -> None:
    """Declare the topology, retrying with backoff while the broker starts; stop if a queue is of another type."""
    subscriptions, extra = tuple(subscriptions), tuple(extra)
    delay = 0.5
    while True:
        try:
            with connection.clone() as probe:
                declare_topology(probe, subscriptions)
                for queue in extra:
                    queue(probe.default_channel).declare()
            return
        except connection.connection_errors as exc:
            log.warning("broker.unreachable", error=str(exc), retry_in=delay)
            time.sleep(delay)
            delay = min(delay * 2, 10)
        except connection.channel_errors as exc:
            reason = str(exc)
            if getattr(exc, "reply_code", None) == PRECONDITION_FAILED and "inequivalent arg" in reason:
                raise SystemExit(f"hotrepos: {reason}. {QUEUE_TYPE_MIGRATION}") from None
            raise
