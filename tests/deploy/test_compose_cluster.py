"""The broker cluster in compose (compose.cluster.yaml, profile `cluster`) on a real engine: three nodes
form one cluster before any service starts, and with the node every service uses stopped mid-run
(`docker stop`), every report still ends once."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest
import requests
from kombu.transport.native_delayed_delivery import level_name

from infra.rabbitmq.definitions import ADMIN, VHOST, principals
from services.fetcher.topology import TASK_QUEUE
from shared.topology import DELAY_LEVELS, SUBSCRIPTIONS
from tests.deploy.conftest import Figures
from tests.deploy.stack import UP, ComposeStack
from tests.support.chaos import OutcomeRecorder
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(1800)

FILES = ("compose.yaml", "compose.cluster.yaml")
NODES = ("rabbitmq", "rabbitmq-2", "rabbitmq-3")
# The node every service tries first, so each of them fails over when it stops; it also leads the
# queues, which were declared through it.
STOPPED = "rabbitmq"
# Reports in flight when the node stops, and more requested while it is down.
BEFORE = int(os.environ.get("DEPLOY_CLUSTER_REPORTS_BEFORE", "20"))
AFTER = int(os.environ.get("DEPLOY_CLUSTER_REPORTS_AFTER", "10"))
# Each report with a reference date of its own, so that none is served from another's cached pages;
# the fake GitHub slowed, and the fetchers' shared budget at two searches a second: the reports come
# through one by one over a minute or so, and most are on their way when the node stops.
GITHUB_LATENCY_MS = 1000
GITHUB_RATE_LIMIT_REQUESTS = 120
ENDED = ("exported", "failed")
# The services that hold a connection all the time: a beat connects only to fire a run.
CONSUMERS = set(principals()) - {"fetcher-beat"}


@pytest.fixture(scope="module")
def cluster(engine: str, figures: Figures, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComposeStack]:
    """The offline profile on three clustered nodes, every service healthy; removed with its volumes."""
    stack = ComposeStack(
        tmp_path_factory.mktemp("cluster"),
        files=FILES,
        profiles=("offline", "cluster"),
        variables={"GITHUB_RATE_LIMIT_REQUESTS": str(GITHUB_RATE_LIMIT_REQUESTS)},
    )
    figures.record("cluster: compose project", stack.project)
    try:
        stack.compose("build", timeout=1200)
        started = time.monotonic()
        stack.compose(*UP, timeout=900)
        stack.wait_healthy(stack.expected_containers(), timeout=600)
        figures.seconds("cluster: up to three nodes clustered and every service healthy", started)
        yield stack
    finally:
        stack.compose("down", "--volumes", "--remove-orphans", "--timeout", "20", check=False)


def running_nodes(stack: ComposeStack) -> list[str]:
    return sorted(node["name"] for node in stack.management("/nodes") if node.get("running"))


def quorum_members(stack: ComposeStack) -> dict[str, int]:
    """Each quorum queue of the stack's vhost and how many nodes hold it."""
    listed = stack.management(f"/queues/{VHOST}")
    return {q["name"]: len(q.get("members") or ()) for q in listed if q.get("type") == "quorum"}


def test_three_nodes_form_one_cluster_before_any_queue_is_declared(cluster: ComposeStack, figures: Figures) -> None:
    assert running_nodes(cluster) == [f"rabbit@{node}" for node in NODES]
    # The management API lists a queue once the node has reported on it: wait for every one declared.
    expected = {queue.name for subscription in SUBSCRIPTIONS for queue in subscription.all_queues()}
    expected |= {TASK_QUEUE.name} | {level_name(level) for level in range(DELAY_LEVELS)}
    members = eventually(
        lambda: (found := quorum_members(cluster)).keys() >= expected and found,
        timeout=120,
        message=lambda: f"every queue listed; missing: {sorted(expected - quorum_members(cluster).keys())}",
    )
    figures.record("cluster: quorum queues, each on three nodes", str(len(members)))
    assert {name: count for name, count in members.items() if count != len(NODES)} == {}


def ref_date(index: int) -> str:
    """A reference date of the report's own, its week within the fake GitHub's 45 days of repositories."""
    return (dt.date.today() - dt.timedelta(days=1 + index)).isoformat()


def address_of(key: str) -> str:
    return f"cluster-{key[:10]}@example.com"


def request(stack: ComposeStack, when: str, key: str, timeout: float = 180) -> str:
    """One report through the gateway; retried with the same Idempotency-Key while the broker fails over."""
    order = {"period": "week", "ref_date": when, "notify": address_of(key)}
    seen: list[str] = []

    def accepted() -> str | None:
        try:
            answer = stack.api.post(
                f"{stack.gateway}/api/reports", json=order, headers={"Idempotency-Key": key}, timeout=30
            )
        except requests.RequestException as exc:
            seen.append(type(exc).__name__)
            return None
        if answer.status_code == 202:
            return str(answer.json()["report_id"])
        assert answer.status_code == 503, answer.text  # "retry later", and nothing else
        seen.append("503")
        return None

    return eventually(accepted, timeout=timeout, message=lambda: f"report accepted; answers: {seen[-5:]}", interval=1)


def states(stack: ComposeStack, report_ids: list[str]) -> dict[str, str]:
    found = {}
    for report_id in report_ids:
        answer = stack.api.get(f"{stack.gateway}/api/reports/{report_id}", timeout=30)
        found[report_id] = answer.json().get("state", "?") if answer.status_code == 200 else str(answer.status_code)
    return found


def docker(*args: str) -> str:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=180, check=True)
    return done.stdout.strip()


def restarts(stack: ComposeStack) -> dict[str, int]:
    """Restarts of each long-running container: a service that rides a node's loss out has none."""
    return {
        str(c["Name"]): int(stack.inspect(str(c["Name"]), "{{.RestartCount}}"))
        for c in stack.containers()
        if c["Service"] != "rabbitmq-init"
    }


def service_users_connected(stack: ComposeStack) -> set[str]:
    """The broker users with a connection, asked of a node that stays up."""
    listed = docker(
        "exec", stack.container_of("rabbitmq-2"), "rabbitmqctl", "-q", "list_connections", "user", "--formatter", "json"
    )
    return {str(connection["user"]) for connection in json.loads(listed or "[]")}


def emails_per_address(stack: ComposeStack) -> dict[str, int]:
    listed = requests.get(f"{stack.mailpit}/api/v1/messages", params={"limit": 1000}, timeout=30).json()["messages"]
    found: dict[str, int] = {}
    for message in listed:
        for address in re.findall(r"cluster-[0-9a-f]{10}@example\.com", str(message["To"])):
            found[address] = found.get(address, 0) + 1
    return found


def test_a_node_stopped_mid_run_and_every_report_ends_once(cluster: ComposeStack, figures: Figures) -> None:
    # The test's own quorum queue on report.#, declared while all three nodes run: it outlives the
    # stopped node, and counts every outcome on the wire by event id.
    recorder = OutcomeRecorder(cluster.amqp_url(ADMIN), queue=f"deploy.cluster.recorder.{uuid.uuid4().hex[:8]}")
    victim = cluster.container_of(STOPPED)
    restarts_before = restarts(cluster)
    stopped_at: float | None = None
    try:
        cluster.set_github_latency(GITHUB_LATENCY_MS)
        started = time.monotonic()
        keys = [uuid.uuid4().hex for _ in range(BEFORE + AFTER)]
        report_ids = [request(cluster, ref_date(i), key) for i, key in enumerate(keys[:BEFORE])]

        # Mid-run: some reports done, most still on their way.
        eventually(
            lambda: sum(state in ENDED for state in states(cluster, report_ids).values()) >= 2,
            timeout=300,
            message="the first reports ended",
            interval=0.5,
        )
        in_flight = sum(state not in ENDED for state in states(cluster, report_ids).values())
        docker("stop", "--time", "20", victim)
        stopped_at = time.monotonic()
        figures.record(
            "cluster: node stopped", f"{STOPPED} (`docker stop`) with {in_flight} of {BEFORE} reports in flight"
        )
        report_ids += [request(cluster, ref_date(i), key) for i, key in enumerate(keys[BEFORE:], BEFORE)]
        # Every consuming service back on the broker through the nodes left, as a node left sees it.
        users = eventually(
            lambda: (found := service_users_connected(cluster)) >= CONSUMERS and found,
            timeout=120,
            message=lambda: f"every service connected while {STOPPED} is down: {service_users_connected(cluster)}",
        )
        figures.record("cluster: users connected while the node was down", ", ".join(sorted(users)))

        last: dict[str, str] = {}

        def all_ended() -> bool:
            last.update(states(cluster, report_ids))
            return all(state in ENDED for state in last.values())

        eventually(
            all_ended,
            timeout=600,
            message=lambda: f"every report ended; not yet: { {r: s for r, s in last.items() if s not in ENDED} }",
            interval=2,
        )
        figures.seconds("cluster: every report ended, from the first request", started)

        docker("start", victim)
        back = time.monotonic()
        eventually(
            lambda: cluster.inspect(victim, "{{.State.Health.Status}}") == "healthy",
            timeout=300,
            message=f"{victim} back in the cluster and healthy",
            interval=2,
        )
        figures.record("cluster: stopped node back, whole and healthy", f"{time.monotonic() - back:.1f} s")
        stopped_at = None
        assert running_nodes(cluster) == [f"rabbit@{node}" for node in NODES]

        # A report requested after everything else, ended: anything left of the others has passed by then.
        sentinel = request(cluster, ref_date(len(keys)), uuid.uuid4().hex)
        eventually(lambda: recorder.outcomes_by_report().get(sentinel), timeout=300, message="the sentinel's outcome")
        eventually(
            lambda: all(recorder.outcomes_by_report().get(r) for r in report_ids),
            timeout=120,
            message="every outcome read from the recorder's queue",
        )
        eventually(
            lambda: set(emails_per_address(cluster)) >= {address_of(key) for key in keys},
            timeout=120,
            message="an email for every report",
        )
        time.sleep(5)  # a late duplicate would be on its way by now
        mailed = emails_per_address(cluster)

        outcomes = recorder.outcomes_by_report()
        distinct = {r: {e["id"]: e["type"] for e in outcomes.get(r, ())} for r in report_ids}
        wire = {r: list(events.values()) for r, events in distinct.items()}
        figures_of_run = {
            "requested": len(report_ids),
            "exported": sum(kinds.count("report.exported") == 1 and len(kinds) == 1 for kinds in wire.values()),
            "failed": sum(kinds.count("report.failed") == 1 and len(kinds) == 1 for kinds in wire.values()),
            "lost": sum(not kinds for kinds in wire.values()),
            "duplicated": sum(len(kinds) > 1 for kinds in wire.values()),
            "outcomes of reports nobody requested": len(set(outcomes) - set(report_ids) - {sentinel}),
            "emails": sum(mailed.get(address_of(key), 0) for key in keys),
            "reports mailed more than once": sum(mailed.get(address_of(key), 0) > 1 for key in keys),
            "service restarts": sum(restarts(cluster).values()) - sum(restarts_before.values()),
        }
        print("DEPLOY-CLUSTER-FIGURES " + json.dumps(figures_of_run))
        figures.record(
            "cluster: requested/exported/failed/lost/duplicated",
            "/".join(str(figures_of_run[k]) for k in ("requested", "exported", "failed", "lost", "duplicated")),
        )
        figures.record("cluster: service restarts during the run", str(figures_of_run["service restarts"]))
        assert figures_of_run["lost"] == 0 and figures_of_run["duplicated"] == 0, figures_of_run
        assert figures_of_run["exported"] + figures_of_run["failed"] == len(report_ids)
        # The gateway, folding the same events, agrees with the wire.
        assert states(cluster, report_ids) == {r: kinds[0].removeprefix("report.") for r, kinds in wire.items()}
        assert figures_of_run["outcomes of reports nobody requested"] == 0
        assert figures_of_run["reports mailed more than once"] == 0, figures_of_run
        assert quorum_members(cluster) and set(quorum_members(cluster).values()) == {len(NODES)}
    finally:
        if stopped_at is not None:
            subprocess.run(["docker", "start", victim], capture_output=True, timeout=180, check=False)
        recorder.close()
        cluster.set_github_latency(0)
