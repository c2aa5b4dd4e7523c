"""After a report, every service's /metrics has moved, and `hotrepos logs` tells the report's story."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterator
from contextlib import redirect_stdout

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from hotrepos_cli.__main__ import main
from tests.conftest import TODAY
from tests.fake_github import FakeGitHub
from tests.support.amqp import EventListener, cloud_event, publish
from tests.support.broker import Broker
from tests.support.pipeline import PIPELINE_SERVICES, Pipeline, running_pipeline
from tests.support.smtp import SmtpSink
from tests.support.waiting import eventually

REQUESTER = "metrics@example.com"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(scope="module")
def measured_pipeline(
    broker: Broker,
    redis_url: str,
    module_fake_github: FakeGitHub,
    module_smtp_sink: SmtpSink,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Pipeline]:
    """The four services as processes, each with a metrics port of its own."""
    with running_pipeline(
        broker,
        redis_url,
        module_fake_github.url,
        module_smtp_sink.port,
        tmp_path_factory.mktemp("measured"),
        TODAY,
        "hotrepos-e2e-metrics",
        with_metrics=True,
    ) as running:
        yield running


def scrape(pipeline: Pipeline, service: str) -> Samples:
    text = requests.get(f"http://127.0.0.1:{pipeline.metrics_ports[service]}/metrics", timeout=10).text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


class Scrapes:
    """Each service's samples before and after, so that a test reads what it caused."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.before = {service: scrape(pipeline, service) for service in PIPELINE_SERVICES}
        self.after = dict(self.before)

    def refresh(self) -> None:
        self.after = {service: scrape(self.pipeline, service) for service in PIPELINE_SERVICES}

    def delta(self, service: str, name: str, **labels: str) -> float:
        return value(self.after[service], name, **labels) - value(self.before[service], name, **labels)


def request_report(pipeline: Pipeline, report_id: str) -> dict[str, object]:
    event = cloud_event("report.requested", {"report_id": report_id, "period": "day", "notify": REQUESTER})
    publish(pipeline.amqp_url, "report.requested", event)
    return event


def test_a_report_moves_the_counters_of_every_service(measured_pipeline: Pipeline, module_smtp_sink: SmtpSink) -> None:
    scrapes = Scrapes(measured_pipeline)
    report_id = f"metrics-{uuid.uuid4().hex[:12]}"
    listener = EventListener(measured_pipeline.amqp_url, "report.#")
    try:
        request = request_report(measured_pipeline, report_id)
        assert listener.wait_for_outcome(report_id, 90)["type"] == "report.exported"
        module_smtp_sink.wait_for(lambda m: report_id in m.get_content(), 60)
        # The same request again (same event id): acked as a duplicate, without a second report.
        publish(measured_pipeline.amqp_url, "report.requested", request)
        # And a message that is no event at all.
        publish(measured_pipeline.amqp_url, "report.requested", b"not json", content_type="application/json")
    finally:
        listener.close()

    expected = {
        ("fetcher", "hotrepos_events_consumed_total", (("type", "report.requested"), ("outcome", "ok"))): 1,
        ("fetcher", "hotrepos_events_consumed_total", (("type", "report.requested"), ("outcome", "duplicate"))): 1,
        ("fetcher", "hotrepos_events_consumed_total", (("type", "?"), ("outcome", "dead-lettered"))): 1,
        ("fetcher", "hotrepos_github_requests_total", (("status", "200"),)): 5,
        ("fetcher", "hotrepos_events_published_total", (("type", "report.page.fetched"),)): 5,
        ("aggregator", "hotrepos_events_consumed_total", (("type", "report.page.fetched"), ("outcome", "ok"))): 5,
        ("aggregator", "hotrepos_handler_duration_seconds_count", (("type", "report.page.fetched"),)): 5,
        ("aggregator", "hotrepos_events_published_total", (("type", "report.aggregated"),)): 1,
        ("exporter", "hotrepos_events_consumed_total", (("type", "report.aggregated"), ("outcome", "ok"))): 1,
        ("exporter", "hotrepos_events_published_total", (("type", "report.exported"),)): 1,
        ("exporter", "hotrepos_reports_total", (("outcome", "exported"),)): 1,
        ("exporter", "hotrepos_report_duration_seconds_count", (("outcome", "exported"),)): 1,
        ("notifier", "hotrepos_events_consumed_total", (("type", "report.exported"), ("outcome", "ok"))): 1,
        ("notifier", "hotrepos_emails_total", (("kind", "ready"), ("outcome", "sent"))): 1,
    }

    def deltas() -> dict[tuple[str, str, tuple[tuple[str, str], ...]], float]:
        return {key: scrapes.delta(key[0], key[1], **dict(key[2])) for key in expected}

    def all_counted() -> bool:
        scrapes.refresh()
        return all(deltas()[key] >= count for key, count in expected.items())

    # Counters move right after the work they count: wait for the last of them, then compare exactly.
    eventually(all_counted, timeout=60, message="every counter to move")
    assert deltas() == expected

    fetcher = scrapes.after["fetcher"]
    assert value(fetcher, "hotrepos_github_rate_limit_remaining") > 0
    elapsed = scrapes.delta("exporter", "hotrepos_report_duration_seconds_sum", outcome="exported")
    assert 0 < elapsed < 90
    # Bounded labels: no report id in any label value of any service.
    for service, samples in scrapes.after.items():
        leaked = [name for name, labels in samples if any(report_id in v for _, v in labels)]
        assert not leaked, f"{service} labels a metric with a report id: {leaked}"


def test_logs_prints_every_line_about_one_report_in_time_order(
    measured_pipeline: Pipeline, module_smtp_sink: SmtpSink
) -> None:
    report_id = f"logs-{uuid.uuid4().hex[:12]}"
    listener = EventListener(measured_pipeline.amqp_url, "report.#")
    try:
        request_report(measured_pipeline, report_id)
        listener.wait_for_outcome(report_id, 90)
    finally:
        listener.close()
    module_smtp_sink.wait_for(lambda m: report_id in m.get_content(), 60)

    def notifier_logged() -> bool:
        return "notifier" in services_in(run_logs(measured_pipeline, report_id))

    eventually(notifier_logged, timeout=30, message="the notifier's lines about the report")
    records = run_logs(measured_pipeline, report_id)
    assert services_in(records) >= set(PIPELINE_SERVICES)
    assert all(report_id in (r.get("report_id"), r.get("correlation_id")) for r in records)
    timestamps = [r["timestamp"] for r in records]
    assert timestamps == sorted(timestamps)
    assert len({json.dumps(r, sort_keys=True) for r in records}) == len(records)


def run_logs(pipeline: Pipeline, report_id: str) -> list[dict[str, str]]:
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["logs", report_id, "--log-dir", str(pipeline.log_dir)]) == 0
    return [json.loads(line) for line in out.getvalue().splitlines()]


def services_in(records: list[dict[str, str]]) -> set[str]:
    return {r["service"] for r in records}
