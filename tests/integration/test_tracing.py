"""Spans of the shared messaging layer, recorded in memory, against a real broker."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from kombu.connection import Connection
from kombu.message import Message
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from shared import tracing
from shared.amqp import connect, declare_topology
from shared.consumer import QueueConsumer
from shared.events import ReportFailed, ReportRequested
from shared.handling import EventMeta
from shared.pipeline import Route
from shared.publisher import Publisher
from shared.settings import CommonSettings
from shared.topology import FETCHER_REQUESTED
from tests.support.amqp import EventListener, cloud_event, publish
from tests.support.pipeline import delivery_pipeline

EXTERNAL_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
EXTERNAL_SPAN_ID = "00f067aa0ba902b7"
EXTERNAL_TRACEPARENT = f"00-{EXTERNAL_TRACE_ID}-{EXTERNAL_SPAN_ID}-01"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "tests"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_tracer_provider(provider)
    try:
        yield exporter
    finally:
        tracing.use_tracer_provider(None)
        provider.shutdown()


@pytest.fixture
def connection(amqp_url: str, redis_url: str) -> Iterator[Connection]:
    with connect(CommonSettings(amqp_url=amqp_url, redis_url=redis_url)) as opened:
        declare_topology(opened, [FETCHER_REQUESTED])
        yield opened


def fail_every_request(event: ReportRequested, meta: EventMeta) -> list[ReportFailed]:
    return [ReportFailed(report_id=event.report_id or meta.id, stage="test", reason="traced")]


def handle_one(connection: Connection, amqp_url: str, redis_url: str, traceparent: str | None) -> dict[str, Any]:
    """Publish a request with pika, handle it with the shared pipeline, return the event it caused."""
    report_id = f"trace-{uuid.uuid4().hex[:8]}"
    publisher = Publisher(connection, source="tests/tracing")
    redis_client = redis.Redis.from_url(redis_url)
    routes = {"report.requested": Route(fail_every_request)}
    pipeline = delivery_pipeline("fetcher", FETCHER_REQUESTED.queue_name, routes, publisher, redis_client, dedup=False)
    handler = QueueConsumer(FETCHER_REQUESTED, pipeline, publisher)
    listener = EventListener(amqp_url, "report.failed")
    try:
        event = cloud_event("report.requested", {"report_id": report_id, "period": "day"})
        if traceparent:
            event["traceparent"] = traceparent
        publish(amqp_url, "report.requested", event)
        handled: list[Message] = []

        def handle(message: Message) -> None:
            handler(message)
            handled.append(message)

        with connection.clone() as consuming, consuming.Consumer([FETCHER_REQUESTED.queue()], on_message=handle):
            consuming.drain_events(timeout=30)
        assert len(handled) == 1
        return listener.wait_for(lambda e: (e.get("data") or {}).get("report_id") == report_id)
    finally:
        listener.close()
        publisher.close()


def by_kind(finished: tuple[ReadableSpan, ...], kind: SpanKind) -> ReadableSpan:
    [found] = [span for span in finished if span.kind is kind]
    return found


def traceparent_of(span: ReadableSpan) -> str:
    assert span.context is not None
    context = span.context
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def test_consume_handle_and_publish_spans_continue_the_incoming_trace(
    spans: InMemorySpanExporter, connection: Connection, amqp_url: str, redis_url: str
) -> None:
    outgoing = handle_one(connection, amqp_url, redis_url, EXTERNAL_TRACEPARENT)

    finished = spans.get_finished_spans()
    consume = by_kind(finished, SpanKind.CONSUMER)
    handle = by_kind(finished, SpanKind.INTERNAL)
    produce = by_kind(finished, SpanKind.PRODUCER)
    assert consume.name == "consume fetcher.report.requested"
    assert handle.name == "handle report.requested"
    assert produce.name == "publish report.failed"
    assert {f"{s.context.trace_id:032x}" for s in finished if s.context} == {EXTERNAL_TRACE_ID}
    assert consume.parent is not None and f"{consume.parent.span_id:016x}" == EXTERNAL_SPAN_ID
    assert consume.context is not None
    assert handle.parent is not None and handle.parent.span_id == consume.context.span_id
    assert produce.parent is not None and produce.parent.span_id == consume.context.span_id
    # The event on the wire names its publish span, so that its consumer continues from there.
    assert outgoing["traceparent"] == traceparent_of(produce)
    assert produce.attributes is not None
    assert produce.attributes["messaging.message.id"] == outgoing["id"]
    assert consume.attributes is not None
    assert consume.attributes["hotrepos.correlation_id"] == outgoing["data"]["report_id"]


def test_an_event_without_traceparent_starts_a_trace(
    spans: InMemorySpanExporter, connection: Connection, amqp_url: str, redis_url: str
) -> None:
    outgoing = handle_one(connection, amqp_url, redis_url, None)

    finished = spans.get_finished_spans()
    consume = by_kind(finished, SpanKind.CONSUMER)
    assert consume.parent is None
    assert outgoing["traceparent"] == traceparent_of(by_kind(finished, SpanKind.PRODUCER))
    assert len({s.context.trace_id for s in finished if s.context}) == 1


def test_without_tracing_the_traceparent_passes_through_unchanged(
    connection: Connection, amqp_url: str, redis_url: str
) -> None:
    assert not tracing.enabled()
    outgoing = handle_one(connection, amqp_url, redis_url, EXTERNAL_TRACEPARENT)
    assert outgoing["traceparent"] == EXTERNAL_TRACEPARENT


def test_a_publication_outside_any_event_starts_a_trace(
    spans: InMemorySpanExporter, connection: Connection, amqp_url: str
) -> None:
    """What the beat and the gateway do: their report.requested is the root of the report's trace."""
    listener = EventListener(amqp_url, "report.requested")
    publisher = Publisher(connection, source="tests/tracing")
    try:
        published = publisher.publish(ReportRequested(period="day"))
        received = listener.wait_for(lambda e: e.get("id") == published.id)
    finally:
        publisher.close()
        listener.close()
    produce = by_kind(spans.get_finished_spans(), SpanKind.PRODUCER)
    assert produce.parent is None
    assert received["traceparent"] == traceparent_of(produce)
