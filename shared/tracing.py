"""OpenTelemetry spans for publish, consume and handle; the W3C traceparent travels in the CloudEvent."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import INVALID_SPAN, Span, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from shared.context import current_context, event_scope

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

    from shared.events import CloudEvent

INSTRUMENTATION = "hotrepos"
SERVICE_NAMESPACE = "hotrepos"
ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")

AttributeValue = str | int | bool

_propagator = TraceContextTextMapPropagator()
# None while tracing is off: then a span costs one check, and a traceparent passes through unchanged.
_tracer: trace.Tracer | None = None


def configure_tracing(service: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Export spans over OTLP/HTTP when OTEL_EXPORTER_OTLP_ENDPOINT is set; otherwise trace nothing."""
    if not any(environ.get(name) for name in ENDPOINT_VARIABLES):
        return False
    # Imported here: a service that does not trace never loads the SDK or the exporter.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({"service.name": service, "service.namespace": SERVICE_NAMESPACE})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    use_tracer_provider(provider)
    return True


def use_tracer_provider(provider: TracerProvider | None) -> None:
    """Trace with this provider from now on (None turns tracing off); tests pass an in-memory one."""
    global _tracer
    _tracer = provider.get_tracer(INSTRUMENTATION) if provider is not None else None


def enabled() -> bool:
    return _tracer is not None


@contextlib.contextmanager
def span(
    name: str, *, kind: SpanKind = SpanKind.INTERNAL, attributes: Mapping[str, AttributeValue] | None = None
) -> Iterator[Span]:
    """A span whose parent is the traceparent of the event being handled; inside it, it is that parent."""
    if _tracer is None:
        yield INVALID_SPAN
        return
    context = current_context()
    parent = _propagator.extract({"traceparent": context.traceparent}) if context.traceparent else Context()
    if context.correlationid:
        attributes = {"hotrepos.correlation_id": context.correlationid, **(attributes or {})}
    with _tracer.start_as_current_span(name, context=parent, kind=kind, attributes=attributes) as current:
        carrier: dict[str, str] = {}
        _propagator.inject(carrier, context=trace.set_span_in_context(current))
        with event_scope(context.merged(traceparent=carrier.get("traceparent"))):
            yield current


def consume_span(event: CloudEvent, queue: str) -> contextlib.AbstractContextManager[Span]:
    """The span of one delivery, child of the span that published the event."""
    return span(
        f"consume {queue}",
        kind=SpanKind.CONSUMER,
        attributes={
            "messaging.system": "rabbitmq",
            "messaging.operation.type": "process",
            "messaging.destination.name": queue,
            "messaging.message.id": event.id,
            "cloudevents.event_id": event.id,
            "cloudevents.event_type": event.type,
            "cloudevents.event_source": event.source,
        },
    )


def handle_span(event_type: str, handler: str) -> contextlib.AbstractContextManager[Span]:
    return span(f"handle {event_type}", attributes={"hotrepos.handler": handler})


def publish_span(event_type: str, exchange: str) -> contextlib.AbstractContextManager[Span]:
    """The span of one publication; the event it builds carries this span as its traceparent."""
    return span(
        f"publish {event_type}",
        kind=SpanKind.PRODUCER,
        attributes={
            "messaging.system": "rabbitmq",
            "messaging.operation.type": "publish",
            "messaging.destination.name": exchange,
            "cloudevents.event_type": event_type,
        },
    )
