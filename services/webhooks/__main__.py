"""Composition root of the webhooks service: `python -m services.webhooks`."""

from __future__ import annotations

import datetime as dt
import random
from functools import partial
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from services.webhooks.handlers import RetryPolicy, deliver_webhook, handle_report_exported, handle_report_failed
from services.webhooks.queue import BrokerDeliveryQueue
from services.webhooks.sender import HttpWebhookSender
from shared.bootstrap import bootstrap
from shared.ownership import RedisReportOwners
from shared.pipeline import PublishNotTaken, Route
from shared.settings import CommonSettings, load_settings
from shared.topology import WEBHOOKS_DELIVERIES, WEBHOOKS_EXPORTED, WEBHOOKS_FAILED
from shared.webhooks import (
    WEBHOOK_DELIVERY,
    AllowedHosts,
    RedisDeliveryRecords,
    RedisWebhookSubscriptions,
    UrlGuard,
    WebhookDelivery,
)

DEFAULT_POLICY = RetryPolicy()


class WebhooksSettings(CommonSettings):
    webhook_allowed_hosts: AllowedHosts = Field(
        default_factory=list, description="Hosts that may be plain http and inside the network (tests, an intranet)"
    )
    webhook_timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    webhook_max_attempts: int = Field(default=DEFAULT_POLICY.max_attempts, ge=1)
    webhook_retry_base_seconds: float = Field(default=DEFAULT_POLICY.base_delay, gt=0)
    webhook_retry_max_seconds: float = Field(default=DEFAULT_POLICY.max_delay, gt=0)
    gateway_public_url: str = Field(
        default="http://127.0.0.1:8000", description="Where subscribers download a report: Slack's link"
    )

    @field_validator("gateway_public_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must look like https://hotrepos.example.com")
        return value.rstrip("/")


def main() -> None:
    settings = load_settings(WebhooksSettings)
    service = bootstrap("webhooks", settings)
    subscriptions = RedisWebhookSubscriptions(service.redis)
    deliveries = BrokerDeliveryQueue(service.publisher, (PublishNotTaken, *service.connection.connection_errors))
    sender = HttpWebhookSender(UrlGuard.allowing(settings.webhook_allowed_hosts), settings.webhook_timeout_seconds)
    deliver = partial(
        deliver_webhook,
        subscriptions=subscriptions,
        records=RedisDeliveryRecords(service.redis),
        sender=sender,
        policy=RetryPolicy(
            max_attempts=settings.webhook_max_attempts,
            base_delay=settings.webhook_retry_base_seconds,
            max_delay=settings.webhook_retry_max_seconds,
        ),
        rng=random.Random(),
        clock=lambda: dt.datetime.now(dt.UTC),
        public_url=settings.gateway_public_url,
        # Longer than one attempt can take (connect, then read): a replica that died mid-send frees it then.
        lease_seconds=3 * settings.webhook_timeout_seconds + 5,
        busy_delay=settings.webhook_timeout_seconds,
    )
    owners = RedisReportOwners(service.redis)
    exported = partial(handle_report_exported, subscriptions=subscriptions, deliveries=deliveries, owners=owners)
    failed = partial(handle_report_failed, subscriptions=subscriptions, deliveries=deliveries, owners=owners)
    try:
        service.run(
            {
                WEBHOOKS_EXPORTED: {"report.exported": Route(exported, forwards_envelope=True)},
                WEBHOOKS_FAILED: {"report.failed": Route(failed, forwards_envelope=True)},
                WEBHOOKS_DELIVERIES: {WEBHOOK_DELIVERY: Route(deliver, model=WebhookDelivery)},
            },
            # One delivery at a time per replica, and a slow receiver holds its timeout: a small prefetch
            # leaves the rest of a backlog to the other replicas.
            prefetch_count=4,
        )
    finally:
        sender.close()


if __name__ == "__main__":
    main()
