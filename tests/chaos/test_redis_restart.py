"""Redis stopped and started, or crashed, while reports are in flight: every report still ends once.

Redis holds what several replicas share: fan-in pages, outcome claims, handled event ids, email
leases, the page cache and the GitHub budget.
"""

from __future__ import annotations

import time

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
from tests.support.pipeline import running_pipeline
from tests.support.redis_node import redis_available, redis_node
from tests.support.smtp import SmtpSink
from tests.support.waiting import eventually


@pytest.mark.timeout(600)
# As compose runs Redis: an append-only file written at every write, so that even a crash (SIGKILL)
# keeps the last second's writes; stopped as compose stops it, or crashed.
@pytest.mark.parametrize(("fault", "appendfsync"), [("restart", "always"), ("crash", "always")])
def test_redis_going_away_mid_run_loses_and_duplicates_nothing(
    broker: Broker,
    fake_github: FakeGitHub,
    smtp_sink: SmtpSink,
    tmp_path_factory: pytest.TempPathFactory,
    sizes: ChaosSizes,
    figures_name: str,
    fault: str,
    appendfsync: str,
) -> None:
    if not redis_available():
        pytest.fail("the Redis restart test needs redis-server installed")
    fake_github.set_latency(300)
    ids = report_ids(f"redis-{fault}", sizes.broker_reports)
    try:
        with (
            redis_node(tmp_path_factory.mktemp("redis"), appendfsync=appendfsync) as redis,
            broker.vhost("hotrepos-chaos") as vhost,
        ):
            amqp_url = broker.amqp_url(vhost)
            recorder = OutcomeRecorder(amqp_url)
            publisher = RequestPublisher(amqp_url)
            try:
                with running_pipeline(
                    broker=broker,
                    vhost=vhost,
                    redis_url=redis.url,
                    github_url=fake_github.url,
                    smtp_port=smtp_sink.port,
                    root=tmp_path_factory.mktemp(f"redis-{fault}"),
                    today=TODAY,
                ) as pipeline:
                    started = time.monotonic()
                    for report_id in ids:
                        publisher.request(report_id, period="week")
                    eventually(lambda: recorder.of("report.page.fetched"), timeout=60, message="a first page fetched")
                    in_flight = len(ids) - len(recorder.outcomes_by_report())
                    if fault == "crash":
                        redis.kill()
                    else:
                        redis.stop()
                    time.sleep(sizes.broker_down_seconds)  # how long Redis stays away: the fault itself
                    redis.start()
                    late = report_ids(f"redis-{fault}-late", sizes.broker_reports)
                    for report_id in late:
                        publisher.request(report_id, period="week")
                    ids += late
                    completed = wait_for_reports(ids, recorder, smtp_sink, 300)
                    quiet_since = wait_until_settled(broker, vhost, 120)
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
                        fault=fault,
                        appendfsync=appendfsync,
                        redis_down_seconds=sizes.broker_down_seconds,
                        in_flight_at_fault=in_flight,
                        requested_after=len(late),
                        completed_in_time=completed,
                        still_queued=pending_work(broker, vhost) if quiet_since is None else {},
                        dead_services=pipeline.dead(),
                        seconds=round(time.monotonic() - started, 1),
                    )
            finally:
                publisher.close()
                recorder.close()
    finally:
        fake_github.set_latency(0)

    assert payload["in_flight_at_fault"] > 0, "every report was done before Redis went away: it proved nothing"
    assert payload["lost"] == 0, payload
    assert payload["duplicates"] == 0, payload
    assert payload["exported"] == len(ids), payload
    assert payload["emails"] == len(ids), payload
    assert payload["dead_lettered"] == 0, payload
    assert not payload["dead_services"], payload
