"""The `hotrepos` command as installed, against the real pipeline: request --wait, publish, tail."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fake_github import FakeGitHub
from tests.support.amqp import EventListener, cloud_event, publish
from tests.support.broker import Broker
from tests.support.pipeline import Pipeline
from tests.support.waiting import eventually

HOTREPOS = Path(sys.executable).parent / "hotrepos"
CSV_HEADER = "language,full_name,stars,forks,created_at,html_url,description"
BAR = "━"  # what rich draws its progress bars with


@pytest.fixture
def env(pipeline: Pipeline) -> dict[str, str]:
    assert HOTREPOS.exists(), "the project installs the `hotrepos` console script"
    return {**os.environ, "AMQP_URL": pipeline.amqp_url, "REDIS_URL": pipeline.redis_url}


@pytest.fixture
def listener(pipeline: Pipeline) -> Iterator[EventListener]:
    events = EventListener(pipeline.amqp_url, "#")
    yield events
    events.close()


def hotrepos(env: dict[str, str], *args: str, timeout: float = 150) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(HOTREPOS), *args], env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


def test_request_wait_follows_the_report_and_prints_the_csv_path(
    pipeline: Pipeline, env: dict[str, str], fake_github: FakeGitHub
) -> None:
    done = hotrepos(env, "request", "--period", "week", "--locale", "fr", "--wait", "--timeout", "120")

    assert done.returncode == 0, done.stderr
    path = Path(done.stdout.strip())
    assert path.parent == pipeline.reports_dir and path.name.startswith("hotrepos-week-")
    assert path.read_bytes().split(b"\r\n", 1)[0].decode() == CSV_HEADER
    # Not a terminal: one plain line per step, no bar, no escape codes.
    lines = done.stderr.splitlines()
    assert lines[0].startswith("report ") and lines[0].endswith(" requested (week)")
    assert lines[1:6] == [f"fetching: page {n} of 5" for n in range(1, 6)]
    assert lines[6].startswith("aggregated: ") and lines[7].startswith("exported: ")
    assert BAR not in done.stderr and "\x1b" not in done.stderr


def test_request_wait_draws_a_bar_on_a_terminal_and_still_prints_only_the_path(
    pipeline: Pipeline, env: dict[str, str], fake_github: FakeGitHub
) -> None:
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [str(HOTREPOS), "request", "--period", "day", "--wait", "--timeout", "120"],
        env={**env, "TERM": "xterm-256color", "COLUMNS": "100"},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=terminal,
        text=True,
    )
    os.close(terminal)
    drawn = b""
    while True:
        ready, _, _ = select.select([controller], [], [], 150)
        assert ready, "the command went quiet"
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # the terminal closed: the command is done
            break
        if not chunk:
            break
        drawn += chunk
    os.close(controller)
    stdout = process.communicate(timeout=30)[0]

    assert process.returncode == 0, drawn.decode(errors="replace")
    assert BAR in drawn.decode(errors="replace")
    assert Path(stdout.strip()).parent == pipeline.reports_dir


def test_request_wait_exits_non_zero_when_the_report_fails(env: dict[str, str], fake_github: FakeGitHub) -> None:
    fake_github.add_fault("status", status=422)  # GitHub refuses the query: the fetcher gives up at once

    done = hotrepos(env, "request", "--period", "month", "--wait", "--timeout", "120")

    assert done.returncode == 1, done.stderr
    assert done.stdout == ""
    assert "failed at fetch" in done.stderr.splitlines()[-1]


def test_request_refuses_invalid_arguments(env: dict[str, str]) -> None:
    for args, word in ((["--notify", "nobody"], "notify"), (["--locale", "en_GB"], "locale")):
        done = hotrepos(env, "request", "--period", "week", *args)
        assert done.returncode == 2 and word in done.stderr, (args, done.stderr)
    assert hotrepos(env, "request", "--period", "fortnight").returncode == 2  # argparse's own check


def test_publish_validates_against_the_schema_and_publishes_nothing_that_fails(
    pipeline: Pipeline, env: dict[str, str], listener: EventListener
) -> None:
    refused = [
        hotrepos(env, "publish", "report.requested", "--data", '{"period": "yearly"}'),
        hotrepos(env, "publish", "report.requested", "--data", '{"period": "week", "colour": "red"}'),
        hotrepos(env, "publish", "report.requested", "--data", "{period: week}"),
        hotrepos(env, "publish", "report.exported", "--data", '{"report_id": "x", "rows": -1}'),
        hotrepos(env, "publish", "report.invented", "--data", "{}"),
        hotrepos(env, "publish", "report.requested", "--data", '{"period": "week"}', "--locale", "no pe"),
    ]
    for done in refused:
        assert done.returncode == 2 and "nothing was published" in done.stderr, done.stderr
    assert "period: Input should be 'day', 'week' or 'month'" in refused[0].stderr
    assert "colour: Extra inputs are not permitted" in refused[1].stderr

    report_id = f"cli-{uuid.uuid4().hex[:8]}"
    data = {
        "report_id": report_id,
        "path": "/nowhere/x.csv",
        "rows": 0,
        "sha256": "d" * 64,
        "layout": "rows",
        "spec": {"period": "day", "since": "2026-11-21"},
        "repositories": 0,
        "top_languages": [],
    }
    accepted = hotrepos(env, "publish", "report.exported", "--data", json.dumps(data), "--locale", "de")
    assert accepted.returncode == 0, accepted.stderr
    event = listener.wait_for(lambda e: e.get("id") == accepted.stdout.strip())
    assert (event["type"], event["locale"], event["correlationid"]) == ("report.exported", "de", report_id)
    assert event["data"]["report_id"] == report_id and event["source"] == "hotrepos/cli"
    # Everything the refused commands could have published would have come before the accepted one.
    assert [e["id"] for e in listener.events] == [event["id"]]


def test_tail_prints_the_events_that_match_its_pattern_from_a_queue_of_its_own(
    pipeline: Pipeline, broker: Broker, env: dict[str, str]
) -> None:
    queues_before = set(broker.queue_names(pipeline.vhost))
    tail = subprocess.Popen(
        [str(HOTREPOS), "tail", "report.*", "--count", "2"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert tail.stderr is not None
        ready, _, _ = select.select([tail.stderr], [], [], 30)
        assert ready and "listening on hotrepos.events for 'report.*'" in tail.stderr.readline()

        report_id = f"tail-{uuid.uuid4().hex[:8]}"
        spec = {"period": "day", "since": "2026-11-21"}
        page = {"report_id": report_id, "page": 1, "pages": 2, "spec": spec, "items": []}
        exported = {
            "report_id": report_id,
            "path": "/nowhere/t.csv",
            "rows": 4,
            "sha256": "e" * 64,
            "layout": "rows",
            "spec": spec,
            "repositories": 4,
            "top_languages": [],
        }
        # Three words: report.* does not match it, and it comes first, so it would be the first line.
        publish(pipeline.amqp_url, "report.page.fetched", cloud_event("report.page.fetched", page))
        publish(pipeline.amqp_url, "report.exported", cloud_event("report.exported", exported))
        publish(pipeline.amqp_url, "report.garbled", b"\x00not json", content_type="application/json")
        stdout, stderr = tail.communicate(timeout=30)
    finally:
        tail.kill()
        tail.wait()

    assert tail.returncode == 0, stderr
    lines = stdout.splitlines()
    assert len(lines) == 2, stdout
    assert f"report.exported        report={report_id} rows=4 path=/nowhere/t.csv" in lines[0]
    assert lines[1].startswith("report.garbled") and "not a CloudEvent" in lines[1]
    # Its queue was its own and went away with it; the services' queues were not touched.
    eventually(
        lambda: set(broker.queue_names(pipeline.vhost)) == queues_before, timeout=30, message="tail's queue gone"
    )
