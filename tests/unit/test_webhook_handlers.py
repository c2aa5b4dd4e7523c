"""The webhooks handlers with in-memory fakes: the fan-out, one delivery's verdicts, signing, Slack's text."""

from __future__ import annotations

import datetime as dt
import json
import random
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook

from services.webhooks.handlers import (
    RetryPolicy,
    SendResult,
    WebhookRequest,
    deliver_webhook,
    handle_report_exported,
    handle_report_failed,
)
from shared.events import (
    CloudEvent,
    EventData,
    LanguageCount,
    ReportExported,
    ReportFailed,
    ReportSpec,
    event_type_of,
)
from shared.handling import EventMeta, Rejected, RetryLater
from shared.webhooks import WebhookDelivery, WebhookSubscription, new_secret
from tests.support.fakes import (
    InMemoryDeliveryRecords,
    InMemoryWebhookSubscriptions,
    RecordingDeliveryQueue,
    ScriptedSender,
)

NOW = dt.datetime(2026, 11, 22, 12, 0, 5, tzinfo=dt.UTC)
SPEC = ReportSpec(period="week", since=dt.date(2026, 11, 15))
EXPORTED = ReportExported(
    report_id="r-1",
    path="reports/hotrepos-week-2026-11-15-r-1.csv",
    rows=500,
    sha256="a" * 64,
    layout="rows",
    spec=SPEC,
    repositories=500,
    top_languages=[LanguageCount(language="Python", count=120), LanguageCount(language="C<++>", count=3)],
)
FAILED = ReportFailed(report_id="r-2", stage="fetch", reason="GitHub said <no> & stopped", spec=SPEC)
POLICY = RetryPolicy(max_attempts=5, base_delay=1.0, max_delay=60.0)
PUBLIC_URL = "https://hotrepos.example.com"
OK = SendResult("answered", 200)


def subscription(
    events: tuple[Any, ...] = ("report.exported", "report.failed"), *, format: Any = "standard", sid: str = "s-1"
) -> WebhookSubscription:
    return WebhookSubscription(
        id=sid,
        url=f"https://hooks.example.com/{sid}",
        events=events,
        format=format,
        secret=new_secret() if format == "standard" else None,
        created_at=NOW,
    )


class KnownOwners:
    """Report owners by id (written with _ for -, as keyword arguments)."""

    def __init__(self, **owners: str) -> None:
        self.owners = owners

    def owner_of(self, report_id: str) -> str | None:
        return self.owners.get(report_id.replace("-", "_"))


NO_OWNERS = KnownOwners()


def cloud_event_of(data: EventData, event_id: str = "e-1") -> CloudEvent:
    return CloudEvent(
        specversion="1.0",
        id=event_id,
        type=event_type_of(data),
        source="hotrepos/exporter",
        time=NOW,
        data=data.model_dump(mode="json"),
        correlationid="r-1",
        locale="fr",
        traceparent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    )


def delivery_of(data: EventData, sid: str = "s-1", event_id: str = "e-1") -> WebhookDelivery:
    event = cloud_event_of(data, event_id)
    return WebhookDelivery.model_validate(
        {
            "subscription_id": sid,
            "event_id": event.id,
            "event_type": event.type,
            "report_id": getattr(data, "report_id", "r"),
            "body": event.model_dump_json(exclude_none=True),
        }
    )


class Delivering:
    """deliver_webhook with its fakes, and what they saw."""

    def __init__(self, *results: SendResult, subscriptions: tuple[WebhookSubscription, ...] | None = None) -> None:
        self.subscriptions = InMemoryWebhookSubscriptions(*(subscriptions or (subscription(),)))
        self.records = InMemoryDeliveryRecords()
        self.sender = ScriptedSender(*(results or (OK,)))

    def __call__(self, message: WebhookDelivery, attempt: int = 0) -> None:
        deliver_webhook(
            message,
            EventMeta(id="d-1", type="webhook.delivery", attempt=attempt),
            subscriptions=self.subscriptions,
            records=self.records,
            sender=self.sender,
            policy=POLICY,
            rng=random.Random(7),
            clock=lambda: NOW,
            public_url=PUBLIC_URL,
            lease_seconds=35,
            busy_delay=10,
        )

    def record(self, sid: str = "s-1", event_id: str = "e-1") -> Any:
        return self.records.get(sid, event_id)


def test_an_outcome_fans_out_to_each_subscription_that_wants_it_carrying_the_event_as_it_came() -> None:
    wanted = (subscription(("report.exported",), sid="a"), subscription(sid="b"), subscription(sid="c", format="slack"))
    unwanted = subscription(("report.failed",), sid="d")
    subscriptions = InMemoryWebhookSubscriptions(*wanted, unwanted)
    queue = RecordingDeliveryQueue()
    event = cloud_event_of(EXPORTED)

    handle_report_exported(
        EXPORTED, EventMeta.of(event), subscriptions=subscriptions, deliveries=queue, owners=NO_OWNERS
    )

    assert [d.subscription_id for d in queue.enqueued] == ["a", "b", "c"]
    for delivery in queue.enqueued:
        assert (delivery.event_id, delivery.event_type, delivery.report_id) == ("e-1", "report.exported", "r-1")
        # Every attribute of the envelope, extensions included, exactly as the publisher encodes it.
        assert delivery.body == event.model_dump_json(exclude_none=True)
        assert json.loads(delivery.body)["traceparent"] == event.traceparent


def test_a_failure_fans_out_too_and_nothing_is_enqueued_without_a_subscriber() -> None:
    queue = RecordingDeliveryQueue()
    event = cloud_event_of(FAILED, "e-2")
    subscriptions = InMemoryWebhookSubscriptions(subscription(("report.exported",)))
    handle_report_failed(FAILED, EventMeta.of(event), subscriptions=subscriptions, deliveries=queue, owners=NO_OWNERS)
    assert queue.enqueued == []
    subscriptions.add(subscription(("report.failed",), sid="f"))
    handle_report_failed(FAILED, EventMeta.of(event), subscriptions=subscriptions, deliveries=queue, owners=NO_OWNERS)
    assert [(d.subscription_id, d.event_type) for d in queue.enqueued] == [("f", "report.failed")]


def test_a_subscription_hears_only_of_the_reports_its_creator_may_see() -> None:
    subscriptions = InMemoryWebhookSubscriptions(
        subscription(sid="alices").model_copy(update={"owner": "alice"}),
        subscription(sid="admins").model_copy(update={"owner": "root", "owner_admin": True}),
        subscription(sid="from-before-owners"),
    )

    def heard_of(report_id: str, owners: KnownOwners) -> list[str]:
        queue = RecordingDeliveryQueue()
        data = EXPORTED.model_copy(update={"report_id": report_id})
        handle_report_exported(
            data, EventMeta.of(cloud_event_of(data)), subscriptions=subscriptions, deliveries=queue, owners=owners
        )
        return [d.subscription_id for d in queue.enqueued]

    everyone = ["admins", "alices", "from-before-owners"]
    assert heard_of("r-1", KnownOwners(r_1="alice")) == everyone
    assert heard_of("r-1", KnownOwners(r_1="bob")) == ["admins", "from-before-owners"]
    assert heard_of("r-1", NO_OWNERS) == ["admins", "from-before-owners"]  # another client's, over the broker
    assert heard_of("scheduled-day-2026-11-22", NO_OWNERS) == everyone


def test_a_standard_delivery_is_the_signed_cloudevent_that_standard_webhooks_verifies() -> None:
    delivering = Delivering()
    message = delivery_of(EXPORTED)
    delivering(message)

    [request] = delivering.sender.requests
    assert isinstance(request, WebhookRequest)
    assert request.url == "https://hooks.example.com/s-1" and request.format == "standard"
    assert request.body == message.body.encode()
    headers = dict(request.headers)
    assert headers["Content-Type"] == "application/json"
    assert headers["webhook-id"] == "e-1"
    assert headers["webhook-timestamp"] == str(int(NOW.timestamp()))
    assert headers["webhook-signature"].startswith("v1,")
    secret = delivering.subscriptions.get("s-1").secret  # type: ignore[union-attr]
    # As a receiver verifies it (the package checks the timestamp against its own clock).
    expected = Webhook(secret).sign("e-1", NOW, message.body)
    assert headers["webhook-signature"] == expected
    record = delivering.record()
    assert (record.status, record.attempts, record.last_status_code, record.delivered_at) == ("delivered", 1, 200, NOW)


@pytest.mark.parametrize("status", [500, 503, 408, 429])
def test_an_overloaded_or_slow_answer_is_retried_later_with_backoff(status: int) -> None:
    delivering = Delivering(SendResult("answered", status))
    with pytest.raises(RetryLater) as retry:
        delivering(delivery_of(EXPORTED), attempt=3)
    assert retry.value.delay is not None and 0 <= retry.value.delay <= POLICY.base_delay * 2**3
    assert f"HTTP {status}" in str(retry.value)
    record = delivering.record()
    assert (record.status, record.attempts, record.last_status_code, record.last_error) == (
        "retrying",
        1,
        status,
        f"HTTP {status}",
    )


def test_retry_after_is_honoured_up_to_the_cap() -> None:
    with pytest.raises(RetryLater) as retry:
        Delivering(SendResult("answered", 429, retry_after=7))(delivery_of(EXPORTED))
    assert retry.value.delay == 7
    with pytest.raises(RetryLater) as capped:
        Delivering(SendResult("answered", 503, retry_after=86_400))(delivery_of(EXPORTED))
    assert capped.value.delay == POLICY.max_delay


@pytest.mark.parametrize(
    "result",
    [SendResult("timeout", error="no answer within 10s"), SendResult("connection-error", error="connection refused")],
)
def test_timeouts_and_failed_connections_are_retried(result: SendResult) -> None:
    delivering = Delivering(result)
    with pytest.raises(RetryLater, match=result.error or ""):
        delivering(delivery_of(EXPORTED))
    assert delivering.record().last_error == result.error


@pytest.mark.parametrize(
    ("result", "reason"),
    [
        (SendResult("answered", 410), "HTTP 410"),
        (SendResult("answered", 400), "HTTP 400"),
        (SendResult("answered", 302), "HTTP 302: a redirect, which is not followed"),
        (SendResult("refused", error="URL refused: 127.0.0.1 is a loopback address"), "loopback"),
    ],
)
def test_any_other_answer_or_a_refused_url_fails_at_once(result: SendResult, reason: str) -> None:
    delivering = Delivering(result)
    with pytest.raises(Rejected, match=reason):
        delivering(delivery_of(EXPORTED))
    record = delivering.record()
    assert (record.status, record.attempts) == ("failed", 1)
    assert reason in record.last_error


def test_the_last_attempt_gives_up_and_says_after_how_many() -> None:
    delivering = Delivering(SendResult("answered", 503))
    with pytest.raises(Rejected, match=r"HTTP 503 \(gave up after 5 attempts\)"):
        delivering(delivery_of(EXPORTED), attempt=POLICY.max_attempts - 1)
    assert delivering.record().status == "failed"


def test_attempts_add_up_and_every_one_carries_the_same_webhook_id() -> None:
    delivering = Delivering(SendResult("answered", 500), SendResult("answered", 500), OK)
    message = delivery_of(EXPORTED)
    for attempt in range(2):
        with pytest.raises(RetryLater):
            delivering(message, attempt=attempt)
    delivering(message, attempt=2)
    assert {r.headers["webhook-id"] for r in delivering.sender.requests} == {"e-1"}
    record = delivering.record()
    assert (record.status, record.attempts, record.last_error) == ("delivered", 3, None)


def test_a_deleted_subscription_gets_nothing_more() -> None:
    delivering = Delivering(subscriptions=(subscription(sid="other"),))
    delivering(delivery_of(EXPORTED))
    assert delivering.sender.requests == [] and delivering.records.records == {}


def test_a_delivery_already_made_is_not_made_again() -> None:
    delivering = Delivering()
    delivering(delivery_of(EXPORTED))
    delivering(delivery_of(EXPORTED))  # a copy of the same message, redelivered
    assert len(delivering.sender.requests) == 1


def test_a_delivery_another_replica_is_sending_waits_for_it() -> None:
    delivering = Delivering()
    assert delivering.records.start_sending("s-1", "e-1", 35)
    with pytest.raises(RetryLater, match="another replica") as retry:
        delivering(delivery_of(EXPORTED))
    assert retry.value.delay == 10 and delivering.sender.requests == []


def test_a_standard_subscription_without_a_secret_cannot_be_signed() -> None:
    broken = subscription().model_copy(update={"secret": None})
    with pytest.raises(Rejected, match="without a secret"):
        Delivering(subscriptions=(broken,))(delivery_of(EXPORTED))


def test_slack_hears_the_period_count_top_languages_and_link_unsigned() -> None:
    delivering = Delivering(subscriptions=(subscription(format="slack"),))
    delivering(delivery_of(EXPORTED))
    [request] = delivering.sender.requests
    assert "webhook-signature" not in request.headers and request.format == "slack"
    text = json.loads(request.body)["text"]
    assert "weekly" in text and "500 repositories" in text and "2026-11-15" in text
    assert "Python 120" in text and "C&lt;++&gt; 3" in text
    assert f"<{PUBLIC_URL}/api/reports/r-1/download|Download the CSV>" in text


def test_slack_hears_why_a_report_failed_escaped() -> None:
    delivering = Delivering(subscriptions=(subscription(format="slack"),))
    delivering(delivery_of(FAILED, event_id="e-9"))
    text = json.loads(delivering.sender.requests[0].body)["text"]
    assert "r-2" in text and "(weekly)" in text and "stage fetch" in text
    assert "GitHub said &lt;no&gt; &amp; stopped" in text


def test_the_default_policy_retries_for_about_a_day() -> None:
    policy = RetryPolicy()
    assert 20 * 3600 <= policy.expected_total() <= 30 * 3600
    rng = random.Random(1)
    assert all(0 <= policy.delay(attempt, None, rng) <= policy.max_delay for attempt in range(2000))
    assert policy.delay(0, None, random.Random(1)) <= policy.base_delay


class RecordsDown(InMemoryDeliveryRecords):
    def save(self, subscription_id: str, record: Any) -> None:
        raise ConnectionError("Redis does not answer")


def test_a_delivery_whose_record_cannot_be_saved_is_not_sent_again() -> None:
    delivering = Delivering()
    delivering.records = RecordsDown()
    delivering(delivery_of(EXPORTED))  # no retry: the receiver has it
    assert len(delivering.sender.requests) == 1
    # A failure that cannot be recorded is retried like any Redis outage.
    failing = Delivering(SendResult("answered", 500))
    failing.records = RecordsDown()
    with pytest.raises(ConnectionError):
        failing(delivery_of(EXPORTED))
