"""The SMTP server down for a while mid-run: every email still arrives, and only once."""

from __future__ import annotations

import time

import pytest

from tests.conftest import TODAY
from tests.fake_github import FakeGitHub
from tests.support.broker import Broker
from tests.support.chaos import (
    REQUESTER,
    ChaosSizes,
    OutcomeRecorder,
    RequestPublisher,
    chaos_sizes,
    count_figures,
    dead_letter_counts,
    delayed_retries,
    pending_work,
    publish_figures,
    report_ids,
    wait_for_reports,
    wait_until_settled,
)
from tests.support.pipeline import running_pipeline
from tests.support.smtp import SmtpSink
from tests.support.waiting import eventually

FULL = chaos_sizes().scale == "full"


@pytest.mark.timeout(900 if FULL else 240)
def test_an_smtp_outage_delays_emails_but_loses_and_doubles_none(
    broker: Broker,
    redis_url: str,
    fake_github: FakeGitHub,
    smtp_sink: SmtpSink,
    tmp_path_factory: pytest.TempPathFactory,
    sizes: ChaosSizes,
    figures_name: str,
) -> None:
    ids = report_ids("smtp", sizes.smtp_reports)
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
                root=tmp_path_factory.mktemp("smtp"),
                today=TODAY,
            ) as pipeline:
                started = time.monotonic()
                publisher = RequestPublisher(amqp_url)
                publisher.request(ids[0], period="day")
                eventually(lambda: smtp_sink.to(REQUESTER), timeout=90, message="a first email before the outage")
                smtp_sink.stop()
                port = smtp_sink.port
                # The rest is requested, exported and due to be emailed while nobody can send mail.
                for report_id in ids[1:]:
                    publisher.request(report_id, period="day")
                publisher.close()
                eventually(lambda: len(recorder.outcomes_by_report()) == len(ids), timeout=90, message="every export")
                time.sleep(sizes.smtp_down_seconds)
                emails_during_outage = len(smtp_sink.to(REQUESTER))
                smtp_sink.start()
                assert smtp_sink.port == port
                completed = wait_for_reports(ids, recorder, smtp_sink, 600 if FULL else 120)
                settled = wait_until_settled(broker, vhost, 120) is not None
                stuck = pending_work(broker, vhost) if not settled else {}
                retried = delayed_retries(broker, vhost)
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
                    smtp_down_seconds=sizes.smtp_down_seconds,
                    emails_during_outage=emails_during_outage - 1,
                    delayed_retries=retried,
                    completed_in_time=completed,
                    settled=settled,
                    still_queued=stuck,
                    seconds=round(time.monotonic() - started, 1),
                )
                pipeline.assert_alive()
        finally:
            recorder.close()

    assert payload["emails_during_outage"] == 0, "mail got through while the server was down?"
    assert payload["delayed_retries"] > 0, "no email waited in the delay levels: no outage was hit"
    assert payload["lost"] == 0, payload
    assert payload["duplicates"] == 0, payload
    assert payload["exported"] == len(ids), payload
    assert payload["emails"] == len(ids), payload
    assert payload["dead_lettered"] == 0, payload
