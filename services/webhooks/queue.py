"""Deliveries onto the webhooks service's own exchange, one message each, so each is retried on its own."""

from __future__ import annotations

from shared.context import current_context
from shared.handling import RetryLater
from shared.publisher import Publisher, build_event
from shared.topology import WEBHOOK_DELIVERIES
from shared.webhooks import WEBHOOK_DELIVERY, WebhookDelivery, delivery_id


class BrokerDeliveryQueue:
    """Publishes each delivery, confirmed, under an id derived from its subscription and event."""

    def __init__(self, publisher: Publisher, broker_errors: tuple[type[BaseException], ...]) -> None:
        self._publisher = publisher
        self._broker_errors = broker_errors

    def enqueue(self, deliveries: list[WebhookDelivery]) -> None:
        # In the scope of the event being handled: each delivery carries its correlation id and trace.
        context = current_context()
        try:
            for delivery in deliveries:
                event = build_event(
                    delivery,
                    source=self._publisher.source,
                    event_id=delivery_id(delivery.subscription_id, delivery.event_id),
                    context=context,
                    event_type=WEBHOOK_DELIVERY,
                )
                self._publisher.publish_event(event, exchange=WEBHOOK_DELIVERIES)
        except self._broker_errors as exc:
            # Those already published come again under the same ids, and are sent once all the same.
            raise RetryLater(f"the broker does not take deliveries now: {exc}") from exc
