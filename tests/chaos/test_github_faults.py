"""GitHub misbehaving in every way the fake knows: each report is retried then exported, or fails
with a reason that reaches the requester and the admins. None ends silently."""

from __future__ import annotations

import csv
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.conftest import TODAY
from tests.fake_github import FakeGitHub
from tests.support.broker import Broker
from tests.support.chaos import (
    REQUESTER,
    OutcomeRecorder,
    RequestPublisher,
    admin_failed_emails,
    chaos_sizes,
    count_figures,
    dead_letter_counts,
    publish_figures,
    report_ids,
    requester_emails,
    wait_for_reports,
)
from tests.support.pipeline import Pipeline, running_pipeline
from tests.support.smtp import SmtpSink
from tests.support.waiting import eventually

FULL = chaos_sizes().scale == "full"
# A lowered read timeout (GITHUB_READ_TIMEOUT_SECONDS) keeps the timeout cases short.
TEST_READ_TIMEOUT = 2


@dataclass(frozen=True)
class FaultCase:
    name: str
    faults: list[dict[str, Any]]
    outcome: str  # "exported" or "failed"
    requests_for_page: dict[int, int] = field(default_factory=dict)  # GitHub calls expected per page
    reason: str = ""
    check: str = ""


CASES = [
    FaultCase(
        "403 rate limit with reset headers",
        [{"kind": "rate_limit", "page": 2, "times": 1, "reset_in": 1}],
        "exported",
        {2: 2},
    ),
    FaultCase(
        "429 with Retry-After", [{"kind": "retry_after", "page": 3, "times": 1, "seconds": 1}], "exported", {3: 2}
    ),
    FaultCase("502 twice", [{"kind": "status", "status": 502, "page": 1, "times": 2}], "exported", {1: 3}),
    FaultCase("503 once", [{"kind": "status", "status": 503, "page": 4, "times": 1}], "exported", {4: 2}),
    FaultCase(
        "502 always",
        [{"kind": "status", "status": 502, "page": 1}],
        "failed",
        {1: 5},
        reason="GitHub answered 502 on page 1 (gave up after 5 attempts)",
    ),
    FaultCase(
        "read timeout once",
        [{"kind": "timeout", "page": 2, "times": 1, "seconds": TEST_READ_TIMEOUT + 2}],
        "exported",
        {2: 2},
    ),
    FaultCase(
        "read timeout always",
        [{"kind": "timeout", "page": 2, "seconds": TEST_READ_TIMEOUT + 2}],
        "failed",
        {2: 5},
        reason="GitHub timed out on page 2",
    ),
    FaultCase("truncated JSON once", [{"kind": "truncated", "page": 1, "times": 1}], "exported", {1: 2}),
    FaultCase(
        "truncated JSON always",
        [{"kind": "truncated", "page": 1}],
        "failed",
        {1: 5},
        reason="GitHub sent a malformed body on page 1",
    ),
    FaultCase("incomplete_results once", [{"kind": "incomplete", "page": 1, "times": 1}], "exported", {1: 2}),
    FaultCase(
        "incomplete_results always",
        [{"kind": "incomplete", "page": 1}],
        "exported",
        {1: 3},
        check="page 1 is passed on flagged incomplete",
    ),
    FaultCase(
        "422",
        [{"kind": "status", "status": 422, "page": 1}],
        "failed",
        {1: 1},
        reason="GitHub answered 422 on page 1: Validation Failed",
    ),
    FaultCase(
        "items missing optional fields",
        [{"kind": "missing_fields", "page": 1}],
        "exported",
        {1: 1},
        check="page 1 rows have no language and no description",
    ),
]


@pytest.fixture(scope="module")
def fault_pipeline(
    broker: Broker,
    redis_url: str,
    module_fake_github: FakeGitHub,
    module_smtp_sink: SmtpSink,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Pipeline, OutcomeRecorder]]:
    with broker.vhost("hotrepos-chaos") as vhost:
        recorder = OutcomeRecorder(broker.amqp_url(vhost))
        try:
            with running_pipeline(
                broker=broker,
                vhost=vhost,
                redis_url=redis_url,
                github_url=module_fake_github.url,
                smtp_port=module_smtp_sink.port,
                root=tmp_path_factory.mktemp("faults"),
                today=TODAY,
                extra_env={"GITHUB_READ_TIMEOUT_SECONDS": str(TEST_READ_TIMEOUT)},
            ) as pipeline:
                yield pipeline, recorder
        finally:
            recorder.close()


@pytest.mark.timeout(240 if FULL else 90)
@pytest.mark.parametrize("case", [pytest.param(c, id=c.name.replace(" ", "-")) for c in CASES])
def test_github_fault_ends_in_a_retried_export_or_a_told_failure(
    case: FaultCase,
    fault_pipeline: tuple[Pipeline, OutcomeRecorder],
    fake_github: FakeGitHub,
    module_smtp_sink: SmtpSink,
    figures_name: str,
) -> None:
    pipeline, recorder = fault_pipeline
    sink = module_smtp_sink
    fake_github.add_faults(case.faults)
    [report_id] = report_ids("fault", 1)
    started = time.monotonic()
    publisher = RequestPublisher(pipeline.amqp_url)
    publisher.request(report_id, period="day")
    publisher.close()
    wait_for_reports([report_id], recorder, sink, 180 if FULL else 60)
    seconds = round(time.monotonic() - started, 1)
    # The sentinel: a report of its own, without faults, requested once this one is told. It goes
    # through every queue this one went through, each taken in order by one consumer, and the
    # notifier handles its three queues one message at a time: once the sentinel's email is in, a
    # second outcome, CSV or email of this report, or the admins' email that follows the requester's,
    # would have come before it. The fetcher's pool runs fetches side by side and orders nothing, but
    # only the faulted page is retried here, and its retries are over before the report is told.
    fake_github.clear_faults()
    [sentinel] = report_ids("sentinel", 1)
    publisher = RequestPublisher(pipeline.amqp_url)
    publisher.request(sentinel, period="day")
    publisher.close()
    eventually(lambda: requester_emails(sink, sentinel), timeout=60, message="the sentinel report's email")
    stats = fake_github.stats()
    # GitHub calls for this report: the sentinel made one for each page.
    calls_by_page = {page: calls - 1 for page, calls in stats["by_page"].items() if calls > 1}
    figures = count_figures(
        [report_id],
        recorder=recorder,
        sink=sink,
        reports_dir=pipeline.reports_dir,
        dead_lettered=sum(dead_letter_counts(pipeline.broker, pipeline.vhost).values()),
    )
    [outcome, *_] = recorder.outcomes_by_report().get(report_id, [{}])
    pages = [e["data"] for e in recorder.of("report.page.fetched", report_id)]
    payload = publish_figures(
        figures_name,
        figures,
        fault=case.name,
        github_requests_by_page=calls_by_page,
        faults_applied=stats["faults"],
        reason=(outcome.get("data") or {}).get("reason"),
        admin_emails=len(admin_failed_emails(sink, report_id)),
        pages_flagged_incomplete=sorted(p["page"] for p in pages if p.get("incomplete_results")),
        seconds=seconds,
    )

    assert payload["lost"] == 0 and payload["duplicates"] == 0, payload
    assert payload["dead_lettered"] == 0, payload
    for page, calls in case.requests_for_page.items():
        assert calls_by_page.get(str(page)) == calls, (page, stats)
    assert len(requester_emails(sink, report_id, REQUESTER)) == 1, payload
    if case.outcome == "exported":
        assert outcome.get("type") == "report.exported", payload
        assert payload["csv_files"] == 1, payload
    else:
        assert outcome.get("type") == "report.failed", payload
        assert outcome["data"]["stage"] == "fetch", payload
        assert case.reason in outcome["data"]["reason"], payload
        assert payload["admin_emails"] == 1, "the admins were not told"
        assert payload["csv_files"] == 0, payload
        assert case.reason in requester_emails(sink, report_id, REQUESTER)[0].get_content()
    if case.check.startswith("page 1 is passed on flagged incomplete"):
        assert payload["pages_flagged_incomplete"] == [1], payload
        # The report is said to be partial, on the wire and in the requester's email.
        assert outcome["data"]["incomplete_pages"] == [1], outcome
        assert (
            "Partial: GitHub answered pages 1 only in part"
            in requester_emails(sink, report_id, REQUESTER)[0].get_content()
        )
    if case.check.startswith("page 1 rows have no language"):
        [path] = pipeline.reports_dir.glob(f"*-{report_id}.csv")
        with path.open(encoding="utf-8", newline="") as handle:
            rows = list(csv.DictReader(handle))
        assert rows and all(r["language"] == "Unknown" and r["description"] == "" for r in rows), rows[:3]
