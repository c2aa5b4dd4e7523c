"""One report is one trace across every service, exported over OTLP by the service processes."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterator

import pytest

from tests.conftest import TODAY
from tests.fake_github import FakeGitHub
from tests.support.amqp import cloud_event, publish
from tests.support.broker import Broker
from tests.support.otlp import OtlpReceiver, ReceivedSpan
from tests.support.pipeline import PIPELINE_SERVICES, Pipeline, running_pipeline
from tests.support.smtp import SmtpSink
from tests.support.waiting import eventually

REQUESTER = "traced@example.com"


@pytest.fixture(scope="module")
def collector() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver().start()
    yield receiver
    receiver.stop()


@pytest.fixture(scope="module")
def traced_pipeline(
    broker: Broker,
    redis_url: str,
    module_fake_github: FakeGitHub,
    module_smtp_sink: SmtpSink,
    collector: OtlpReceiver,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Pipeline]:
    """The four services as processes, each exporting its spans to the test's OTLP receiver."""
    with running_pipeline(
        broker,
        redis_url,
        module_fake_github.url,
        module_smtp_sink.port,
        tmp_path_factory.mktemp("traced"),
        TODAY,
        "hotrepos-e2e-tracing",
        extra_env={"OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100"},
    ) as running:
        yield running


def request_and_wait_for_email(pipeline: Pipeline, sink: SmtpSink, traceparent: str | None) -> str:
    report_id = f"traced-{uuid.uuid4().hex[:12]}"
    event = cloud_event("report.requested", {"report_id": report_id, "period": "week", "notify": REQUESTER})
    if traceparent:
        event["traceparent"] = traceparent
    publish(pipeline.amqp_url, "report.requested", event)
    sink.wait_for(lambda m: report_id in m.get_content(), 90)
    return report_id


def spans_of_report(collector: OtlpReceiver, report_id: str) -> list[ReceivedSpan]:
    return [s for s in collector.snapshot() if s.attributes.get("hotrepos.correlation_id") == report_id]


def wait_for_trace(collector: OtlpReceiver, report_id: str, external_parent: str | None) -> list[ReceivedSpan]:
    """Wait for the notifier's outermost span and for every parent that a span names."""
    # Each process exports a span once it ends, in batches: any of them may be the last to send.

    def arrived() -> bool:
        spans = spans_of_report(collector, report_id)
        ids = {s.span_id for s in spans} | {external_parent}
        return all(s.parent_span_id in ids for s in spans if s.parent_span_id) and any(
            s.service == "notifier" and s.name == "consume notifier.report.exported" for s in spans
        )

    eventually(arrived, timeout=60, message=f"every span of {report_id} up to the notifier's")
    return spans_of_report(collector, report_id)


def assert_one_tree(spans: list[ReceivedSpan], external_parent: str | None) -> None:
    """Every span's parent is a span of the same trace (or the requester's own span)."""
    ids = {s.span_id for s in spans}
    orphans = [s for s in spans if s.parent_span_id is not None and s.parent_span_id not in ids]
    roots = [s for s in spans if s.parent_span_id is None]
    if external_parent is None:
        assert not orphans, orphans
        assert len(roots) == 1 and roots[0].name == "consume fetcher.report.requested", roots
    else:
        assert not roots, roots
        assert {s.parent_span_id for s in orphans} == {external_parent}


def test_a_report_requested_with_a_traceparent_is_one_trace_to_the_email(
    traced_pipeline: Pipeline, module_smtp_sink: SmtpSink, collector: OtlpReceiver
) -> None:
    trace_id, parent_span_id = secrets.token_hex(16), secrets.token_hex(8)
    report_id = request_and_wait_for_email(traced_pipeline, module_smtp_sink, f"00-{trace_id}-{parent_span_id}-01")
    spans = wait_for_trace(collector, report_id, parent_span_id)

    assert {s.trace_id for s in spans} == {trace_id}
    assert {s.service for s in spans} >= set(PIPELINE_SERVICES)
    assert_one_tree(spans, parent_span_id)
    names = {(s.service, s.name) for s in spans}
    assert {
        ("fetcher", "consume fetcher.report.requested"),
        ("fetcher", "fetch report page"),
        ("fetcher", "publish report.page.fetched"),
        ("aggregator", "consume aggregator.report.page.fetched"),
        ("aggregator", "publish report.aggregated"),
        ("exporter", "handle report.aggregated"),
        ("exporter", "publish report.exported"),
        ("notifier", "consume notifier.report.exported"),
        ("notifier", "handle report.exported"),
    } <= names


def test_a_report_requested_without_a_traceparent_starts_its_own_trace(
    traced_pipeline: Pipeline, module_smtp_sink: SmtpSink, collector: OtlpReceiver
) -> None:
    report_id = request_and_wait_for_email(traced_pipeline, module_smtp_sink, None)
    spans = wait_for_trace(collector, report_id, None)

    assert len({s.trace_id for s in spans}) == 1
    assert len({s.service for s in spans}) >= 4
    assert_one_tree(spans, None)
