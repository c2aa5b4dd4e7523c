"""Every queue is a quorum queue; a service that finds an older release's classic queue stops and says what to do."""

from __future__ import annotations

from pathlib import Path

import pika
import pytest

from tests.support.broker import Broker
from tests.support.services import ServiceProcess
from tests.support.waiting import eventually


# As the previous release declared them: classic, dead-lettering to hotrepos.dlx under their own name.
@pytest.mark.parametrize(
    ("service", "classic_queue"),
    [("aggregator", "aggregator.report.page.fetched"), ("fetcher", "fetcher.tasks")],
)
def test_a_classic_queue_left_by_an_older_release_stops_the_service_with_what_to_do(
    broker: Broker, vhost: str, redis_url: str, tmp_path: Path, service: str, classic_queue: str
) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(broker.amqp_url(vhost)))
    try:
        arguments = {
            "x-queue-type": "classic",
            "x-dead-letter-exchange": "hotrepos.dlx",
            "x-dead-letter-routing-key": classic_queue,
        }
        connection.channel().queue_declare(classic_queue, durable=True, arguments=arguments)
    finally:
        connection.close()
    process = ServiceProcess(service, {"AMQP_URL": broker.amqp_url(vhost), "REDIS_URL": redis_url}, tmp_path).start()
    try:
        code = eventually(
            lambda: process.process.poll() if process.process else None, timeout=60, message=f"{service} to stop"
        )
    finally:
        process.stop()
    output = process.output()
    assert code != 0, output[-2000:]
    assert "PRECONDITION_FAILED - inequivalent arg" in output and classic_queue in output, output[-2000:]
    assert "Moving to quorum queues" in output, output[-2000:]


def test_every_queue_a_service_declares_is_a_quorum_queue_but_a_replica_s_own(broker: Broker, vhost: str) -> None:
    from shared.amqp import connect, declare_topology
    from shared.settings import CommonSettings
    from shared.topology import every_subscription

    with connect(CommonSettings(amqp_url=broker.amqp_url(vhost))) as opened:
        declare_topology(opened, every_subscription())
    listed = broker.api("GET", f"/queues/{vhost}").json()
    types = {queue["name"]: queue.get("type") for queue in listed}
    assert types and set(types.values()) == {"quorum"}, types
    assert {f"celery_delayed_{level}" for level in range(28)} <= set(types)
