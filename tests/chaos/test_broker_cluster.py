"""A three-node RabbitMQ cluster: one node lost mid-run, then every node restarted in turn, as an upgrade
does; the services, given every node, carry every report through, once."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.conftest import TODAY
from tests.fake_github import FakeGitHub
from tests.support.broker import Broker
from tests.support.chaos import (
    ChaosSizes,
    OutcomeRecorder,
    RequestPublisher,
    count_figures,
    dead_letter_counts,
    pending_work,
    publish_figures,
    report_ids,
    wait_for_reports,
    wait_until_settled,
)
from tests.support.pipeline import Pipeline, running_pipeline
from tests.support.rabbit_node import RabbitNode, rabbit_cluster, rabbitmq_available
from tests.support.smtp import SmtpSink
from tests.support.waiting import eventually


@dataclass
class Cluster:
    nodes: list[RabbitNode]
    broker: Broker  # the management API of a node that stays up in the first test
    vhost: str

    @property
    def urls(self) -> list[str]:
        return [node.broker.amqp_url(self.vhost) for node in self.nodes]

    def whole(self) -> bool:
        """Every node running and a member of the cluster again, as any running node sees it."""
        for node in self.nodes:
            try:
                listed = node.broker.api("GET", "/nodes").json()
            except Exception:
                continue  # this one is down: ask another
            return len([member for member in listed if member.get("running")]) == len(self.nodes)
        return False


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if not rabbitmq_available():
        pytest.fail("the cluster tests need rabbitmq-server and rabbitmqctl installed")
    with rabbit_cluster(tmp_path_factory.mktemp("cluster")) as nodes:
        broker = nodes[1].broker
        yield Cluster(nodes, broker, broker.create_vhost("hotrepos-chaos"))


@dataclass
class ClusterRun:
    pipeline: Pipeline
    recorder: OutcomeRecorder
    publisher: RequestPublisher
    started: float


@pytest.fixture
def cluster_run(
    cluster: Cluster,
    redis_url: str,
    fake_github: FakeGitHub,
    smtp_sink: SmtpSink,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ClusterRun]:
    """The pipeline with every node in its AMQP_URL (kombu's `;`-separated failover list)."""
    fake_github.set_latency(300)
    # The test's own clients start on the second node: the first is the one the first test loses.
    recorder = OutcomeRecorder(cluster.urls[1:] + cluster.urls[:1])
    publisher = RequestPublisher(cluster.urls[1:] + cluster.urls[:1])
    try:
        with running_pipeline(
            broker=cluster.broker,
            vhost=cluster.vhost,
            redis_url=redis_url,
            github_url=fake_github.url,
            smtp_port=smtp_sink.port,
            root=tmp_path_factory.mktemp("cluster-pipeline"),
            today=TODAY,
            extra_env={"AMQP_URL": ";".join(cluster.urls)},
        ) as pipeline:
            yield ClusterRun(pipeline, recorder, publisher, time.monotonic())
    finally:
        publisher.close()
        recorder.close()
        fake_github.set_latency(0)


def settle_and_count(
    cluster: Cluster, run: ClusterRun, ids: list[str], sink: SmtpSink, name: str, **extra: Any
) -> dict[str, Any]:
    """Wait for every report (or for a dead service to make waiting pointless), then the figures."""
    dead_since: list[float] = []

    def a_service_is_gone() -> bool:
        # Nothing restarts a service that exits here: once one has been gone a while (for the
        # others to finish what they hold), waiting longer cannot help.
        if run.pipeline.dead() and not dead_since:
            dead_since.append(time.monotonic())
        return bool(dead_since) and time.monotonic() - dead_since[0] > 20

    completed = wait_for_reports(ids, run.recorder, sink, 300, give_up=a_service_is_gone)
    quiet_since = wait_until_settled(cluster.broker, cluster.vhost, 60 if completed else 10)
    stuck = pending_work(cluster.broker, cluster.vhost) if quiet_since is None else {}
    figures = count_figures(
        ids,
        recorder=run.recorder,
        sink=sink,
        reports_dir=run.pipeline.reports_dir,
        dead_lettered=sum(dead_letter_counts(cluster.broker, cluster.vhost).values()),
    )
    return publish_figures(
        name,
        figures,
        cluster_nodes=len(cluster.nodes),
        completed_in_time=completed,
        still_queued=stuck,
        dead_services=run.pipeline.dead(),
        seconds=round(time.monotonic() - run.started, 1),
        **extra,
    )


def assert_every_report_ended_once(payload: dict[str, Any], ids: list[str]) -> None:
    assert payload["lost"] == 0, payload
    assert payload["duplicates"] == 0, payload
    assert payload["exported"] == len(ids), payload
    assert payload["emails"] == len(ids), payload
    assert payload["dead_lettered"] == 0, payload
    assert not payload["dead_services"], payload


@pytest.mark.timeout(900)
def test_losing_a_cluster_node_loses_and_duplicates_nothing(
    cluster: Cluster, cluster_run: ClusterRun, smtp_sink: SmtpSink, sizes: ChaosSizes, figures_name: str
) -> None:
    ids = report_ids("node-loss", sizes.broker_reports)
    lost = cluster.nodes[0]  # the node every service connects to first: it leads their queues
    for report_id in ids:
        cluster_run.publisher.request(report_id, period="week")
    eventually(lambda: cluster_run.recorder.of("report.page.fetched"), timeout=60, message="a first page fetched")
    in_flight = len(ids) - len(cluster_run.recorder.outcomes_by_report())
    lost.kill()
    late = report_ids("node-loss-late", max(1, len(ids) // 2))
    for report_id in late:
        cluster_run.publisher.request(report_id, period="week")
    ids += late
    payload = settle_and_count(
        cluster,
        cluster_run,
        ids,
        smtp_sink,
        figures_name,
        nodes_lost=1,
        in_flight_at_loss=in_flight,
        requested_after_loss=len(late),
    )
    # The next test wants the whole cluster: the lost node comes back, and rejoins on its own.
    lost.start()
    eventually(cluster.whole, timeout=120, message="the lost node back in the cluster")
    assert_every_report_ended_once(payload, ids)


@pytest.mark.timeout(900)
def test_a_rolling_restart_of_every_node_loses_and_duplicates_nothing(
    cluster: Cluster, cluster_run: ClusterRun, smtp_sink: SmtpSink, sizes: ChaosSizes, figures_name: str
) -> None:
    eventually(cluster.whole, timeout=120, message="a whole cluster to start from")
    requested: list[str] = []
    stop = threading.Event()
    failures: list[BaseException] = []

    def keep_requesting() -> None:
        # Reports flow all through the upgrade: one every so often, whichever node is down.
        ids = iter(report_ids("rolling", 10_000))
        try:
            while not stop.is_set():
                report_id = next(ids)
                cluster_run.publisher.request(report_id, period="week")
                requested.append(report_id)
                stop.wait(sizes.kill_every[0])
        except BaseException as exc:  # reported by the test, not lost in a thread
            failures.append(exc)

    requester = threading.Thread(target=keep_requesting, name="rolling-requests", daemon=True)
    requester.start()
    restarts: list[dict[str, Any]] = []
    try:
        for node in cluster.nodes:
            before = len(requested)
            node.restart(down_seconds=sizes.broker_down_seconds)
            eventually(cluster.whole, timeout=120, message=lambda n=node: f"{n.nodename} back in the cluster")
            restarts.append({"node": node.nodename, "requested_before": before, "requested_after": len(requested)})
            # Reports keep coming in between two nodes, as they do between two steps of an upgrade.
            eventually(
                more_than(lambda: len(requested), len(requested) + 1), timeout=60, message="requests flowing again"
            )
    finally:
        stop.set()
        requester.join(30)
    assert not failures, failures
    payload = settle_and_count(cluster, cluster_run, list(requested), smtp_sink, figures_name, restarts=restarts)
    assert_every_report_ended_once(payload, requested)


def more_than(count: Callable[[], int], at_least: int) -> Callable[[], bool]:
    return lambda: count() >= at_least
