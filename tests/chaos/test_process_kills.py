"""Random service processes SIGKILLed and restarted while reports flow: nothing lost, nothing twice."""

from __future__ import annotations

import os
import random
import time

import pytest

from tests.conftest import TODAY
from tests.fake_github import FakeGitHub
from tests.support.broker import Broker
from tests.support.chaos import (
    ChaosSizes,
    OutcomeRecorder,
    ProcessKiller,
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
from tests.support.smtp import SmtpSink

FULL = chaos_sizes().scale == "full"


@pytest.mark.timeout(1500 if FULL else 300)
def test_processes_killed_at_random_lose_and_duplicate_nothing(
    broker: Broker,
    redis_url: str,
    fake_github: FakeGitHub,
    smtp_sink: SmtpSink,
    tmp_path_factory: pytest.TempPathFactory,
    sizes: ChaosSizes,
    figures_name: str,
) -> None:
    seed = int(os.environ.get("CHAOS_SEED") or random.randrange(2**32))
    rng = random.Random(seed)
    # A little latency keeps pages in flight across kills instead of done before the first one.
    fake_github.set_latency(100)
    ids = report_ids("kill", sizes.kill_reports)
    try:
        with broker.vhost("hotrepos-chaos") as vhost:
            amqp_url = broker.amqp_url(vhost)
            recorder = OutcomeRecorder(amqp_url)
            try:
                with running_pipeline(
                    broker=broker,
                    vhost=vhost,
                    redis_url=redis_url,
                    github_url=fake_github.url,
                    smtp_port=smtp_sink.port,
                    root=tmp_path_factory.mktemp("kills"),
                    today=TODAY,
                    replicas=sizes.kill_replicas,
                ) as pipeline:
                    started = time.monotonic()
                    killer = ProcessKiller(pipeline, sizes.kill_every, rng).start()
                    publisher = RequestPublisher(amqp_url)
                    # Requests trickle in, so that every kill finds work in flight somewhere.
                    pause = (20.0 if not FULL else 90.0) / len(ids)
                    for report_id in ids:
                        publisher.request(report_id, period=rng.choice(("day", "week")))
                        time.sleep(pause)
                    publisher.close()
                    completed = wait_for_reports(ids, recorder, smtp_sink, 900 if FULL else 150)
                    killer.stop()
                    settled = wait_until_settled(broker, vhost, 120) is not None
                    stuck = pending_work(broker, vhost) if not settled else {}
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
                        seed=seed,
                        replicas=sizes.kill_replicas,
                        kills=len(killer.kills),
                        kills_by_service=killer.by_service(),
                        restart_errors=killer.errors,
                        completed_in_time=completed,
                        settled=settled,
                        still_queued=stuck,
                        seconds=round(time.monotonic() - started, 1),
                    )
                    pipeline.assert_alive()
            finally:
                recorder.close()
    finally:
        fake_github.set_latency(0)

    assert killer.kills, "no process was killed: the test proved nothing"
    assert payload["lost"] == 0, payload
    assert payload["duplicates"] == 0, payload
    assert payload["exported"] == len(ids), payload
    assert payload["csv_files"] == len(ids), payload
    assert payload["emails"] == len(ids), payload
    assert payload["dead_lettered"] == 0, payload
