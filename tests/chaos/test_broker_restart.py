"""The broker stopped and started while reports are in flight: every report still ends once."""

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
from tests.support.rabbit_node import RabbitNode
from tests.support.smtp import SmtpSink
from tests.support.waiting import eventually

FULL = chaos_sizes().scale == "full"
# The services negotiate 30 s AMQP heartbeats, so the broker drops a client that has stopped
# talking after about a minute. Work that is still stuck when this bound is past, with the broker
# long back, was only waiting for that rescue: a deadlock, not slowness (unstuck, the reduced run
# drains in seconds).
STUCK_AFTER_SECONDS = 45.0


@pytest.mark.timeout(900 if FULL else 300)
def test_a_broker_restart_mid_run_loses_and_duplicates_nothing(
    rabbit_node: RabbitNode,
    redis_url: str,
    fake_github: FakeGitHub,
    smtp_sink: SmtpSink,
    tmp_path_factory: pytest.TempPathFactory,
    sizes: ChaosSizes,
    figures_name: str,
) -> None:
    broker = rabbit_node.broker
    vhost = broker.create_vhost("hotrepos-chaos")  # the node is thrown away with the test
    amqp_url = broker.amqp_url(vhost)
    # Slow pages keep most reports in the fetch stage when the broker goes down.
    fake_github.set_latency(300)
    ids = report_ids("restart", sizes.broker_reports)
    recorder = OutcomeRecorder(amqp_url)
    try:
        with running_pipeline(
            broker=broker,
            vhost=vhost,
            redis_url=redis_url,
            github_url=fake_github.url,
            smtp_port=smtp_sink.port,
            root=tmp_path_factory.mktemp("restart"),
            today=TODAY,
        ) as pipeline:
            started = time.monotonic()
            publisher = RequestPublisher(amqp_url)
            for report_id in ids:
                publisher.request(report_id, period="week")
            eventually(lambda: recorder.of("report.page.fetched"), timeout=60, message="a first page fetched")
            in_flight = len(ids) - len(recorder.outcomes_by_report())
            rabbit_node.restart(down_seconds=sizes.broker_down_seconds)
            back = time.monotonic()
            # Requests keep coming while the services reconnect, as they would in production.
            late = report_ids("restart-late", sizes.broker_reports)
            for report_id in late:
                publisher.request(report_id, period="week")
            publisher.close()
            ids += late
            completed = wait_for_reports(ids, recorder, smtp_sink, 600 if FULL else 180)
            quiet_since = wait_until_settled(broker, vhost, 180)
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
                in_flight_at_stop=in_flight,
                requested_after_restart=len(late),
                broker_down_seconds=sizes.broker_down_seconds,
                broker_starts=rabbit_node.starts,
                recorder_reconnects=recorder.reconnects,
                completed_in_time=completed,
                drained_seconds_after_restart=None if quiet_since is None else round(quiet_since - back, 1),
                still_queued=stuck,
                seconds=round(time.monotonic() - started, 1),
            )
            pipeline.assert_alive()
    finally:
        recorder.close()
        fake_github.set_latency(0)

    assert payload["in_flight_at_stop"] > 0, "every report was done before the restart: it proved nothing"
    assert payload["lost"] == 0, payload
    assert payload["duplicates"] == 0, payload
    assert payload["exported"] == len(ids), payload
    assert payload["csv_files"] == len(ids), payload
    assert payload["emails"] == len(ids), payload
    assert payload["dead_lettered"] == 0, payload
    drained = payload["drained_seconds_after_restart"]
    assert drained is not None and drained < STUCK_AFTER_SECONDS, (
        "work sat unacknowledged after the broker came back until the broker dropped a silent "
        f"connection: a consumer deadlocked on reconnection ({payload})"
    )
