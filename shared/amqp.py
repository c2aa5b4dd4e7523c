"""Broker connections: confirms, heartbeats, TLS from settings, and the topology declared at start."""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterable
from typing import Any

import structlog
from kombu.connection import Connection

from shared.settings import CommonSettings
from shared.topology import EXCHANGES, Subscription

log = structlog.get_logger("hotrepos.amqp")


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
    """Declare every exchange and the given subscriptions' queues; declaring is idempotent."""
    channel = connection.default_channel
    for exchange in EXCHANGES:
        exchange(channel).declare()
    for subscription in subscriptions:
        for queue in subscription.all_queues():
            queue(channel).declare()


def declare_when_reachable(connection: Connection, subscriptions: Iterable[Subscription]) -> None:
    """The broker may still be starting: retry with backoff instead of dying."""
    subscriptions = tuple(subscriptions)
    delay = 0.5
    while True:
        try:
            with connection.clone() as probe:
                declare_topology(probe, subscriptions)
            return
        except connection.connection_errors as exc:
            log.warning("broker.unreachable", error=str(exc), retry_in=delay)
            time.sleep(delay)
            delay = min(delay * 2, 10)
