"""Webhooks handlers: a report's outcome fans out into one delivery per subscription; each delivery
is signed, sent, and retried on its own until it gets a 2xx, fails for good or runs out of attempts."""

from __future__ import annotations

import datetime as dt
import json
import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

import structlog
from pydantic import ValidationError
from standardwebhooks.webhooks import Webhook

from shared.events import ReportExported, ReportFailed
from shared.handling import EventMeta, Rejected, RetryLater
from shared.ownership import ReportOwners
from shared.webhooks import (
    DeliveryRecord,
    DeliveryRecords,
    WebhookDelivery,
    WebhookSubscription,
    WebhookSubscriptions,
)

log = structlog.get_logger("hotrepos.webhooks")

SendOutcome = Literal["answered", "timeout", "connection-error", "refused"]
# Answers worth trying again: the receiver is overloaded, slow or down for now.
RETRYABLE_STATUSES = frozenset({408, 429})
PERIOD_WORDS = {"day": "daily", "week": "weekly", "month": "monthly"}


@dataclass(frozen=True)
class WebhookRequest:
    """One POST to a subscriber: its body and headers, ready to go."""

    url: str
    body: bytes
    headers: Mapping[str, str]
    format: str


@dataclass(frozen=True)
class SendResult:
    """What became of one POST; never raised, so that the handler alone decides what follows."""

    outcome: SendOutcome
    status_code: int | None = None
    retry_after: float | None = None  # seconds, from the answer's Retry-After header
    error: str | None = None  # what went wrong, without the URL (its path may be a secret)


class WebhookSender(Protocol):
    def send(self, request: WebhookRequest) -> SendResult:
        """POST once: no redirect followed, the URL guarded again at connection time."""
        ...


class DeliveryQueue(Protocol):
    """Where deliveries go to be sent, each one a message of its own, retried on its own."""

    def enqueue(self, deliveries: list[WebhookDelivery]) -> None: ...


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter; a receiver's Retry-After wins, up to the cap."""

    # With the defaults, about a day on average before a delivery is given up (see expected_total).
    max_attempts: int = 58
    base_delay: float = 5.0
    max_delay: float = 3600.0

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        """How long to wait after attempt number `attempt` (0 for the first) failed."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_delay)
        return rng.uniform(0, self.ceiling(attempt))

    def ceiling(self, attempt: int) -> float:
        return min(self.max_delay, self.base_delay * 2.0 ** min(attempt, 60))

    def expected_total(self) -> float:
        """The mean time from the first attempt to the last (full jitter waits half the ceiling)."""
        return sum(self.ceiling(attempt) / 2 for attempt in range(self.max_attempts - 1))


def handle_report_exported(
    event: ReportExported,
    meta: EventMeta,
    *,
    subscriptions: WebhookSubscriptions,
    deliveries: DeliveryQueue,
    owners: ReportOwners,
) -> None:
    fan_out(event.report_id, meta, subscriptions=subscriptions, deliveries=deliveries, owners=owners)


def handle_report_failed(
    event: ReportFailed,
    meta: EventMeta,
    *,
    subscriptions: WebhookSubscriptions,
    deliveries: DeliveryQueue,
    owners: ReportOwners,
) -> None:
    fan_out(event.report_id, meta, subscriptions=subscriptions, deliveries=deliveries, owners=owners)


def fan_out(
    report_id: str,
    meta: EventMeta,
    *,
    subscriptions: WebhookSubscriptions,
    deliveries: DeliveryQueue,
    owners: ReportOwners,
) -> None:
    """One delivery per subscription that wants this event type and whose creator may see the report,
    carrying the event as it came."""
    wanting = [s for s in subscriptions.all() if meta.type in s.events]
    if not wanting:
        return
    report_owner = owners.owner_of(report_id)
    wanting = [s for s in wanting if s.hears_of(report_id, report_owner)]
    if not wanting:
        return
    if meta.cloud_event is None:
        raise Rejected("the event's CloudEvent is missing, so there is nothing to forward")
    body = meta.cloud_event.model_dump_json(exclude_none=True)
    deliveries.enqueue(
        [
            WebhookDelivery.model_validate(
                {
                    "subscription_id": subscription.id,
                    "event_id": meta.id,
                    "event_type": meta.type,
                    "report_id": report_id,
                    "body": body,
                }
            )
            for subscription in wanting
        ]
    )
    log.info("webhooks.fanned_out", deliveries=len(wanting))


def deliver_webhook(
    message: WebhookDelivery,
    meta: EventMeta,
    *,
    subscriptions: WebhookSubscriptions,
    records: DeliveryRecords,
    sender: WebhookSender,
    policy: RetryPolicy,
    rng: random.Random,
    clock: Callable[[], dt.datetime],
    public_url: str,
    lease_seconds: float,
    busy_delay: float,
) -> None:
    """Send one delivery; RetryLater when it may work later, Rejected when it never will.

    A copy of this very delivery being sent by another replica (the lease is held) comes back after
    busy_delay, by when that replica is done, and then finds it delivered.
    """
    subscription = subscriptions.get(message.subscription_id)
    if subscription is None:
        # Deleted while this delivery waited: it gets no more of them.
        log.info("webhook.subscription_gone", subscription_id=message.subscription_id)
        return
    record = records.get(subscription.id, message.event_id)
    if record is not None and record.status == "delivered":
        return  # a copy of this very delivery got through already
    if not records.start_sending(subscription.id, message.event_id, lease_seconds):
        raise RetryLater(f"webhook {subscription.id}: being delivered by another replica", busy_delay)
    try:
        now = clock()
        request = webhook_request(subscription, message, now, public_url)
        result = sender.send(request)
        _settle(subscription, message, record, result, meta.attempt, now, records=records, policy=policy, rng=rng)
    finally:
        records.done_sending(subscription.id, message.event_id)


def _settle(
    subscription: WebhookSubscription,
    message: WebhookDelivery,
    previous: DeliveryRecord | None,
    result: SendResult,
    attempt: int,
    now: dt.datetime,
    *,
    records: DeliveryRecords,
    policy: RetryPolicy,
    rng: random.Random,
) -> None:
    def save(status: Literal["delivered", "retrying", "failed"], error: str | None) -> None:
        records.save(
            subscription.id,
            DeliveryRecord(
                event_id=message.event_id,
                event_type=message.event_type,
                report_id=message.report_id,
                status=status,
                attempts=(previous.attempts if previous else 0) + 1,
                last_status_code=result.status_code,
                last_error=error,
                delivered_at=now if status == "delivered" else None,
                updated_at=now,
            ),
        )

    if result.outcome == "answered" and result.status_code is not None and 200 <= result.status_code < 300:
        log.info("webhook.delivered", subscription_id=subscription.id, status_code=result.status_code)
        try:
            save("delivered", None)
        except Exception as exc:
            # Delivered all the same: a retry for the sake of the record would send it twice.
            log.warning("webhook.record_not_saved", subscription_id=subscription.id, error=str(exc))
        return
    reason = describe(result)
    if is_retryable(result):
        if attempt + 1 < policy.max_attempts:
            save("retrying", reason)
            raise RetryLater(f"webhook {subscription.id}: {reason}", policy.delay(attempt, result.retry_after, rng))
        reason = f"{reason} (gave up after {attempt + 1} attempts)"
    save("failed", reason)
    raise Rejected(f"webhook {subscription.id}: {reason}")


def is_retryable(result: SendResult) -> bool:
    if result.outcome in ("timeout", "connection-error"):
        return True
    code = result.status_code
    return result.outcome == "answered" and code is not None and (code >= 500 or code in RETRYABLE_STATUSES)


def describe(result: SendResult) -> str:
    if result.outcome != "answered":
        return result.error or result.outcome
    if result.status_code is not None and 300 <= result.status_code < 400:
        return f"HTTP {result.status_code}: a redirect, which is not followed"
    return f"HTTP {result.status_code}"


def webhook_request(
    subscription: WebhookSubscription, message: WebhookDelivery, now: dt.datetime, public_url: str
) -> WebhookRequest:
    if subscription.format == "slack":
        text = slack_text(message, public_url)
        return WebhookRequest(
            subscription.url,
            json.dumps({"text": text}).encode(),
            {"Content-Type": "application/json"},
            subscription.format,
        )
    return standard_request(subscription, message, now)


def standard_request(subscription: WebhookSubscription, message: WebhookDelivery, now: dt.datetime) -> WebhookRequest:
    """Standard Webhooks: the CloudEvent as the body, signed over "{id}.{timestamp}.{body}"."""
    if not subscription.secret:
        raise Rejected(f"webhook {subscription.id}: a standard subscription without a secret cannot sign")
    timestamp = math.floor(now.timestamp())
    signature = Webhook(subscription.secret).sign(
        message.event_id, dt.datetime.fromtimestamp(timestamp, dt.UTC), message.body
    )
    headers = {
        "Content-Type": "application/json",
        "webhook-id": message.event_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature,
    }
    return WebhookRequest(subscription.url, message.body.encode(), headers, subscription.format)


def slack_text(message: WebhookDelivery, public_url: str) -> str:
    """What a Slack channel reads: the period, the count, the top languages and the link, or the reason."""
    try:
        data = json.loads(message.body).get("data")
        if message.event_type == "report.exported":
            exported = ReportExported.model_validate(data)
        else:
            failed = ReportFailed.model_validate(data)
    except (ValueError, AttributeError, ValidationError) as exc:
        raise Rejected(f"the delivery's body is not a {message.event_type} CloudEvent: {exc}") from None
    if message.event_type == "report.exported":
        spec = exported.spec
        languages = ", ".join(f"{_slack(lang.language)} {lang.count}" for lang in exported.top_languages[:5])
        link = f"{public_url.rstrip('/')}/api/reports/{exported.report_id}/download"
        return (
            f"The {PERIOD_WORDS[spec.period]} hotrepos report is ready: {exported.repositories} repositories "
            f"created since {spec.since.isoformat()}. Top languages: {languages or 'none'}. "
            f"<{link}|Download the CSV>"
        )
    period = f" ({PERIOD_WORDS[failed.spec.period]})" if failed.spec else ""
    return (
        f"The hotrepos report {failed.report_id}{period} could not be produced: "
        f"it failed at stage {_slack(failed.stage)}: {_slack(failed.reason)}"
    )


def _slack(text: str) -> str:
    """Slack reads &, < and > as markup: escaped, as its message formatting asks."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
