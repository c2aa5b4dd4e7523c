"""`docker compose --profile offline up` on a real engine, used the way its users use it."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from typing import Any
from urllib.parse import quote

import pytest
import requests

from infra.rabbitmq.definitions import OPERATOR
from services.fetcher.topology import TASK_QUEUE
from shared.topology import FETCHER_REQUESTED
from tests.deploy.conftest import Figures
from tests.deploy.stack import IMAGE, UP, ComposeStack
from tests.support.amqp import EventListener
from tests.support.waiting import eventually

# The image build and the stack's start-up come first, in the first test's time.
pytestmark = pytest.mark.timeout(1200)

CSV_HEADER = "language,full_name,stars,forks,created_at,html_url,description"
PAGES = {1, 2, 3, 4, 5}
FETCHERS = 3
# The fake GitHub answers this slowly while a fetcher is crashed, so that its pages are in flight.
SLOW_GITHUB_MS = 15000
ERLANG_PID = re.compile(r"<\d+\.\d+\.\d+>")
# Compose's log prefix may carry terminal control sequences even with --no-color.
CONTROL_SEQUENCE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def request_report(stack: ComposeStack, period: str = "week", ref_date: str | None = None) -> tuple[str, str]:
    """A report asked for through the gateway's API, as the page does: its id and the address it is mailed to."""
    address = f"deploy-{uuid.uuid4().hex[:10]}@example.com"
    order = {"period": period, "notify": address} | ({"ref_date": ref_date} if ref_date else {})
    answer = stack.api.post(f"{stack.gateway}/api/reports", json=order, timeout=30)
    assert answer.status_code == 202, answer.text
    return str(answer.json()["report_id"]), address


def outcome_of(stack: ComposeStack, report_id: str, timeout: float = 240) -> dict[str, Any]:
    """The report's status once it is exported or failed, polled through the gateway."""

    seen: dict[str, Any] = {}

    def ended() -> dict[str, Any] | None:
        seen.update(status=stack.api.get(f"{stack.gateway}/api/reports/{report_id}", timeout=30).json())
        status: dict[str, Any] = seen["status"]
        return status if status.get("state") in ("exported", "failed") else None

    return eventually(
        ended,
        timeout=timeout,
        message=lambda: f"report {report_id} done; last seen: {seen.get('status')}",
        interval=0.5,
    )


def download(stack: ComposeStack, status: dict[str, Any]) -> bytes:
    answer = stack.api.get(f"{stack.gateway}{status['download_url']}", timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.content


def emails_to(stack: ComposeStack, address: str) -> list[dict[str, Any]]:
    messages = requests.get(f"{stack.mailpit}/api/v1/messages", timeout=30).json()["messages"]
    return [m for m in messages if address in m["To"]]


def history(stack: ComposeStack) -> dict[str, dict[str, Any]]:
    page = stack.api.get(f"{stack.gateway}/api/reports", params={"limit": 100}, timeout=30).json()
    return {item["report_id"]: item for item in page["items"]}


def dropped_connections(stack: ComposeStack, user: str) -> list[str]:
    """The broker's log lines about a connection of this user that went without AMQP's Connection.Close."""
    lines = stack.compose("logs", "--no-color", "--no-log-prefix", "rabbitmq").stdout.splitlines()
    # The broker logs the user and the reason on separate lines, both from the connection's own process.
    users_connections = {pid for line in lines if f"user: '{user}'" in line for pid in ERLANG_PID.findall(line)}
    return [
        line
        for line in lines
        if "unexpectedly closed TCP connection" in line and set(ERLANG_PID.findall(line)) & users_connections
    ]


def short(container: str) -> str:
    """fetcher-2 for <project>-fetcher-2."""
    return "-".join(container.rsplit("-", 2)[-2:])


def scale_fetchers(stack: ComposeStack, count: int) -> float:
    """Seconds until `count` fetchers are healthy and each consumes both of the fetcher's queues."""
    started = time.monotonic()
    stack.compose(*UP, "--no-recreate", "--scale", f"fetcher={count}")
    stack.wait_healthy(stack.expected_containers(fetchers=count))

    def consuming() -> bool:
        queues = (FETCHER_REQUESTED.queue_name, TASK_QUEUE.name)
        return all(stack.management(f"/queues/hotrepos/{q}")["consumers"] == count for q in queues)

    eventually(consuming, timeout=60, message=f"{count} fetchers consuming")
    return time.monotonic() - started


def pages_by_fetcher(stack: ComposeStack, report_id: str) -> dict[str, set[int]]:
    """Which fetcher container fetched which page of a report, from the fetchers' own JSON logs."""
    log = stack.compose("logs", "--no-color", "fetcher").stdout
    pages: dict[str, set[int]] = defaultdict(set)
    for line in log.splitlines():
        prefix, _, text = line.partition("|")
        try:
            entry = json.loads(text)
        except ValueError:
            continue
        if entry.get("event") == "page.fetched" and entry.get("report_id") == report_id:
            pages[CONTROL_SEQUENCE.sub("", prefix).strip()].add(int(entry["page"]))
    return dict(pages)


def test_compose_resolves_every_file_with_every_profile(stack: ComposeStack) -> None:
    profiles = ("--profile", "offline", "--profile", "observability", "--profile", "cli", "--profile", "cluster")
    for overlay in ("compose.tls.yaml", "compose.cluster.yaml"):
        stack.compose("-f", "compose.yaml", "-f", overlay, *profiles, "config", "--quiet")
    stack.compose(
        "-f", "compose.yaml", "-f", "compose.cluster.yaml", "-f", "compose.tls.yaml", *profiles, "config", "--quiet"
    )


def test_the_image_is_built_once_and_runs_as_hotrepos_with_its_locked_dependencies(
    stack: ComposeStack, figures: Figures
) -> None:
    assert stack.build_log.count(f"Successfully tagged {IMAGE}") == 1, stack.build_log[-3000:]
    size, user = stack.inspect(IMAGE, "{{.Size}} {{.Config.User}}").split()
    figures.record("image size", f"{int(size) / 1e6:.0f} MB ({IMAGE}, docker image inspect)")
    # redis-py needs the async-timeout backport below Python 3.11.3: the lock brings it into the image's venv.
    probe = stack.compose(
        "run",
        "--rm",
        "--no-deps",
        "-T",
        "cli",
        "python",
        "-c",
        "import os, platform, async_timeout, redis, celery; "
        "print(platform.python_version(), os.getuid(), async_timeout.__file__)",
    )
    python, uid, module = probe.stdout.split()
    figures.record("image runs", f"Python {python} as {user} (uid {uid}); async_timeout from {module}")
    assert user == "hotrepos" and uid == "10001"
    assert module.startswith("/opt/hotrepos/"), "async-timeout comes from the locked venv, not the base image"


def test_a_report_through_the_gateway_is_exported_downloaded_and_mailed(stack: ComposeStack, figures: Figures) -> None:
    started = time.monotonic()
    report_id, address = request_report(stack)
    status = outcome_of(stack, report_id)
    figures.seconds("report through the gateway (POST to exported)", started)
    assert status["state"] == "exported", status
    csv = download(stack, status)
    assert csv.split(b"\r\n", 1)[0].decode() == CSV_HEADER
    assert hashlib.sha256(csv).hexdigest() == status["sha256"]
    eventually(
        lambda: len(emails_to(stack, address)) == 1, timeout=60, message=f"the report's email to {address} in the sink"
    )
    figures.record("report through the gateway", f"{status['rows']} rows, {status['repositories']} repositories")


def test_the_cli_runs_inside_the_stack_and_from_the_host_as_the_operator(stack: ComposeStack, figures: Figures) -> None:
    started = time.monotonic()
    waited = stack.compose(
        "run", "--rm", "-T", "cli", "hotrepos", "request", "--period", "day", "--wait", "--timeout", "240"
    )
    figures.seconds("`docker compose run --rm cli hotrepos request --wait`", started)
    path = waited.stdout.strip().splitlines()[-1]
    assert path.startswith("/var/lib/hotrepos/reports/hotrepos-day-"), waited.stdout + waited.stderr
    assert "exported: " in waited.stderr
    listed = stack.compose("run", "--rm", "-T", "cli", "hotrepos", "dlq", "list")
    assert all(count == "0" for _, count in (line.split() for line in listed.stdout.splitlines())), listed.stdout

    # From this machine, through the published port, as the docs tell an operator to point it.
    env = {**os.environ, "AMQP_URL": stack.amqp_url(OPERATOR)}
    for args in (("dlq", "list"), ("request", "--period", "month")):
        done = subprocess.run(
            [sys.executable, "-m", "hotrepos_cli", *args], env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
    assert outcome_of(stack, done.stdout.strip())["state"] == "exported"
    assert dropped_connections(stack, OPERATOR) == []


def test_three_fetchers_share_the_reports_each_fetching_its_pages_at_once(
    stack: ComposeStack, figures: Figures
) -> None:
    figures.record(f"scale to {FETCHERS} fetchers, all consuming", f"{scale_fetchers(stack, FETCHERS):.1f} s")
    report_ids = [request_report(stack)[0] for _ in range(2 * FETCHERS)]
    for report_id in report_ids:
        assert outcome_of(stack, report_id)["state"] == "exported"
    spreads = {report_id: pages_by_fetcher(stack, report_id) for report_id in report_ids}
    figures.record(
        f"{len(report_ids)} reports over {FETCHERS} fetchers",
        "; ".join(
            f"{short(name)}: pages {sorted(pages)}" for spread in spreads.values() for name, pages in spread.items()
        ),
    )
    # A report's five pages are tried at once by the fetcher that took its request; the requests
    # spread over every fetcher.
    assert all(len(spread) == 1 and set().union(*spread.values()) == PAGES for spread in spreads.values()), spreads
    assert len({name for spread in spreads.values() for name in spread}) == FETCHERS, spreads


def holder_of_the_request(stack: ComposeStack) -> str | None:
    """The fetcher container whose channel holds a request unacked, from the broker's management API."""
    queue = stack.management(f"/queues/hotrepos/{FETCHER_REQUESTED.queue_name}")
    for consumer in queue.get("consumer_details", []):
        channel = stack.management(f"/channels/{quote(consumer['channel_details']['name'], safe='')}")
        if channel.get("messages_unacknowledged", 0) > 0:
            peer = channel["connection_details"]["peer_host"]
            for index in range(1, FETCHERS + 1):
                container = stack.container_of("fetcher", index)
                if (
                    peer
                    in stack.inspect(container, "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}").split()
                ):
                    return container
    return None


def test_a_fetcher_crashed_mid_report_restarts_and_the_report_ends_once(stack: ComposeStack, figures: Figures) -> None:
    scale_fetchers(stack, FETCHERS)
    outcomes = EventListener(stack.amqp_url(OPERATOR), "report.#")
    try:
        stack.set_github_latency(SLOW_GITHUB_MS)
        started = time.monotonic()
        # A reference date of its own: no page of it in the fetchers' shared cache, each one fetched now.
        report_id, address = request_report(stack, "week", (dt.date.today() - dt.timedelta(days=10)).isoformat())
        # The request held by the fetcher trying its five pages, none fetched yet: that fetcher dies.
        victim = eventually(
            lambda: holder_of_the_request(stack),
            timeout=SLOW_GITHUB_MS / 1000,
            message="the request held by a fetcher",
        )
        restarts = int(stack.inspect(victim, "{{.RestartCount}}"))
        pid = int(stack.inspect(victim, "{{.State.Pid}}"))
        assert outcomes.of("report.page.fetched", report_id) == [], "crashed too late: a page was already fetched"
        # A crash, not a stop: Docker treats `docker kill` as a manual stop and would not restart the container.
        os.kill(pid, signal.SIGKILL)
        crashed = time.monotonic()
        stack.set_github_latency(0)

        def restarted() -> bool:
            state = stack.inspect(victim, "{{.RestartCount}} {{.State.Running}} {{.State.Health.Status}}").split()
            return int(state[0]) > restarts and state[1:] == ["true", "healthy"]

        eventually(restarted, timeout=120, message=f"{victim} restarted by its restart policy and healthy again")
        figures.record(
            "crashed fetcher (kill -9 of its main process) back healthy", f"{time.monotonic() - crashed:.1f} s"
        )
        status = outcome_of(stack, report_id)
        figures.seconds("report with a fetcher crashed mid-report", started)
        assert status["state"] == "exported", status

        # A report requested after it, exported and mailed: anything left of the first has passed by then.
        sentinel, sentinel_address = request_report(stack, "day")
        assert outcome_of(stack, sentinel)["state"] == "exported"
        eventually(
            lambda: len(emails_to(stack, sentinel_address)) == 1, timeout=60, message="the sentinel report's email"
        )
        outcomes.wait_for_outcome(sentinel)
        assert len(outcomes.of("report.exported", report_id)) == 1
        assert outcomes.of("report.failed", report_id) == []
        assert len(emails_to(stack, address)) == 1
        # The crash is in the broker's log as a dropped connection: what the command line never leaves.
        assert dropped_connections(stack, "fetcher") != []
        figures.record(
            "crash result",
            f"{short(victim)} restarted (RestartCount {restarts} -> "
            f"{stack.inspect(victim, '{{.RestartCount}}')}); report exported once, one email",
        )
    finally:
        stack.set_github_latency(0)
        outcomes.close()


def test_down_then_up_keeps_every_report_listed_and_downloadable(stack: ComposeStack, figures: Figures) -> None:
    report_id, _ = request_report(stack, "month")
    assert outcome_of(stack, report_id)["state"] == "exported"
    before = {rid: item for rid, item in history(stack).items() if item["state"] == "exported"}

    stack.compose("down", "--timeout", "20")
    assert stack.containers() == []
    started = time.monotonic()
    stack.compose(*UP)
    stack.wait_healthy(stack.expected_containers())
    figures.seconds("up again after down (volumes kept) to every service healthy", started)

    after = history(stack)
    assert set(before) <= set(after)
    for rid, item in before.items():
        assert after[rid]["state"] == "exported"
        assert hashlib.sha256(download(stack, after[rid])).hexdigest() == item["sha256"]
    figures.record("down, then up", f"{len(before)} exported reports still listed, each CSV downloaded unchanged")
