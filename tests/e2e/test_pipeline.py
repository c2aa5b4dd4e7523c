"""One published report.requested becomes a CSV and an email, through every service as a process."""

from __future__ import annotations

import csv
import io
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TODAY
from tests.fake_github import FakeGitHub
from tests.support.amqp import EventListener, cloud_event, dead_letters, publish
from tests.support.pipeline import ADMIN, Pipeline
from tests.support.smtp import SmtpSink
from tests.support.waiting import eventually

REQUESTER = "reader@example.com"
HEADER = ["language", "full_name", "stars", "forks", "created_at", "html_url", "description"]


@pytest.fixture
def listener(pipeline: Pipeline) -> Iterator[EventListener]:
    events = EventListener(pipeline.amqp_url, "#")
    yield events
    events.close()


@pytest.fixture
def github(fake_github: FakeGitHub) -> FakeGitHub:
    return fake_github


def request_report(pipeline: Pipeline, locale: str | None = None, **data: Any) -> str:
    report_id = data.setdefault("report_id", f"t-{uuid.uuid4().hex[:16]}")
    publish(pipeline.amqp_url, "report.requested", cloud_event("report.requested", data, locale=locale))
    return str(report_id)


def expected_rows(items: list[dict[str, Any]]) -> list[list[str]]:
    """The report as the issue specifies it, written independently of the exporter's code."""
    unique: dict[int, dict[str, Any]] = {}
    for item in items:
        unique.setdefault(item["id"], item)
    by_language: dict[str, list[dict[str, Any]]] = {}
    for item in unique.values():
        by_language.setdefault(item["language"] or "Unknown", []).append(item)

    def cell(value: str) -> str:
        return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value

    rows = []
    for language in sorted(by_language, key=lambda name: (name == "Unknown", name.casefold(), name)):
        for item in sorted(
            by_language[language], key=lambda i: (-i["stargazers_count"], i["full_name"].casefold(), i["id"])
        ):
            rows.append(
                [
                    cell(language),
                    cell(item["full_name"]),
                    str(item["stargazers_count"]),
                    str(item["forks_count"]),
                    item["created_at"],
                    item["html_url"],
                    cell(item["description"] or ""),
                ]
            )
    return rows


def read_csv(path: str) -> list[list[str]]:
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.reader(handle))


def test_month_report_gives_the_exact_csv_and_the_ready_email(
    pipeline: Pipeline, github: FakeGitHub, listener: EventListener, module_smtp_sink: SmtpSink
) -> None:
    report_id = request_report(pipeline, period="month", notify=REQUESTER)

    exported = listener.wait_for_outcome(report_id, 90)
    assert exported["type"] == "report.exported", exported
    data = exported["data"]
    since = TODAY.replace(day=23, month=10)
    path = Path(data["path"])
    assert path.parent == pipeline.reports_dir
    assert path.name == f"hotrepos-month-{since.isoformat()}-{report_id}.csv"

    content = path.read_bytes()
    expected = expected_rows(github.expected_items(since))
    buffer = io.StringIO(newline="")
    csv.writer(buffer, lineterminator="\r\n").writerows([HEADER, *expected])
    assert content.decode("utf-8") == buffer.getvalue()
    assert data["rows"] == len(expected) == 500
    assert exported["correlationid"] == report_id

    # Null languages, and every formula probe neutralised.
    rows = read_csv(str(path))[1:]
    assert any(row[0] == "Unknown" for row in rows)
    descriptions = [row[6] for row in rows]
    assert '\'=HYPERLINK("http://example.invalid/x","click me")' in descriptions
    assert not any(d[:1] in ("=", "+", "-", "@", "\t", "\r") for row in rows for d in row)

    mail = module_smtp_sink.wait_for(lambda m: report_id in m.get_content(), 30)[0]
    assert mail["To"] == REQUESTER
    assert mail["Subject"] == "Your monthly hotrepos report is ready: 500 repositories"
    assert "Created on or after: October 23, 2026" in mail.get_content()


def test_by_language_layout_and_french_email(
    pipeline: Pipeline, github: FakeGitHub, listener: EventListener, module_smtp_sink: SmtpSink
) -> None:
    report_id = request_report(pipeline, locale="fr", period="week", layout="by-language", notify=REQUESTER)
    exported = listener.wait_for_outcome(report_id, 90)
    assert exported["type"] == "report.exported", exported
    expected = expected_rows(github.expected_items(TODAY.replace(day=15)))
    languages: dict[str, list[str]] = {}
    for row in expected:
        languages.setdefault(row[0], []).append(row[1])
    assert read_csv(exported["data"]["path"]) == [[language, *names] for language, names in languages.items()]

    mail = module_smtp_sink.wait_for(lambda m: report_id in m.get_content(), 30)[0]
    assert mail["Subject"] == f"Votre rapport hotrepos hebdomadaire est prêt : {len(expected)} dépôts"
    assert "Créés à partir du : 15 novembre 2026" in mail.get_content()
    assert mail["Content-Language"] == "fr"


def test_a_repository_on_two_pages_is_reported_once(
    pipeline: Pipeline, github: FakeGitHub, listener: EventListener
) -> None:
    github.add_fault("shift", page=2, times=1)
    report_id = request_report(pipeline, period="month")
    exported = listener.wait_for_outcome(report_id, 90)
    assert exported["type"] == "report.exported", exported
    names = [row[1] for row in read_csv(exported["data"]["path"])[1:]]
    assert len(names) == len(set(names)) == exported["data"]["rows"]
    last_of_page_one = github.expected_items(TODAY.replace(day=23, month=10), pages=1)[-1]["full_name"]
    assert names.count(last_of_page_one) == 1
    assert github.stats()["faults"]["shift"] == 1


def test_a_rate_limited_page_waits_then_is_served(
    pipeline: Pipeline, github: FakeGitHub, listener: EventListener
) -> None:
    github.add_fault("rate_limit", page=3, times=1, reset_in=1)
    report_id = request_report(pipeline, period="month")
    exported = listener.wait_for_outcome(report_id, 90)
    assert exported["type"] == "report.exported", exported
    assert exported["data"]["rows"] == 500
    stats = github.stats()
    assert stats["rate_limited"] == 1
    assert stats["by_page"]["3"] == 2


def test_a_page_that_always_fails_fails_the_report_and_tells_everyone(
    pipeline: Pipeline, github: FakeGitHub, listener: EventListener, module_smtp_sink: SmtpSink
) -> None:
    github.add_fault("status", page=4, status=500)
    report_id = request_report(pipeline, locale="de", period="month", notify=REQUESTER)
    failed = listener.wait_for_outcome(report_id, 90)
    assert failed["type"] == "report.failed", failed
    assert failed["data"]["stage"] == "fetch"
    assert "500 on page 4" in failed["data"]["reason"]
    assert github.stats()["by_page"]["4"] == 5  # FETCH_MAX_ATTEMPTS
    assert listener.of("report.exported", report_id) == []

    admin = module_smtp_sink.wait_for(lambda m: ADMIN in str(m["To"]) and report_id in str(m["Subject"]), 30)
    assert "failed at stage fetch" in str(admin[0]["Subject"])
    requester = module_smtp_sink.wait_for(lambda m: m["To"] == REQUESTER and report_id in m.get_content(), 30)
    assert requester[0]["Subject"] == "Ihr hotrepos-Bericht konnte nicht erstellt werden"
    assert not list(pipeline.reports_dir.glob(f"*{report_id}*"))


def test_a_poison_message_is_dead_lettered_alerted_and_the_service_goes_on(
    pipeline: Pipeline, github: FakeGitHub, listener: EventListener, module_smtp_sink: SmtpSink
) -> None:
    marker = uuid.uuid4().hex
    publish(pipeline.amqp_url, "report.requested", b"{not json " + marker.encode(), message_id=marker)

    def poison_in_dlq() -> list[Any]:
        return [
            p for p, body in dead_letters(pipeline.amqp_url, "fetcher.report.requested.dlq") if marker.encode() in body
        ]

    letters = eventually(
        poison_in_dlq, timeout=30, message="the poison message in fetcher.report.requested.dlq", interval=0.2
    )
    assert letters[0].headers["x-hotrepos-reason"].startswith("body is not JSON")
    alert = module_smtp_sink.wait_for(
        lambda m: ADMIN in str(m["To"]) and "message.dead_lettered" in str(m["Subject"]) and marker in m.get_content(),
        30,
    )
    assert "[hotrepos] ERROR in fetcher" in str(alert[0]["Subject"])

    report_id = request_report(pipeline, period="day")
    assert listener.wait_for_outcome(report_id, 90)["type"] == "report.exported"
    pipeline.assert_alive()


@pytest.mark.parametrize(
    ("data", "stage", "reason"),
    [
        ({"period": "week", "ref_date": "2027-01-01"}, "request", "ref_date 2027-01-01 is in the future"),
        ({"period": "year"}, "request", "period"),
    ],
)
def test_bad_requests_fail_with_a_clear_reason(
    pipeline: Pipeline, listener: EventListener, data: dict[str, Any], stage: str, reason: str
) -> None:
    report_id = request_report(pipeline, **data)
    failed = listener.wait_for_outcome(report_id, 60)
    assert failed["type"] == "report.failed"
    assert failed["data"]["stage"] == stage
    assert reason in failed["data"]["reason"]


def test_without_report_id_or_ref_date_the_event_id_and_today_are_used(
    pipeline: Pipeline, listener: EventListener
) -> None:
    event = cloud_event("report.requested", {"period": "day"})
    publish(pipeline.amqp_url, "report.requested", event)
    exported = listener.wait_for_outcome(event["id"], 90)
    assert exported["type"] == "report.exported"
    assert exported["data"]["spec"]["since"] == TODAY.replace(day=21).isoformat()


def test_each_handler_and_task_writes_its_own_log_file(pipeline: Pipeline, listener: EventListener) -> None:
    report_id = request_report(pipeline, period="day")
    listener.wait_for_outcome(report_id, 90)
    names = {p.name for p in pipeline.log_dir.glob("*.log")}
    assert {
        "fetcher.handle_report_requested.log",
        "fetcher.fetch_page.log",
        "aggregator.handle_report_page_fetched.log",
        "exporter.handle_report_aggregated.log",
    } <= names
    lines = [json.loads(line) for line in (pipeline.log_dir / "fetcher.fetch_page.log").read_text().splitlines()]
    mine = [line for line in lines if line.get("report_id") == report_id]
    assert mine and all(line["service"] == "fetcher" and line["correlation_id"] == report_id for line in mine)
