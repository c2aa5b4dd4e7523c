"""Exchanges, queues and bindings: the broker side of the contract, declared with kombu."""

from __future__ import annotations

from dataclasses import dataclass

from kombu.entity import Exchange, Queue, binding

from shared.pipeline import DELIVERY_LIMIT
from shared.webhooks import WEBHOOK_DELIVERY

EVENTS = Exchange("hotrepos.events", type="topic", durable=True)
ALERTS = Exchange("hotrepos.alerts", type="fanout", durable=True)
CONTROL = Exchange("hotrepos.control", type="fanout", durable=True)
# Topic, not direct, for the three below: routing keys are queue names, and the broker's topic
# permissions then stop one service's user from writing into another service's queues.
DLX = Exchange("hotrepos.dlx", type="topic", durable=True)
RETRY = Exchange("hotrepos.retry", type="topic", durable=True)
REDELIVER = Exchange("hotrepos.redeliver", type="topic", durable=True)
EXCHANGES = (EVENTS, ALERTS, CONTROL, DLX, RETRY, REDELIVER)
# The webhooks service's own messages, one delivery per (webhook subscription, event), so that each is
# retried on its own: an exchange of its own, which only that service writes to and declares.
WEBHOOK_DELIVERIES = Exchange("webhooks.deliveries", type="fanout", durable=True)

REASON_HEADER = "x-hotrepos-reason"
ORIGINAL_EXCHANGE_HEADER = "x-hotrepos-original-exchange"
ORIGINAL_ROUTING_KEY_HEADER = "x-hotrepos-original-routing-key"
RETRIES_HEADER = "x-hotrepos-retries"


@dataclass(frozen=True)
class Subscription:
    """One service's durable quorum queue on one exchange, with its dead-letter and retry queues."""

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

    @property
    def retry_name(self) -> str:
        return f"{self.queue_name}.retry"

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
                # Where its delayed retries come back from, through the broker's dead-lettering.
                binding(REDELIVER, routing_key=self.queue_name),
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

    def retry_queue(self) -> Queue:
        # A message waits here for its per-message TTL, then the broker dead-letters it back to this
        # subscription's queue alone, not to every queue bound to the event's routing key.
        return Queue(
            self.retry_name,
            exchange=RETRY,
            routing_key=self.queue_name,
            durable=True,
            queue_arguments={
                "x-queue-type": "classic",
                "x-dead-letter-exchange": REDELIVER.name,
                "x-dead-letter-routing-key": self.queue_name,
            },
        )

    def all_queues(self) -> list[Queue]:
        """The queues declared at start; an exclusive queue is declared by its consumer instead."""
        if self.exclusive:
            return [self.dead_letter_queue()]
        return [self.queue(), self.dead_letter_queue(), self.retry_queue()]


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
    "fetcher": ("report.page.fetched", "report.failed"),
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
