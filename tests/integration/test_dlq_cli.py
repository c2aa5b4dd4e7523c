"""`hotrepos dlq`: list, show, replay and purge, against a real broker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pika

from shared.amqp import connect, declare_topology
from shared.settings import CommonSettings
from shared.topology import DELAYED, FETCHER_REQUESTED, REASON_HEADER, redelivery_routing_key
from tests.support.amqp import cloud_event, publish, queue_depth
from tests.support.broker import Broker


def hotrepos(amqp_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hotrepos_cli", *args],
        env={**os.environ, "AMQP_URL": amqp_url},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_list_show_replay_purge(amqp_url: str, broker: Broker, vhost: str) -> None:
    with connect(CommonSettings(amqp_url=amqp_url)) as connection:
        declare_topology(connection, [FETCHER_REQUESTED])
    good = cloud_event("report.requested", {"report_id": "replay-me", "period": "day"})
    # What our wrapper writes when it gives up on a message, and what the broker writes at its delivery limit.
    publish(
        amqp_url,
        FETCHER_REQUESTED.queue_name,
        good,
        exchange="hotrepos.dlx",
        headers={
            REASON_HEADER: "gave up after 30 retries: SMTP down",
            "x-hotrepos-original-exchange": "hotrepos.events",
            "x-hotrepos-original-routing-key": "report.requested",
        },
    )
    poison = uuid.uuid4().hex
    publish(
        amqp_url,
        FETCHER_REQUESTED.queue_name,
        b"not json " + poison.encode(),
        exchange="hotrepos.dlx",
        headers={
            REASON_HEADER: "body is not JSON: Expecting value",
            "x-hotrepos-original-exchange": "hotrepos.events",
            "x-hotrepos-original-routing-key": "report.requested",
        },
    )

    listed = hotrepos(amqp_url, "dlq", "list")
    assert listed.returncode == 0, listed.stderr
    assert any(line.split() == ["fetcher.report.requested.dlq", "2"] for line in listed.stdout.splitlines())

    output = hotrepos(amqp_url, "dlq", "show", "fetcher.report.requested").stdout
    shown = [json.loads(line) for line in output.splitlines()]
    assert [s["reason"] for s in shown] == ["gave up after 30 retries: SMTP down", "body is not JSON: Expecting value"]
    assert shown[0]["origin"] == "hotrepos.events / report.requested"
    assert poison in shown[1]["body"]
    assert queue_depth(amqp_url, "fetcher.report.requested.dlq") == 2  # show takes nothing

    replayed = hotrepos(amqp_url, "dlq", "replay", "fetcher.report.requested", "--limit", "1")
    assert "replayed 1 message(s)" in replayed.stdout, replayed.stderr
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    channel = connection.channel()
    method, properties, body = channel.basic_get("fetcher.report.requested", auto_ack=True)
    assert method is not None and json.loads(body)["id"] == good["id"]
    # Through the delay levels' way out, with no delay: back to the queue it died in alone, not to
    # every subscriber of its event again.
    assert (method.exchange, method.routing_key) == (DELAYED.name, redelivery_routing_key("fetcher.report.requested"))
    assert REASON_HEADER not in (properties.headers or {})
    connection.close()

    refused = hotrepos(amqp_url, "dlq", "purge")
    assert refused.returncode == 2
    purged = hotrepos(amqp_url, "dlq", "purge", "fetcher.report.requested.dlq")
    assert "purged 1" in purged.stdout
    assert queue_depth(amqp_url, "fetcher.report.requested.dlq") == 0
