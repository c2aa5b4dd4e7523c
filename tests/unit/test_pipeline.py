"""The delivery policy, transport aside: decode, dedup, cancel, handle, publish, and the verdict."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest

from shared.events import ReportExported, ReportFailed, ReportQueued, ReportRequested, derived_event_id
from shared.handling import EventMeta, RetryLater
from shared.outcomes import OutcomePublisher
from shared.pipeline import (
    DELIVERY_LIMIT,
    Ack,
    DeadLetter,
    DeliveryPipeline,
    PublishRefused,
    Requeue,
    RetryAfter,
    Route,
)
from tests.support.amqp import cloud_event
from tests.support.fakes import InMemoryCancellations, InMemoryOutcomes, InMemoryProcessedEvents, RecordingPublisher

QUEUE = "probe.report.requested"


@dataclass
class Delivery:
    body: bytes
    content_type: str | None = "application/cloudevents+json"
    retries: int = 0
    deliveries: int | None = 1
    message_id: str | None = None


def request(report_id: str = "r-1", **data: Any) -> Delivery:
    return Delivery(
        json.dumps(cloud_event("report.requested", {"report_id": report_id, "period": "day", **data})).encode()
    )


class Probe:
    def __init__(
        self, handler: Any = None, *, fails_report_as: str | None = "request", broadcast: bool = False
    ) -> None:
        self.calls: list[tuple[Any, EventMeta]] = []
        self.publisher = RecordingPublisher()
        self.outcomes = InMemoryOutcomes()
        self.cancellations = InMemoryCancellations()
        self.processed = InMemoryProcessedEvents()

        def record(data: Any, meta: EventMeta) -> Any:
            self.calls.append((data, meta))
            return handler(data, meta) if handler else None

        self.pipeline = DeliveryPipeline(
            service="probe",
            queue=QUEUE,
            routes={"report.requested": Route(record, fails_report_as=fails_report_as, stops_when_cancelled=True)},
            publisher=self.publisher,
            outcomes=OutcomePublisher(self.outcomes, self.publisher),
            cancellations=self.cancellations,
            processed=None if broadcast else self.processed,
            broadcast=broadcast,
            max_retries=3,
        )


@pytest.mark.parametrize(
    ("delivery", "reason"),
    [
        (Delivery(b"\x00not json"), "body is not JSON"),
        (Delivery(b"[1]"), "not a JSON object"),
        (Delivery(b'{"hello": 1}'), "not a CloudEvent 1.0"),
        (Delivery(json.dumps(cloud_event("report.mystery", {})).encode()), "unknown event type"),
        (Delivery(b"{}", content_type="text/plain"), "content type 'text/plain'"),
        (Delivery(b" " * (4 * 1024 * 1024 + 1)), "exceeds the"),
    ],
)
def test_what_cannot_be_decoded_is_dead_lettered_with_its_reason(delivery: Delivery, reason: str) -> None:
    probe = Probe()
    verdict = probe.pipeline.process(delivery)
    assert isinstance(verdict, DeadLetter) and reason in verdict.reason
    assert probe.calls == [] and probe.publisher.events == []


def test_an_event_is_decoded_in_one_pass_to_its_model_with_its_envelope() -> None:
    probe = Probe()
    body = cloud_event("report.requested", {"report_id": "r-1", "period": "day"}, locale="fr", correlationid="c-1")
    probe.pipeline.process(Delivery(json.dumps(body).encode()))
    [(data, meta)] = probe.calls
    assert data == ReportRequested(report_id="r-1", period="day")
    assert (meta.id, meta.locale, meta.correlationid) == (body["id"], "fr", "c-1")
    assert meta.cloud_event is not None and meta.cloud_event.source == "tests/pika"


def test_a_handler_that_forwards_the_envelope_gets_the_data_as_it_came() -> None:
    calls: list[EventMeta] = []
    pipeline = DeliveryPipeline(
        service="probe",
        queue=QUEUE,
        routes={"report.requested": Route(lambda data, meta: calls.append(meta), forwards_envelope=True)},
        publisher=RecordingPublisher(),
        outcomes=OutcomePublisher(InMemoryOutcomes(), RecordingPublisher()),
        cancellations=InMemoryCancellations(),
    )
    pipeline.process(request("r-1", notify=None))
    [meta] = calls
    assert meta.cloud_event is not None and meta.cloud_event.data == {
        "report_id": "r-1",
        "period": "day",
        "notify": None,
    }


def test_data_that_fails_its_schema_fails_the_report_once_and_is_dead_lettered() -> None:
    probe = Probe()
    verdict = probe.pipeline.process(request("r-bad", period="year"))
    assert isinstance(verdict, DeadLetter) and "fails its schema" in verdict.reason
    [failed] = probe.publisher.events
    assert failed.type == "report.failed" and failed.id == derived_event_id("r-bad", "failed")
    assert failed.data["stage"] == "request" and "period" in failed.data["reason"]


def test_a_handled_event_is_published_then_remembered_and_its_redelivery_changes_nothing() -> None:
    probe = Probe(lambda data, meta: [ReportFailed(report_id="r-1", stage="probe", reason="r")])
    delivery = request()
    assert probe.pipeline.process(delivery) == Ack()
    assert probe.pipeline.process(delivery) == Ack()
    assert len(probe.calls) == 1 and probe.publisher.types() == ["report.failed"]


def test_a_cancelled_report_s_work_is_dropped_before_its_handler() -> None:
    probe = Probe()
    probe.cancellations.cancel("r-1")
    assert probe.pipeline.process(request()) == Ack()
    assert probe.calls == []


def test_the_handler_sees_how_often_the_message_was_retried() -> None:
    probe = Probe()
    probe.pipeline.process(Delivery(request().body, retries=2))
    [(data, meta)] = probe.calls
    assert isinstance(data, ReportRequested) and meta.attempt == 2 and meta.type == "report.requested"


def raise_(exc: BaseException) -> Any:
    def handler(data: Any, meta: EventMeta) -> Any:
        raise exc

    return handler


def test_retry_later_keeps_the_handler_s_delay_and_counts_the_retry() -> None:
    verdict = Probe(raise_(RetryLater("SMTP down", delay=7))).pipeline.process(Delivery(request().body, retries=1))
    assert verdict == RetryAfter(delay=7, retries=2, reason="SMTP down")


def test_a_wait_that_does_not_count_keeps_the_retry_count_and_tells_what_it_publishes() -> None:
    queued = ReportQueued(report_id="r-1", priority="bulk", position=3, eta_seconds=40.0)
    probe = Probe(raise_(RetryLater("budget spent", delay=9, counts=False, publish=[queued])))
    verdict = probe.pipeline.process(Delivery(request().body, retries=4))
    assert verdict == RetryAfter(delay=9, retries=4, reason="budget spent", counted=False)
    assert [event.type for event in probe.publisher.events] == ["report.queued"]
    assert probe.publisher.events[0].data == queued.model_dump(mode="json")


def test_waits_never_exhaust_the_retries() -> None:
    probe = Probe(raise_(RetryLater("budget spent", delay=9, counts=False)))
    verdict = probe.pipeline.process(Delivery(request().body, retries=probe.pipeline.max_retries))
    assert isinstance(verdict, RetryAfter) and verdict.retries == probe.pipeline.max_retries


def test_a_transient_error_backs_off_exponentially() -> None:
    verdict = Probe(raise_(ConnectionError("redis gone"))).pipeline.process(Delivery(request().body, retries=2))
    assert isinstance(verdict, RetryAfter) and verdict.delay == 4 and "ConnectionError" in verdict.reason


def test_past_its_retries_a_message_is_given_up_and_its_report_fails() -> None:
    probe = Probe(raise_(RetryLater("still down")))
    verdict = probe.pipeline.process(Delivery(request().body, retries=3))
    assert isinstance(verdict, DeadLetter) and "gave up after 3 retries: still down" in verdict.reason
    assert probe.publisher.types() == ["report.failed"]


def test_a_crash_is_redelivered_until_the_delivery_limit_then_dead_lettered() -> None:
    probe = Probe(raise_(RuntimeError("boom")))
    assert isinstance(probe.pipeline.process(Delivery(request().body, deliveries=DELIVERY_LIMIT)), Requeue)
    verdict = probe.pipeline.process(Delivery(request().body, deliveries=DELIVERY_LIMIT + 1))
    assert isinstance(verdict, DeadLetter) and "handler crashed: RuntimeError: boom" in verdict.reason
    assert probe.publisher.types() == ["report.failed"]


def test_where_the_broker_counts_deliveries_a_crash_is_always_requeued() -> None:
    assert isinstance(
        Probe(raise_(RuntimeError("boom"))).pipeline.process(Delivery(request().body, deliveries=None)), Requeue
    )


def test_a_broadcast_is_never_retried_or_requeued() -> None:
    for error in (RetryLater("later"), RuntimeError("boom")):
        verdict = Probe(raise_(error), broadcast=True, fails_report_as=None).pipeline.process(request())
        assert isinstance(verdict, DeadLetter)


def test_a_refused_publish_is_parked_without_failing_the_report() -> None:
    class Refusing(RecordingPublisher):
        def publish(self, data: Any, **kwargs: Any) -> Any:
            raise PublishRefused("broker refused publishing to 'hotrepos.events'")

    probe = Probe(lambda data, meta: [ReportExported.model_construct(report_id="r-1")])
    probe.pipeline.outcomes = OutcomePublisher(probe.outcomes, Refusing())
    verdict = probe.pipeline.process(request())
    assert isinstance(verdict, DeadLetter) and verdict.parked
    assert probe.outcomes.decided == {}  # the claim is released: the replay may still decide


def test_an_outcome_already_decided_otherwise_is_not_published() -> None:
    probe = Probe(lambda data, meta: [ReportFailed(report_id="r-1", stage="probe", reason="late")])
    probe.outcomes.claim("r-1", "exported")
    assert probe.pipeline.process(request()) == Ack()
    assert probe.publisher.events == []
