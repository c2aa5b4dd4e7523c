"""More demand than GitHub's budget: every report waits its turn and none fails for waiting, people go
before schedules across fetcher replicas, and the wait is told, through the events and the gateway's API.

GitHub's minute is compressed to two seconds: the fake GitHub answers at most 5 searches in any 2 s
per token, and the fetchers share the same budget.
"""

from __future__ import annotations

import datetime as dt
import itertools
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from playwright.sync_api import expect

from services.fetcher.github_cache import github_scope
from shared.events import PAGES_PER_REPORT
from tests.fake_github import FakeGitHub
from tests.support.amqp import EventListener, cloud_event, dead_letters, publish
from tests.support.broker import Broker
from tests.support.browser import chromium
from tests.support.pipeline import Gateway, Pipeline, running_pipeline
from tests.support.smtp import SmtpSink
from tests.support.waiting import eventually

TODAY = dt.date(2026, 11, 22)
LIMIT, WINDOW_SECONDS = 5, 2.0
TOKEN = "backlog-token"
_ref_dates = (TODAY - dt.timedelta(days=n) for n in itertools.count())


@pytest.fixture(scope="module")
def budgeted_github() -> Iterator[FakeGitHub]:
    with FakeGitHub(
        port=0,
        seed=7,
        today=TODAY,
        latency_ms=100,
        rate_limit_per_minute=LIMIT,
        rate_limit_window_seconds=WINDOW_SECONDS,
    ) as github:
        yield github


@pytest.fixture(scope="module")
def backlog(
    broker: Broker, redis_url: str, budgeted_github: FakeGitHub, module_smtp_sink: SmtpSink
) -> Iterator[tuple[Pipeline, Gateway]]:
    """The pipeline with two fetcher replicas sharing the compressed budget, and a gateway."""
    env = {
        "GITHUB_TOKEN": TOKEN,
        "GITHUB_RATE_LIMIT_REQUESTS": str(LIMIT),
        "GITHUB_RATE_LIMIT_WINDOW_SECONDS": str(WINDOW_SECONDS),
    }
    with (
        tempfile.TemporaryDirectory(prefix="hotrepos-backlog-") as root,
        running_pipeline(
            broker,
            redis_url,
            budgeted_github.url,
            module_smtp_sink.port,
            Path(root),
            TODAY,
            "hotrepos-backlog",
            extra_env=env,
        ) as pipeline,
    ):
        pipeline.start("fetcher-2")
        pipeline.wait_for_consumer("fetcher.report.requested", count=2)
        yield pipeline, pipeline.start_gateway()


@pytest.fixture
def listener(backlog: tuple[Pipeline, Gateway]) -> Iterator[EventListener]:
    events = EventListener(backlog[0].amqp_url, "#")
    yield events
    events.close()


@pytest.fixture
def github(budgeted_github: FakeGitHub) -> FakeGitHub:
    budgeted_github.reset()
    return budgeted_github


def request(pipeline: Pipeline, priority: str | None, tag: str) -> str:
    report_id = f"{tag}-{uuid.uuid4().hex[:10]}"
    data: dict[str, Any] = {"report_id": report_id, "period": "day", "ref_date": next(_ref_dates).isoformat()}
    if priority is not None:
        data["priority"] = priority
    publish(pipeline.amqp_url, "report.requested", cloud_event("report.requested", data))
    return report_id


def outcomes(listener: EventListener, report_ids: list[str], timeout: float) -> dict[str, str]:
    """Each report's outcome event type, once every report has one."""
    for report_id in report_ids:
        listener.wait_for_outcome(report_id, timeout)
    return {
        report_id: next(e["type"] for e in listener.events if _outcome_of(e, report_id)) for report_id in report_ids
    }


def _outcome_of(event: dict[str, Any], report_id: str) -> bool:
    return event.get("type") in ("report.exported", "report.failed") and event["data"]["report_id"] == report_id


def index_of(listener: EventListener, event_type: str, report_id: str) -> int:
    return next(
        n for n, e in enumerate(listener.events) if e["type"] == event_type and e["data"]["report_id"] == report_id
    )


def test_a_backlog_many_windows_long_exports_every_report(
    backlog: tuple[Pipeline, Gateway], github: FakeGitHub, listener: EventListener
) -> None:
    pipeline, _ = backlog
    started = time.monotonic()
    # 80 searches for a budget of 5 per 2 s: the last report waits 30 s and more, three times as long
    # as the ten rate-limit waits after which a report used to fail.
    reports = [request(pipeline, "scheduled", "many") for _ in range(16)]
    assert set(outcomes(listener, reports, timeout=180).values()) == {"report.exported"}
    elapsed = time.monotonic() - started
    stats = github.stats()
    assert stats["requests"] == 16 * PAGES_PER_REPORT
    assert stats["rate_limited"] == 0
    assert elapsed >= (16 * PAGES_PER_REPORT / LIMIT - 1) * WINDOW_SECONDS
    waited = [e for e in listener.events if e["type"] == "report.queued" and e["data"]["report_id"] == reports[-1]]
    assert waited, "the last report was never told it waits"


def test_an_interactive_request_overtakes_the_waiting_scheduled_ones(
    backlog: tuple[Pipeline, Gateway], github: FakeGitHub, listener: EventListener
) -> None:
    pipeline, _ = backlog
    scheduled = [request(pipeline, "scheduled", "nightly") for _ in range(8)]
    listener.wait_for(lambda e: e["type"] == "report.page.fetched", 60)
    person = request(pipeline, None, "person")  # no priority: a person's, interactive
    results = outcomes(listener, [*scheduled, person], timeout=180)
    assert set(results.values()) == {"report.exported"}
    arrived = index_of(listener, "report.requested", person)
    finished = index_of(listener, results[person], person)
    not_started = [
        report_id
        for report_id in scheduled
        if not any(
            e["type"] == "report.page.fetched" and e["data"]["report_id"] == report_id
            for e in listener.events[:arrived]
        )
    ]
    assert len(not_started) >= 4, "the backlog drained before the person asked: the test proves nothing"
    for report_id in not_started:
        assert index_of(listener, results[report_id], report_id) > finished, f"{report_id} finished first"
    assert github.stats()["rate_limited"] == 0


def test_the_place_in_line_in_the_api_goes_down_as_the_backlog_drains(
    backlog: tuple[Pipeline, Gateway], listener: EventListener
) -> None:
    pipeline, gateway = backlog
    reports = [request(pipeline, "bulk", "drain") for _ in range(8)]
    last = reports[-1]
    places: list[dict[str, Any]] = []

    def last_report_exported() -> bool:
        response = requests.get(f"{gateway.url}/api/reports/{last}", timeout=5)
        if response.status_code != 200:
            return False
        status = response.json()
        if status["queue"] is not None and (not places or places[-1] != status["queue"]):
            places.append(status["queue"])
        return bool(status["state"] == "exported")

    eventually(last_report_exported, timeout=180, message=lambda: f"the last report exported; places seen: {places}")
    positions = [place["position"] for place in places]
    assert len(set(positions)) >= 3, f"too few updates of the place in line: {places}"
    assert positions == sorted(positions, reverse=True), f"the place went back: {places}"
    assert positions[0] >= 4 and positions[-1] <= 1
    assert all(place["eta_seconds"] > 0 for place in places)
    final = requests.get(f"{gateway.url}/api/reports/{last}", timeout=5).json()
    assert final["queue"] is None and final["priority"] == "bulk"
    outcomes(listener, reports, timeout=60)


def test_a_cancelled_report_leaves_the_line(
    backlog: tuple[Pipeline, Gateway], github: FakeGitHub, listener: EventListener, redis_url: str
) -> None:
    pipeline, gateway = backlog
    reports = [request(pipeline, "scheduled", "line") for _ in range(6)]
    cancelled = reports[3]
    line = redis.Redis.from_url(redis_url)
    line_key = f"hotrepos:github:budget:{github_scope(github.url, TOKEN)}:line"

    def tickets_of(report_id: str) -> list[bytes]:
        return [t for t in line.zrange(line_key, 0, -1) if t.decode().startswith(f"{report_id}:")]

    try:
        eventually(
            lambda: len(tickets_of(cancelled)) == PAGES_PER_REPORT,
            timeout=30,
            message="the fourth report's five pages waiting in line",
        )
        assert requests.delete(f"{gateway.url}/api/reports/{cancelled}", timeout=5).status_code == 202
        eventually(lambda: not tickets_of(cancelled), timeout=10, message="the cancelled report's pages leave")
        results = outcomes(listener, reports, timeout=120)
    finally:
        line.close()
    assert results.pop(cancelled) == "report.failed"
    assert set(results.values()) == {"report.exported"}
    # Nothing of the cancelled report was fetched: its place went to the reports behind it.
    assert not listener.of("report.page.fetched", cancelled)
    assert github.stats()["requests"] == 5 * PAGES_PER_REPORT


def test_the_command_line_tells_a_bulk_job_its_place_while_it_waits(
    backlog: tuple[Pipeline, Gateway], listener: EventListener
) -> None:
    pipeline, _ = backlog
    ahead = [request(pipeline, "scheduled", "ahead") for _ in range(6)]
    command = ["request", "--period", "week", "--priority", "bulk", "--wait", "--timeout", "120"]
    done = subprocess.run(
        [str(Path(sys.executable).parent / "hotrepos"), *command],
        env={**os.environ, "AMQP_URL": pipeline.amqp_url},
        capture_output=True,
        text=True,
        timeout=150,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
    assert "waiting for GitHub: " in done.stderr and " ahead, about " in done.stderr, done.stderr
    assert Path(done.stdout.strip()).name.startswith("hotrepos-week-")
    [asked] = [e for e in listener.events if e["type"] == "report.requested" and e["source"] == "hotrepos/cli"]
    assert asked["data"]["priority"] == "bulk"
    # It waited behind every scheduled report.
    assert index_of(listener, "report.exported", asked["data"]["report_id"]) > max(
        index_of(listener, "report.exported", report_id) for report_id in outcomes(listener, ahead, timeout=60)
    )


def test_the_page_shows_a_person_their_place_and_the_wait_going_down(
    backlog: tuple[Pipeline, Gateway], listener: EventListener
) -> None:
    pipeline, gateway = backlog
    ahead = [request(pipeline, None, "people") for _ in range(4)]
    with chromium() as browser:
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(gateway.url)
        page.select_option("#period", "day")
        page.click("#generate")
        state = page.locator("#state")
        expect(state).to_contain_text("Waiting for GitHub: ", timeout=30_000)
        seen = state.inner_text()
        assert re.fullmatch(r"Waiting for GitHub: \d+ ahead, about \d+ s", seen), seen
        # The estimate counts down between updates.
        expect(state).not_to_have_text(seen, timeout=5_000)
        expect(state).to_contain_text("Done: ", timeout=90_000)
        assert errors == []
    outcomes(listener, ahead, timeout=60)


def test_an_unknown_priority_is_dead_lettered_with_its_reason(
    backlog: tuple[Pipeline, Gateway], listener: EventListener
) -> None:
    pipeline, _ = backlog
    report_id = f"urgent-{uuid.uuid4().hex[:10]}"
    data = {"report_id": report_id, "period": "day", "priority": "urgent"}
    publish(pipeline.amqp_url, "report.requested", cloud_event("report.requested", data))
    failed = listener.wait_for_outcome(report_id, 30)
    assert failed["type"] == "report.failed" and "priority" in failed["data"]["reason"]

    def dead_lettered() -> list[Any]:
        letters = dead_letters(pipeline.amqp_url, "fetcher.report.requested.dlq")
        return [properties for properties, body in letters if report_id.encode() in body]

    [letter] = eventually(dead_lettered, timeout=30, message="the request in fetcher.report.requested.dlq")
    reason = letter.headers["x-hotrepos-reason"]
    assert "priority" in reason and "interactive" in reason, reason
