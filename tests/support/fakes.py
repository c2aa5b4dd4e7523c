"""In-memory stand-ins for the ports handlers depend on, for the unit tier: no broker, no Redis."""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from services.gateway.feed import Wakeup
from services.gateway.idempotency import IdempotentRequest
from services.notifier.templates import Email
from shared.api_tokens import ApiToken, token_digest
from shared.events import CloudEvent, EventData, event_type_of, new_event_id, report_id_of
from shared.handling import Claim, EventMeta
from shared.ownership import is_scheduled_report
from shared.progress import ReportStatus, apply_event
from shared.webhooks import DeliveryRecord, WebhookSubscription


def meta_of(data: EventData, *, event_id: str | None = None, attempt: int = 0, locale: str | None = None) -> EventMeta:
    return EventMeta(
        id=event_id or new_event_id(),
        type=event_type_of(data),
        time=dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.UTC),
        locale=locale,
        attempt=attempt,
    )


class RecordingPublisher:
    """Keeps what would have gone to the broker, in order."""

    def __init__(self) -> None:
        self.events: list[CloudEvent] = []

    def publish(self, data: EventData, *, event_id: str | None = None, correlationid: str | None = None) -> CloudEvent:
        event = CloudEvent(
            specversion="1.0",
            id=event_id or new_event_id(),
            type=event_type_of(data),
            source="tests/fake",
            time=dt.datetime.now(dt.UTC),
            data=data.model_dump(mode="json"),
            correlationid=correlationid,
        )
        self.events.append(event)
        return event

    def types(self) -> list[str]:
        return [event.type for event in self.events]


class InMemoryOutcomes:
    def __init__(self) -> None:
        self.decided: dict[str, str] = {}

    def claim(self, report_id: str, outcome: str) -> Claim:
        current = self.decided.get(report_id)
        if current is None:
            self.decided[report_id] = outcome
            return Claim.NEW
        return Claim.SAME if current == outcome else Claim.OTHER

    def release(self, report_id: str, outcome: str) -> None:
        if self.decided.get(report_id) == outcome:
            del self.decided[report_id]


class InMemoryCancellations:
    def __init__(self, *cancelled: str) -> None:
        self.cancelled = set(cancelled)

    def cancel(self, report_id: str) -> None:
        self.cancelled.add(report_id)

    def is_cancelled(self, report_id: str) -> bool:
        return report_id in self.cancelled


class InMemoryProcessedEvents:
    def __init__(self) -> None:
        self.handled: set[tuple[str, str]] = set()

    def seen(self, queue: str, event_id: str) -> bool:
        return (queue, event_id) in self.handled

    def remember(self, queue: str, event_id: str) -> None:
        self.handled.add((queue, event_id))


@dataclass
class SentEmail:
    message: Email
    to: list[str]
    key: str
    kind: str
    language: str


class RecordingMailer:
    """Sends nothing; raises what it is told to, once per queued error."""

    def __init__(self) -> None:
        self.sent: list[SentEmail] = []
        self.failures: list[BaseException] = []

    def send(self, message: Email, to: list[str], *, key: str, kind: str, language: str = "en") -> None:
        if self.failures:
            raise self.failures.pop(0)
        self.sent.append(SentEmail(message, list(to), key, kind, language))


@dataclass
class InMemorySentEmails:
    sent: set[str] = field(default_factory=set)
    sending: set[str] = field(default_factory=set)
    throttled: dict[str, str] = field(default_factory=dict)

    def was_sent(self, key: str) -> bool:
        return key in self.sent

    def start_sending(self, key: str) -> bool:
        if key in self.sending:
            return False
        self.sending.add(key)
        return True

    def mark_sent(self, key: str) -> None:
        self.sent.add(key)
        self.sending.discard(key)

    def abandon(self, key: str) -> None:
        self.sending.discard(key)

    def first_in_interval(self, fingerprint: str, interval_seconds: float, token: str) -> bool:
        return self.throttled.setdefault(fingerprint, token) == token


class InMemoryStatuses:
    """The gateway's projection in a dict, folded by the same pure fold as the Redis store."""

    def __init__(self) -> None:
        self.statuses: dict[str, ReportStatus] = {}
        self.owners: dict[str, str] = {}
        self.folds = 0

    def get(self, report_id: str) -> ReportStatus | None:
        return self.statuses.get(report_id)

    def apply(self, data: EventData, meta: EventMeta) -> ReportStatus | None:
        report_id = report_id_of(data, meta.id)
        if report_id is None:
            return None
        self.folds += 1
        updated = apply_event(self.statuses.get(report_id), data, meta, received_at=dt.datetime.now(dt.UTC))
        if updated is not None:
            self.statuses[report_id] = updated
        return updated

    async def status_and_owner(self, report_id: str) -> tuple[ReportStatus | None, str | None]:
        return self.statuses.get(report_id), self.owners.get(report_id)

    async def recent(self, *, offset: int, limit: int, visible_to: str | None = None) -> tuple[list[ReportStatus], int]:
        newest = sorted(
            (
                status
                for status in self.statuses.values()
                if visible_to is None
                or self.owners.get(status.report_id) == visible_to
                or is_scheduled_report(status.report_id, status.priority)
            ),
            key=lambda s: s.first_seen,
            reverse=True,
        )
        return newest[offset : offset + limit], len(newest)

    def record_owner(self, report_id: str, owner: str, at: dt.datetime) -> None:
        self.owners[report_id] = owner


class InMemoryFeed:
    """The statuses read in process; a stream re-reads at each keepalive, or when woken."""

    def __init__(self, statuses: InMemoryStatuses) -> None:
        self.statuses = statuses

    async def get(self, report_id: str) -> ReportStatus | None:
        return self.statuses.get(report_id)

    @asynccontextmanager
    async def subscription(self, report_id: str) -> AsyncIterator[Any]:
        # Nothing announces a change here: a stream wakes when woken, or re-reads at each keepalive.
        yield Wakeup()

    async def close(self) -> None:
        return None


class InMemoryIdempotencyKeys:
    def __init__(self) -> None:
        self.keys: dict[str, IdempotentRequest] = {}

    def claim(self, key: str, candidate: IdempotentRequest) -> IdempotentRequest:
        return self.keys.setdefault(key, candidate)

    def mark_published(self, key: str, request: IdempotentRequest) -> None:
        self.keys[key] = request.model_copy(update={"published": True})


class InMemoryRecentOrders:
    def __init__(self) -> None:
        self.orders: dict[tuple[str, str], str] = {}

    def last(self, owner: str, order_hash: str) -> str | None:
        return self.orders.get((owner, order_hash))

    def remember(self, owner: str, order_hash: str, report_id: str) -> None:
        self.orders[(owner, order_hash)] = report_id


class InMemoryApiTokens:
    """Tokens by their digest, as the Redis store keeps them; made from their plain text here."""

    def __init__(self, **tokens: ApiToken) -> None:
        self.tokens = {token_digest(token): record for token, record in tokens.items()}

    async def lookup_digest(self, digest: str) -> ApiToken | None:
        return self.tokens.get(digest)

    def revoke(self, token: str) -> None:
        record = self.tokens[token_digest(token)]
        self.tokens[token_digest(token)] = record.model_copy(update={"revoked_at": dt.datetime.now(dt.UTC)})


class FakeSearch:
    """Answers pages from a script: a SearchPage, or an exception to raise, per call."""

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[dt.date, int]] = []
        self.tickets: list[Any] = []

    def search_page(self, since: dt.date, page: int, ticket: Any = None) -> Any:
        self.calls.append((since, page))
        self.tickets.append(ticket)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, BaseException):
            raise answer
        return answer


class InMemoryWebhookSubscriptions:
    def __init__(self, *subscriptions: WebhookSubscription) -> None:
        self.subscriptions = {s.id: s for s in subscriptions}

    def add(self, subscription: WebhookSubscription) -> None:
        self.subscriptions[subscription.id] = subscription

    def get(self, subscription_id: str) -> WebhookSubscription | None:
        return self.subscriptions.get(subscription_id)

    def all(self) -> list[WebhookSubscription]:
        return sorted(self.subscriptions.values(), key=lambda s: (s.created_at, s.id))

    def delete(self, subscription_id: str) -> bool:
        return self.subscriptions.pop(subscription_id, None) is not None


class InMemoryDeliveryRecords:
    def __init__(self) -> None:
        self.records: dict[str, dict[str, DeliveryRecord]] = {}
        self.leases: set[tuple[str, str]] = set()

    def get(self, subscription_id: str, event_id: str) -> DeliveryRecord | None:
        return self.records.get(subscription_id, {}).get(event_id)

    def save(self, subscription_id: str, record: DeliveryRecord) -> None:
        self.records.setdefault(subscription_id, {})[record.event_id] = record

    def latest(self, subscription_id: str, limit: int) -> list[DeliveryRecord]:
        # Insertion order is the order of first attempts, as in the Redis store.
        return list(reversed(self.records.get(subscription_id, {}).values()))[:limit]

    def start_sending(self, subscription_id: str, event_id: str, lease_seconds: float) -> bool:
        if (subscription_id, event_id) in self.leases:
            return False
        self.leases.add((subscription_id, event_id))
        return True

    def done_sending(self, subscription_id: str, event_id: str) -> None:
        self.leases.discard((subscription_id, event_id))


class FakeResolver:
    """Names to addresses from a table, as DNS would answer them; an unknown name does not resolve."""

    def __init__(self, table: dict[str, list[str]] | None = None) -> None:
        self.table = dict(table or {})
        self.asked: list[str] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append(host)
        if host in self.table:
            return list(self.table[host])
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise socket.gaierror(socket.EAI_NONAME, f"{host} is not in the test's DNS") from None
        return [host]


class ScriptedSender:
    """Answers each POST with the next scripted result (the last one again when they run out)."""

    def __init__(self, *results: Any) -> None:
        self.results = list(results)
        self.requests: list[Any] = []

    def send(self, request: Any) -> Any:
        self.requests.append(request)
        return self.results.pop(0) if len(self.results) > 1 else self.results[0]


class RecordingDeliveryQueue:
    def __init__(self) -> None:
        self.enqueued: list[Any] = []

    def enqueue(self, deliveries: list[Any]) -> None:
        self.enqueued.extend(deliveries)
