"""One node of a three-node RabbitMQ cluster lost mid-run: the other two carry every report through."""

from __future__ import annotations

import time

import pytest

from tests.conftest import TODAY
from tests.fake_github import FakeGitHub
from tests.support.chaos import (
    ChaosSizes,
    OutcomeRecorder,
    RequestPublisher,
    chaos_sizes,
    count_figures,
    dead_letter_counts,
    pending_work,
    publish_figures,
    report_ids,
    wait_for_reports,
    wait_until_settled,
)
from tests.support.pipeline import running_pipeline
from tests.support.rabbit_node import rabbit_cluster, rabbitmq_available
from tests.support.smtp import SmtpSink
from tests.support.waiting import eventually

FULL = chaos_sizes().scale == "full"


@pytest.mark.timeout(900)
@pytest.mark.xfail(
    strict=True,
    reason="open: fetcher.tasks and the .retry queues are classic queues, on one node; "
    "losing it stops the fetcher (quorum queues with per-message TTL need RabbitMQ 3.12+)",
)
def test_losing_a_cluster_node_loses_and_duplicates_nothing(
    redis_url: str,
    fake_github: FakeGitHub,
    smtp_sink: SmtpSink,
    tmp_path_factory: pytest.TempPathFactory,
    sizes: ChaosSizes,
    figures_name: str,
) -> None:
    if not FULL:
        pytest.skip(
            "stretch case: three RabbitMQ nodes and the pipeline do not fit the reduced tier's "
            "few minutes on two cores; it runs with CHAOS_SCALE=full"
        )
    if not rabbitmq_available():
        pytest.fail("the node-loss test needs rabbitmq-server and rabbitmqctl installed")
    fake_github.set_latency(300)
    ids = report_ids("node-loss", sizes.broker_reports)
    try:
        with rabbit_cluster(tmp_path_factory.mktemp("cluster")) as nodes:
            lost, survivor = nodes[0], nodes[1]
            broker = survivor.broker
            vhost = broker.create_vhost("hotrepos-chaos")
            urls = [node.broker.amqp_url(vhost) for node in nodes]
            # The services connect to the first node and fail over to the others (kombu's `;` list).
            recorder = OutcomeRecorder(urls[1:] + urls[:1])
            try:
                with running_pipeline(
                    broker=broker,
                    vhost=vhost,
                    redis_url=redis_url,
                    github_url=fake_github.url,
                    smtp_port=smtp_sink.port,
                    root=tmp_path_factory.mktemp("node-loss"),
                    today=TODAY,
                    extra_env={"AMQP_URL": ";".join(urls)},
                ) as pipeline:
                    started = time.monotonic()
                    publisher = RequestPublisher(urls[1:])
                    for report_id in ids:
                        publisher.request(report_id, period="week")
                    eventually(lambda: recorder.of("report.page.fetched"), timeout=60, message="a first page fetched")
                    in_flight = len(ids) - len(recorder.outcomes_by_report())
                    lost.kill()
                    late = report_ids("node-loss-late", max(1, len(ids) // 2))
                    for report_id in late:
                        publisher.request(report_id, period="week")
                    publisher.close()
                    ids += late
                    # Nothing restarts a service that exits here: once one has been gone a while (for
                    # the others to finish what they hold), waiting longer cannot help.
                    dead_since: list[float] = []

                    def a_service_is_gone() -> bool:
                        if pipeline.dead() and not dead_since:
                            dead_since.append(time.monotonic())
                        return bool(dead_since) and time.monotonic() - dead_since[0] > 20

                    completed = wait_for_reports(ids, recorder, smtp_sink, 300, give_up=a_service_is_gone)
                    quiet_since = wait_until_settled(broker, vhost, 60 if completed else 10)
                    stuck = pending_work(broker, vhost) if quiet_since is None else {}
                    figures = count_figures(
                        ids,
                        recorder=recorder,
                        sink=smtp_sink,
                        reports_dir=pipeline.reports_dir,
                        dead_lettered=sum(dead_letter_counts(broker, vhost).values()),
                    )
                    payload = publish_figures(
                        figures_name,
                        figures,
                        cluster_nodes=len(nodes),
                        nodes_lost=1,
                        in_flight_at_loss=in_flight,
                        requested_after_loss=len(late),
                        completed_in_time=completed,
                        still_queued=stuck,
                        dead_services=pipeline.dead(),
                        seconds=round(time.monotonic() - started, 1),
                    )
            finally:
                recorder.close()
    finally:
        fake_github.set_latency(0)

    assert payload["lost"] == 0, payload
    assert payload["duplicates"] == 0, payload
    assert payload["exported"] == len(ids), payload
    assert payload["emails"] == len(ids), payload
    assert payload["dead_lettered"] == 0, payload
    assert not payload["dead_services"], payload
