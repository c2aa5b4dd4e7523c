"""Nothing twice, cancel, graceful shutdown: the guards of the delivery promise, one test each."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from services.notifier.sent_emails import RedisSentEmails
from shared.topology import DELAY, NOTIFIER_EXPORTED
from tests.fake_github import FakeGitHub
from tests.support.amqp import SENTINEL, EventListener, QueueState, cloud_event, publish, queue_state
from tests.support.pipeline import Pipeline
from tests.support.services import ServiceProcess
from tests.support.smtp import SmtpSink
from tests.support.waiting import eventually

REQUESTER = "twice@example.com"


@pytest.fixture
def listener(pipeline: Pipeline) -> Iterator[EventListener]:
    events = EventListener(pipeline.amqp_url, "#")
    yield events
    events.close()


def request_report(pipeline: Pipeline, report_id: str, **data: str) -> None:
    data = {"report_id": report_id, "period": "day", **data}
    publish(pipeline.amqp_url, "report.requested", cloud_event("report.requested", data))


def outcome_ids(listener: EventListener, report_id: str) -> set[tuple[str, str]]:
    return {
        (e["type"], e["id"])
        for e in listener.events
        if e.get("type") in ("report.exported", "report.failed") and (e.get("data") or {}).get("report_id") == report_id
    }


def unconsumed(amqp_url: str, queue: str) -> QueueState | None:
    """The queue's figures once no consumer is left on it."""
    state = queue_state(amqp_url, queue)
    return state if state.consumers == 0 else None


def test_a_duplicated_request_makes_one_report_one_csv_one_email(
    pipeline: Pipeline, fake_github: FakeGitHub, listener: EventListener, module_smtp_sink: SmtpSink
) -> None:
    report_id = f"dup-{uuid.uuid4().hex[:12]}"
    data = {"report_id": report_id, "period": "day", "notify": REQUESTER}
    publish(pipeline.amqp_url, "report.requested", cloud_event("report.requested", data))
    publish(pipeline.amqp_url, "report.requested", cloud_event("report.requested", data))
    listener.wait_for_outcome(report_id, 90)
    module_smtp_sink.wait_for(lambda m: report_id in m.get_content(), 30)
    # The sentinel: a report of its own, requested after the duplicate. The fetcher's one request
    # consumer takes it after the duplicate, which is where a second report would begin; its page
    # fetches queue behind any the duplicate scheduled, and the fetcher's pool starts them in queue
    # order; every later step is one consumer taking its queue in order. Once the sentinel's email
    # is in, a second report's outcome, CSV or email would have come before it.
    sentinel = f"sentinel-{uuid.uuid4().hex[:12]}"
    request_report(pipeline, sentinel, notify=REQUESTER)
    module_smtp_sink.wait_for(lambda m: sentinel in m.get_content(), 90)
    assert outcome_ids(listener, report_id) == {("report.exported", outcome_ids(listener, report_id).pop()[1])}
    assert len(list(pipeline.reports_dir.glob(f"*{report_id}.csv"))) == 1
    assert len([m for m in module_smtp_sink.messages if report_id in m.get_content()]) == 1
    assert fake_github.stats()["requests"] == 5 + 5  # the report's five pages, the sentinel's five


def test_a_republished_outcome_sends_no_second_email(
    pipeline: Pipeline, listener: EventListener, module_smtp_sink: SmtpSink
) -> None:
    report_id = f"rep-{uuid.uuid4().hex[:12]}"
    request_report(pipeline, report_id, notify=REQUESTER)
    exported = listener.wait_for_outcome(report_id, 90)
    module_smtp_sink.wait_for(lambda m: report_id in m.get_content(), 30)
    # The same outcome republished under a new event id, as a confused publisher would.
    again = cloud_event("report.exported", exported["data"], correlationid=report_id)
    publish(pipeline.amqp_url, "report.exported", again)
    # The sentinel: the outcome of another report, published after it on the same queue, which the
    # notifier's one consumer takes in order. Once the sentinel's email is in, the republished
    # outcome has been handled, and a second email for it would have come first.
    sentinel = f"sentinel-{uuid.uuid4().hex[:12]}"
    path = Path(exported["data"]["path"])
    sentinel_data = {
        **exported["data"],
        "report_id": sentinel,
        "path": str(path.with_name(path.name.replace(report_id, sentinel))),
    }
    publish(pipeline.amqp_url, "report.exported", cloud_event("report.exported", sentinel_data))
    module_smtp_sink.wait_for(lambda m: sentinel in m.get_content(), 30)
    assert len([m for m in module_smtp_sink.messages if report_id in m.get_content()]) == 1


def test_an_email_held_by_a_replica_that_died_mid_send_goes_once_its_hold_is_gone(
    pipeline: Pipeline, listener: EventListener, module_smtp_sink: SmtpSink
) -> None:
    report_id = f"held-{uuid.uuid4().hex[:12]}"
    # The notifier's waits, as they go into the broker's delay levels: 5 s each, two levels.
    waits = EventListener(pipeline.amqp_url, f"#.{NOTIFIER_EXPORTED.queue_name}", exchange=DELAY.name)
    redis_client = redis.Redis.from_url(pipeline.redis_url)
    try:
        # What a notifier replica killed in the middle of sending this very email leaves behind.
        sent = RedisSentEmails(redis_client)
        key = f"{report_id}:ready:{REQUESTER}"
        assert sent.start_sending(key)
        request_report(pipeline, report_id, notify=REQUESTER)
        assert listener.wait_for_outcome(report_id, 90)["type"] == "report.exported"
        # The hold outlasts two waits: the second comes back through levels the first went through.
        eventually(
            lambda: len([e for e in list(waits.events) if e["data"]["report_id"] == report_id]) >= 2,
            timeout=30,
            message="two waits of the notifier",
            interval=0.1,
        )
        assert not [m for m in list(module_smtp_sink.messages) if report_id in m.get_content()]
        sent.abandon(key)
        module_smtp_sink.wait_for(lambda m: report_id in m.get_content(), 30)
    finally:
        waits.close()
        redis_client.close()


def test_cancel_drops_pending_work_and_fails_the_report_once(
    pipeline: Pipeline, fake_github: FakeGitHub, listener: EventListener
) -> None:
    fake_github.set_latency(1500)
    fake_github.add_fault("retry_after", page=5, times=None, seconds=30)
    report_id = f"cancel-{uuid.uuid4().hex[:12]}"
    request_report(pipeline, report_id, period="month")
    listener.wait_for(lambda e: e["type"] == "report.page.fetched" and e["data"]["report_id"] == report_id, 60)
    result = subprocess.run(
        [sys.executable, "-m", "hotrepos_cli", "cancel", report_id, "--reason", "changed my mind"],
        env={**os.environ, "AMQP_URL": pipeline.amqp_url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    failed = listener.wait_for_outcome(report_id, 30)
    assert failed["type"] == "report.failed"
    assert (failed["data"]["stage"], failed["data"]["reason"]) == ("cancelled", "changed my mind")
    # The sentinel: a report requested after the cancel, through the same queues. The pages of the
    # cancelled report still in flight were started by the fetcher's pool before the sentinel's, and
    # GitHub is as slow for each; the aggregator and the exporter then take their queues in order:
    # once the sentinel's outcome is out, whatever those pages could have caused has come before it.
    # The cancelled report's page 5 waits out its 30 s Retry-After, beyond this test's reach; the
    # fault goes, so that the sentinel's page 5 does not wait too.
    fake_github.clear_faults()
    sentinel = f"sentinel-{uuid.uuid4().hex[:12]}"
    request_report(pipeline, sentinel)
    listener.wait_for_outcome(sentinel, 60)
    assert outcome_ids(listener, report_id) == {("report.failed", failed["id"])}
    assert not list(pipeline.reports_dir.glob(f"*{report_id}*"))
    fake_github.set_latency(0)


def test_sigterm_finishes_or_requeues_in_flight_work_and_exits_in_bound(pipeline: Pipeline, tmp_path: Path) -> None:
    """A second exporter gets a burst, then SIGTERM: every message ends exported or back in the queue."""
    listener = EventListener(pipeline.amqp_url, ("report.exported", SENTINEL))
    env = {**pipeline.env(), "REPORTS_DIR": str(tmp_path)}
    exporters = [p for p in pipeline.processes if p.name == "exporter"]
    for process in exporters:
        process.stop()
        pipeline.processes.remove(process)
    exporter = ServiceProcess("exporter", env, tmp_path).start()
    pipeline.processes.append(exporter)  # stopped with the pipeline, should this test fail midway
    pipeline.wait_for_consumer("exporter.report.aggregated")
    ids = []
    for index in range(40):
        report_id = f"term-{index}-{uuid.uuid4().hex[:8]}"
        ids.append(report_id)
        spec = {"period": "day", "since": dt.date(2026, 11, 21).isoformat(), "layout": "rows"}
        publish(
            pipeline.amqp_url,
            "report.aggregated",
            cloud_event("report.aggregated", {"report_id": report_id, "spec": spec, "total": 0, "languages": []}),
        )
    listener.wait_for(lambda e: e["data"]["report_id"] in ids, 30)
    assert exporter.process is not None
    started = time.monotonic()
    exporter.process.terminate()
    code = exporter.process.wait(30)
    pipeline.processes.remove(exporter)
    assert code == 0, exporter.output()[-2000:]
    assert time.monotonic() - started < 30
    # The sentinel, published once the exporter has exited, reaches the listener's queue behind every
    # outcome the exporter published, each confirmed before the exporter acked its message.
    listener.catch_up()
    # What the exporter had taken and not acked is back in the queue once its consumer is gone from
    # it: the broker returns those messages as it removes the consumer.
    waiting = eventually(
        lambda: unconsumed(pipeline.amqp_url, "exporter.report.aggregated"),
        timeout=30,
        message="the exporter's consumer gone from exporter.report.aggregated",
    ).messages
    exported = {e["data"]["report_id"] for e in listener.events}
    assert len(exported & set(ids)) + waiting == len(ids)
    listener.close()
    pipeline.start("exporter")
    pipeline.wait_for_consumer("exporter.report.aggregated")
