"""The shared consumer wrapper against a real RabbitMQ: ack, retry, dead-letter, dedup, scope."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from shared.amqp import connect, declare_topology
from shared.consumer import QueueConsumer, ServiceConsumer
from shared.control import RedisCancellations
from shared.dedup import RedisProcessedEvents
from shared.events import ReportFailed, ReportQueued, ReportRequested
from shared.handling import EventMeta, Rejected, RetryLater
from shared.outcomes import OutcomePublisher, RedisOutcomeLedger
from shared.pipeline import DeliveryPipeline, PublishNotTaken, Route
from shared.publisher import Publisher
from shared.settings import CommonSettings
from shared.topology import REASON_HEADER, on_event
from tests.support.amqp import EventListener, cloud_event, dead_letters, nacking_queue, publish
from tests.support.waiting import eventually

SUBSCRIPTION = on_event("probe", "report.requested")


class NotTakenCounter(Publisher):
    """The real publisher, counting the publishes the broker did not take."""

    not_taken = 0

    def publish_raw(self, body: bytes, **kwargs: Any) -> None:
        try:
            super().publish_raw(body, **kwargs)
        except PublishNotTaken:
            self.not_taken += 1
            raise


class Running:
    def __init__(
        self,
        amqp_url: str,
        redis_url: str,
        handler: Callable[[Any, EventMeta], Any],
        fails_report_as: str | None = None,
    ) -> None:
        settings = CommonSettings(amqp_url=amqp_url, redis_url=redis_url)
        self.connection = connect(settings)
        declare_topology(self.connection, [SUBSCRIPTION])
        self.publisher = NotTakenCounter(self.connection, source="tests/probe")
        redis_client = redis.Redis.from_url(redis_url)
        self.processed = RedisProcessedEvents(redis_client)
        pipeline = DeliveryPipeline(
            service="probe",
            queue=SUBSCRIPTION.queue_name,
            routes={"report.requested": Route(handler, fails_report_as=fails_report_as)},
            publisher=self.publisher,
            outcomes=OutcomePublisher(RedisOutcomeLedger(redis_client), self.publisher),
            cancellations=RedisCancellations(redis_client),
            processed=self.processed,
            retry_base_delay=0.05,
        )
        queue = QueueConsumer(SUBSCRIPTION, pipeline, self.publisher)
        self.consumer = ServiceConsumer(self.connection, [queue], prefetch_count=4)
        self.thread = threading.Thread(target=self.consumer.run, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.consumer.should_stop = True
        self.thread.join(10)
        self.publisher.close()
        self.connection.release()


@pytest.fixture
def run_probe(amqp_url: str, redis_url: str) -> Iterator[Callable[..., Running]]:
    started: list[Running] = []

    def start(handler: Callable[[Any, EventMeta], Any], **kwargs: Any) -> Running:
        running = Running(amqp_url, redis_url, handler, **kwargs)
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


def wait_for_dead_letters(amqp_url: str, timeout: float = 20) -> list[tuple[Any, bytes]]:
    return eventually(
        lambda: dead_letters(amqp_url, SUBSCRIPTION.dlq_name),
        timeout=timeout,
        message=f"a dead letter in {SUBSCRIPTION.dlq_name}",
        interval=0.05,
    )


def request(report_id: str | None = None, **extra: Any) -> dict[str, Any]:
    return cloud_event("report.requested", {"report_id": report_id or uuid.uuid4().hex, "period": "day", **extra})


@pytest.mark.parametrize(
    ("body", "content_type", "reason"),
    [
        (b"\x00not json", "application/cloudevents+json", "body is not JSON"),
        (b'{"hello": 1}', "application/cloudevents+json", "not a CloudEvent 1.0"),
        (b"[1, 2]", "application/cloudevents+json", "not a JSON object"),
        (
            json.dumps(cloud_event("report.requested", {"period": "day"})).encode(),
            "text/plain",
            "content type 'text/plain'",
        ),
        (
            json.dumps(cloud_event("report.mystery", {})).encode(),
            "application/cloudevents+json",
            "unknown event type 'report.mystery'",
        ),
    ],
)
def test_malformed_messages_are_dead_lettered_with_their_reason(
    amqp_url: str, run_probe: Callable[..., Running], body: bytes, content_type: str, reason: str
) -> None:
    handled: list[Any] = []
    run_probe(lambda data, meta: handled.append(data))
    publish(amqp_url, "report.requested", body, content_type=content_type, message_id="poison-1")
    letters = wait_for_dead_letters(amqp_url)
    properties, dead_body = letters[0]
    assert dead_body == body
    assert reason in properties.headers[REASON_HEADER]
    assert properties.headers["x-hotrepos-original-routing-key"] == "report.requested"
    assert handled == []


def test_schema_violation_fails_the_report_and_is_dead_lettered(
    amqp_url: str, run_probe: Callable[..., Running]
) -> None:
    listener = EventListener(amqp_url, "report.failed")
    run_probe(lambda data, meta: None, fails_report_as="request")
    publish(amqp_url, "report.requested", request("bad-period", period="year"))
    failed = listener.wait_for(lambda e: e["data"]["report_id"] == "bad-period", 20)
    assert failed["data"]["stage"] == "request"
    assert "period" in failed["data"]["reason"]
    letters = wait_for_dead_letters(amqp_url)
    assert "fails its schema" in letters[0][0].headers[REASON_HEADER]
    listener.close()


def test_retry_later_comes_back_through_the_delay_queue(amqp_url: str, run_probe: Callable[..., Running]) -> None:
    event, sentinel = request(), request()
    handled: list[str] = []  # the id of each event the handler is called with, in order

    def flaky(data: ReportRequested, meta: EventMeta) -> None:
        handled.append(meta.id)
        if meta.id == event["id"] and handled.count(meta.id) < 3:
            raise RetryLater("SMTP is down", delay=0.1)
        if meta.id == sentinel["id"] and handled.count(meta.id) < 2:
            raise RetryLater("the sentinel goes the way of a retry", delay=0.1)

    run_probe(flaky)
    publish(amqp_url, "report.requested", event)
    eventually(lambda: handled.count(event["id"]) >= 3, timeout=20, message="a third attempt", interval=0.05)
    # A fourth attempt would come back through the delay queue, or straight back into the queue. The
    # sentinel, published after the third, is consumed after it and goes once through the same delay
    # queue, which lets messages out in the order they went in: once it is back, a fourth attempt or
    # a dead letter of the event would have come before it.
    publish(amqp_url, "report.requested", sentinel)
    eventually(lambda: handled.count(sentinel["id"]) >= 2, timeout=20, message="the sentinel back", interval=0.05)
    assert handled.count(event["id"]) == 3
    assert dead_letters(amqp_url, SUBSCRIPTION.dlq_name) == []


def test_a_wait_that_spans_two_delay_levels_comes_back_every_time(
    amqp_url: str, run_probe: Callable[..., Running]
) -> None:
    # 3 s is two delay levels, 2 s then 1 s: the second level takes the message by dead-lettering. A
    # copy that still carried the broker's record of its first pass would be taken for a dead-letter
    # cycle there on its second, and held in that level for ever.
    event = request()
    handled: list[str] = []

    def waits_twice(data: ReportRequested, meta: EventMeta) -> None:
        handled.append(meta.id)
        if len(handled) < 3:
            raise RetryLater("another replica is sending this email", delay=3)

    run_probe(waits_twice)
    publish(amqp_url, "report.requested", event)
    eventually(lambda: len(handled) >= 3, timeout=30, message="a third attempt, after two waits", interval=0.05)
    assert handled == [event["id"]] * 3
    assert dead_letters(amqp_url, SUBSCRIPTION.dlq_name) == []


def test_a_handler_that_keeps_crashing_is_dead_lettered_by_the_delivery_limit(
    amqp_url: str, run_probe: Callable[..., Running]
) -> None:
    attempts: list[int] = []

    def crash(data: ReportRequested, meta: EventMeta) -> None:
        attempts.append(1)
        raise RuntimeError("boom")

    run_probe(crash)
    publish(amqp_url, "report.requested", request())
    letters = wait_for_dead_letters(amqp_url, timeout=30)
    death = letters[0][0].headers["x-death"][0]
    assert death["reason"] == "delivery_limit"
    assert len(attempts) == 6  # the first delivery plus DELIVERY_LIMIT redeliveries


def test_a_redelivered_event_is_acked_without_its_effect(amqp_url: str, run_probe: Callable[..., Running]) -> None:
    handled: list[str] = []
    run_probe(lambda data, meta: handled.append(meta.id))
    event = request()
    publish(amqp_url, "report.requested", event)
    publish(amqp_url, "report.requested", event)
    # The sentinel: the queue's one consumer takes it after the redelivered copy, so once it is
    # handled, the copy has been dealt with too.
    second = request()
    publish(amqp_url, "report.requested", second)
    eventually(lambda: second["id"] in handled, timeout=20, message="the second event handled", interval=0.05)
    assert handled == [event["id"], second["id"]]


def test_scope_travels_into_published_events(amqp_url: str, run_probe: Callable[..., Running]) -> None:
    listener = EventListener(amqp_url, "report.failed")

    def fail(data: ReportRequested, meta: EventMeta) -> list[ReportFailed]:
        return [ReportFailed(report_id=data.report_id or meta.id, stage="probe", reason="r")]

    run_probe(fail)
    event = request("scoped-1")
    event.update(
        locale="fr-CA", correlationid="corr-1", traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    )
    publish(amqp_url, "report.requested", event)
    out = listener.wait_for(lambda e: e["data"]["report_id"] == "scoped-1", 20)
    assert (out["correlationid"], out["locale"], out["traceparent"]) == (
        "corr-1",
        "fr-CA",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    )
    assert out["specversion"] == "1.0" and out["source"] == "tests/probe"
    properties = listener.raw[-1][0]
    assert properties.content_type == "application/cloudevents+json"
    assert properties.delivery_mode == 2 and properties.message_id == out["id"]
    listener.close()


def test_a_publish_the_broker_nacks_is_retried_later_and_the_consumer_lives_on(
    amqp_url: str, run_probe: Callable[..., Running]
) -> None:
    # kombu retries a nack at once, so its retries are spent in milliseconds; before, the library
    # error that followed stopped the consumer, and the service.
    attempts: list[str] = []

    def tell_the_place(data: ReportRequested, meta: EventMeta) -> list[ReportQueued]:
        attempts.append(meta.id)
        return [ReportQueued(report_id=data.report_id or meta.id, priority="interactive", position=0, eta_seconds=0)]

    probe = run_probe(tell_the_place)
    listener = EventListener(amqp_url, "report.queued")
    event = request("nacked-1")
    try:
        with nacking_queue(amqp_url, "hotrepos.events", "report.queued"):
            publish(amqp_url, "report.requested", event)
            eventually(lambda: len(attempts) >= 2, timeout=20, message="a second attempt, after a delay", interval=0.05)
            # Not yet handled: an event is remembered as processed once what it published was confirmed.
            assert not probe.processed.seen(SUBSCRIPTION.queue_name, event["id"])
        eventually(
            lambda: probe.processed.seen(SUBSCRIPTION.queue_name, event["id"]),
            timeout=20,
            message="the event handled once the broker takes what it publishes",
            interval=0.05,
        )
        # A nack says that some queue did not take the event; the others did, so they may hear it twice.
        assert listener.of("report.queued")[-1]["data"]["report_id"] == "nacked-1"
    finally:
        listener.close()
    assert probe.thread.is_alive()
    assert set(attempts) == {event["id"]}
    assert dead_letters(amqp_url, SUBSCRIPTION.dlq_name) == []


def test_a_dead_letter_the_broker_nacks_is_held_and_sent_again_without_a_reconnect(
    amqp_url: str, run_probe: Callable[..., Running]
) -> None:
    handled: list[str] = []

    def refuse(data: ReportRequested, meta: EventMeta) -> None:
        handled.append(meta.id)
        raise Rejected("refused by the probe")

    probe = run_probe(refuse)
    event, sentinel = request("held-1"), request("held-sentinel")
    with nacking_queue(amqp_url, "hotrepos.dlx", SUBSCRIPTION.queue_name):
        publish(amqp_url, "report.requested", event)
        eventually(lambda: probe.publisher.not_taken >= 1, timeout=20, message="a dead letter nacked", interval=0.05)
    # The queue's one consumer takes the sentinel once it has settled the event held before it.
    publish(amqp_url, "report.requested", sentinel)

    def letters_by_id() -> dict[str, list[Any]]:
        found: dict[str, list[Any]] = {}
        for properties, body in dead_letters(amqp_url, SUBSCRIPTION.dlq_name):
            found.setdefault(json.loads(body)["id"], []).append(properties)
        return found

    letters = eventually(
        lambda: (found := letters_by_id()) and sentinel["id"] in found and found,
        timeout=30,
        message="the sentinel dead-lettered",
        interval=0.1,
    )
    assert set(letters) == {event["id"], sentinel["id"]}
    # A nacked publish still reached the queues that took it: the dead letter may be there twice.
    assert all(properties.headers[REASON_HEADER] == "refused by the probe" for properties in letters[event["id"]])
    # Held by the same consumer all along: a reconnect would have handed the message back to the
    # queue, and its redelivery to the handler.
    assert handled == [event["id"], sentinel["id"]]
    assert probe.thread.is_alive()
