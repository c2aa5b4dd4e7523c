"""Webhook subscriptions and delivery records in a real Redis, as the gateway and the webhooks service share them."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator

import pytest
import redis

from shared.webhooks import (
    DELIVERIES_KEPT,
    DeliveryRecord,
    RedisDeliveryRecords,
    RedisWebhookSubscriptions,
    WebhookSubscription,
    new_secret,
)

NOW = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.UTC)


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(redis_url)
    yield connection
    connection.close()


def new_subscription(**changes: object) -> WebhookSubscription:
    fields: dict[str, object] = {
        "id": uuid.uuid4().hex,
        "url": "https://hooks.example.com/h",
        "events": ("report.exported",),
        "format": "standard",
        "secret": new_secret(),
        "created_at": NOW,
    }
    return WebhookSubscription.model_validate({**fields, **changes})


def record(event_id: str, status: str = "delivered", minutes: int = 0) -> DeliveryRecord:
    return DeliveryRecord.model_validate(
        {
            "event_id": event_id,
            "event_type": "report.exported",
            "report_id": "r",
            "status": status,
            "attempts": 1,
            "last_status_code": 200,
            "updated_at": NOW + dt.timedelta(minutes=minutes),
        }
    )


def test_a_subscription_is_stored_found_listed_and_deleted_with_its_history(client: redis.Redis) -> None:
    subscriptions, records = RedisWebhookSubscriptions(client), RedisDeliveryRecords(client)
    first = new_subscription(created_at=NOW - dt.timedelta(hours=1))
    second = new_subscription(format="slack", secret=None, description="the channel")
    try:
        subscriptions.add(first)
        subscriptions.add(second)
        assert subscriptions.get(first.id) == first
        mine = [s for s in subscriptions.all() if s.id in (first.id, second.id)]
        assert mine == [first, second]  # oldest first
        records.save(first.id, record("e-1"))

        assert subscriptions.delete(first.id) is True
        assert subscriptions.get(first.id) is None
        assert records.latest(first.id, 10) == [] and records.get(first.id, "e-1") is None
        assert subscriptions.delete(first.id) is False
    finally:
        subscriptions.delete(first.id)
        subscriptions.delete(second.id)


def test_records_are_newest_first_by_first_attempt_and_the_oldest_are_dropped(client: redis.Redis) -> None:
    records = RedisDeliveryRecords(client)
    sid = uuid.uuid4().hex
    try:
        for n in range(DELIVERIES_KEPT + 5):
            records.save(sid, record(f"e-{n}", "retrying", minutes=n))
        # A retry of an old delivery updates it in place, without moving it up the list.
        records.save(sid, record("e-10", "delivered", minutes=1000))
        latest = records.latest(sid, 1000)
        assert len(latest) == DELIVERIES_KEPT
        assert [r.event_id for r in latest[:2]] == [f"e-{DELIVERIES_KEPT + 4}", f"e-{DELIVERIES_KEPT + 3}"]
        assert latest[-1].event_id == "e-5"
        assert records.get(sid, "e-0") is None  # dropped with its place in the list
        assert records.get(sid, "e-10").status == "delivered"  # type: ignore[union-attr]
        assert 0 < client.ttl(f"hotrepos:webhooks:deliveries:{sid}") <= 30 * 24 * 3600
    finally:
        client.delete(f"hotrepos:webhooks:deliveries:{sid}", f"hotrepos:webhooks:delivery-order:{sid}")


def test_one_delivery_is_sent_by_one_replica_at_a_time(client: redis.Redis, redis_url: str) -> None:
    other_replica = redis.Redis.from_url(redis_url)
    one, other = RedisDeliveryRecords(client), RedisDeliveryRecords(other_replica)
    sid = uuid.uuid4().hex
    try:
        assert one.start_sending(sid, "e", 30)
        assert not other.start_sending(sid, "e", 30)
        one.done_sending(sid, "e")
        assert other.start_sending(sid, "e", 30)
    finally:
        other.done_sending(sid, "e")
        other_replica.close()
