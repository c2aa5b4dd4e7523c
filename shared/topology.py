"""Exchanges, queues and bindings: the broker side of the contract, declared with kombu."""

from __future__ import annotations

import math
from dataclasses import dataclass

from kombu.entity import Exchange, Queue, binding
from kombu.transport.native_delayed_delivery import (
    CELERY_DELAYED_DELIVERY_EXCHANGE,
    MAX_LEVEL,
    MAX_NUMBER_OF_BITS_TO_USE,
    calculate_routing_key,
    level_name,
)

from shared.pipeline import DELIVERY_LIMIT
from shared.webhooks import WEBHOOK_DELIVERY

EVENTS = Exchange("hotrepos.events", type="topic", durable=True)
ALERTS = Exchange("hotrepos.alerts", type="fanout", durable=True)
CONTROL = Exchange("hotrepos.control", type="fanout", durable=True)
# Topic, not direct: routing keys are queue names, and the broker's topic permissions then stop one
# service's user from writing into another service's queues.
DLX = Exchange("hotrepos.dlx", type="topic", durable=True)
EXCHANGES = (EVENTS, ALERTS, CONTROL, DLX)

# Delayed retries go through the broker's delay levels as kombu declares them for Celery's native
# delayed delivery: 28 quorum queues, celery_delayed_<n>, each holding messages 2^n seconds, chained by
# dead-lettering. A message's routing key spells its delay in binary, one word a level, then the name
# of the queue it returns to. Every level holds one delay only, so no message waits behind a longer
# one, and the levels are replicated like every other queue. The fetcher's Celery tasks use them too.
DELAY = Exchange(level_name(MAX_LEVEL), type="topic", durable=True)
DELAYED = Exchange(CELERY_DELAYED_DELIVERY_EXCHANGE, type="topic", durable=True)
DELAY_LEVELS = MAX_NUMBER_OF_BITS_TO_USE
# The webhooks service's own messages, one delivery per (webhook subscription, event), so that each is
# retried on its own: an exchange of its own, which only that service writes to and declares.
WEBHOOK_DELIVERIES = Exchange("webhooks.deliveries", type="fanout", durable=True)

REASON_HEADER = "x-hotrepos-reason"
ORIGINAL_EXCHANGE_HEADER = "x-hotrepos-original-exchange"
ORIGINAL_ROUTING_KEY_HEADER = "x-hotrepos-original-routing-key"
RETRIES_HEADER = "x-hotrepos-retries"
# What the broker writes on a message it dead-letters: a delay level's expiry among them. A copy we
# publish again is a new message and goes without them, as Celery's retries do: RabbitMQ before 4.0
# reads them to find dead-letter cycles, and a message that came back through a delay level once would
# be taken for a cycle on its next pass through it. With at-least-once dead-lettering it then stays
# in that level for ever.
DEATH_HEADERS = frozenset(
    {
        "x-death",
        "x-first-death-exchange",
        "x-first-death-queue",
        "x-first-death-reason",
        "x-last-death-exchange",
        "x-last-death-queue",
        "x-last-death-reason",
    }
)


@dataclass(frozen=True)
class Subscription:
    """One service's durable quorum queue on one exchange, with its dead-letter queue."""

    service: str
    name: str
    exchange: Exchange
    binding_key: str
    # Exclusive: one server-named queue per running replica, gone with its connection (broadcasts).
    exclusive: bool = False

    @property
    def queue_name(self) -> str:
        return f"{self.service}.{self.name}"

    @property
    def dlq_name(self) -> str:
        return f"{self.queue_name}.dlq"

    def queue(self) -> Queue:
        if self.exclusive:
            return Queue(
                "",
                exchange=self.exchange,
                routing_key=self.binding_key,
                exclusive=True,
                auto_delete=True,
                durable=False,
                queue_arguments={
                    "x-dead-letter-exchange": DLX.name,
                    "x-dead-letter-routing-key": self.queue_name,
                },
            )
        return Queue(
            self.queue_name,
            bindings=[
                binding(self.exchange, routing_key=self.binding_key),
                # Where its delayed retries come back to it, and to it alone.
                binding(DELAYED, routing_key=delayed_binding_key(self.queue_name)),
            ],
            durable=True,
            queue_arguments={
                "x-queue-type": "quorum",
                "x-dead-letter-exchange": DLX.name,
                "x-dead-letter-routing-key": self.queue_name,
                "x-delivery-limit": DELIVERY_LIMIT,
            },
        )

    def dead_letter_queue(self) -> Queue:
        return Queue(
            self.dlq_name,
            exchange=DLX,
            routing_key=self.queue_name,
            durable=True,
            queue_arguments={"x-queue-type": "quorum"},
        )

    def all_queues(self) -> list[Queue]:
        """The queues declared at start; an exclusive queue is declared by its consumer instead."""
        if self.exclusive:
            return [self.dead_letter_queue()]
        return [self.queue(), self.dead_letter_queue()]


def on_event(service: str, event_type: str) -> Subscription:
    return Subscription(service, event_type, EVENTS, event_type)


FETCHER_REQUESTED = on_event("fetcher", "report.requested")
AGGREGATOR_PAGE_FETCHED = on_event("aggregator", "report.page.fetched")
EXPORTER_AGGREGATED = on_event("exporter", "report.aggregated")
NOTIFIER_EXPORTED = on_event("notifier", "report.exported")
NOTIFIER_FAILED = on_event("notifier", "report.failed")
NOTIFIER_ALERTS = Subscription("notifier", "alerts", ALERTS, "")
GATEWAY_PROGRESS = Subscription("gateway", "report.progress", EVENTS, "report.#")
WEBHOOKS_EXPORTED = on_event("webhooks", "report.exported")
WEBHOOKS_FAILED = on_event("webhooks", "report.failed")
WEBHOOKS_DELIVERIES = Subscription("webhooks", "deliveries", WEBHOOK_DELIVERIES, "")

SUBSCRIPTIONS: tuple[Subscription, ...] = (
    FETCHER_REQUESTED,
    AGGREGATOR_PAGE_FETCHED,
    EXPORTER_AGGREGATED,
    NOTIFIER_EXPORTED,
    NOTIFIER_FAILED,
    NOTIFIER_ALERTS,
    GATEWAY_PROGRESS,
    WEBHOOKS_EXPORTED,
    WEBHOOKS_FAILED,
    WEBHOOKS_DELIVERIES,
)

# Which principal publishes which event type, on that type's exchange; broker permissions derive from it.
PUBLISHES: dict[str, tuple[str, ...]] = {
    "fetcher": ("report.queued", "report.page.fetched", "report.failed"),
    "fetcher-beat": ("report.requested",),
    "aggregator": ("report.aggregated", "report.failed"),
    "exporter": ("report.exported", "report.failed"),
    "notifier": (),
    "gateway": ("report.requested", "report.cancel.requested"),
    "webhooks": (WEBHOOK_DELIVERY,),
}


def control_of(service: str) -> Subscription:
    """Each replica's own view of hotrepos.control: every replica of every service sees a command."""
    return Subscription(service, "control", CONTROL, "", exclusive=True)


def subscriptions_of(service: str) -> tuple[Subscription, ...]:
    return tuple(s for s in SUBSCRIPTIONS if s.service == service)


def subscriptions_with_control(service: str) -> tuple[Subscription, ...]:
    """A service's queues and, when it has any, the control queue each of its replicas binds."""
    subscriptions = subscriptions_of(service)
    return (*subscriptions, control_of(service)) if subscriptions else ()


def every_subscription() -> tuple[Subscription, ...]:
    services = dict.fromkeys(s.service for s in SUBSCRIPTIONS)
    return tuple(s for service in services for s in subscriptions_with_control(service))


# Alerts, control messages and a service's own messages have exchanges of their own; every other
# event is on hotrepos.events.
_EXCHANGE_OF_EVENT = {
    "alert.raised": ALERTS,
    "report.cancel.requested": CONTROL,
    WEBHOOK_DELIVERY: WEBHOOK_DELIVERIES,
}


def exchange_of(event_type: str) -> Exchange:
    """The exchange an event type is published on."""
    return _EXCHANGE_OF_EVENT.get(event_type, EVENTS)


def whole_delay(delay_seconds: float) -> int:
    """The delay levels count whole seconds, one at least: a delay rounds up, never down."""
    return max(1, math.ceil(delay_seconds))


def delayed_routing_key(delay_seconds: float, queue_name: str) -> str:
    """The routing key that brings a message back to one queue after at least delay_seconds."""
    return calculate_routing_key(whole_delay(delay_seconds), queue_name)


def redelivery_routing_key(queue_name: str) -> str:
    """A routing key for the delay's way out that returns a message to one queue at once (a replay)."""
    return "0." * DELAY_LEVELS + queue_name


def delayed_binding_key(queue_name: str) -> str:
    """One word a delay level, then exactly this queue's name: no other queue matches."""
    return "*." * DELAY_LEVELS + queue_name
