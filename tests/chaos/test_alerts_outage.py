"""Alerts raised while the broker is away wait in a bounded spool and reach the admins once it is
back; past the bound, the oldest are dropped, counted, and the first alert after says how many."""

from __future__ import annotations

import logging
import time

from prometheus_client import REGISTRY

from shared.alerts import AlertHandler
from shared.amqp import connect, declare_topology
from shared.publisher import Publisher
from shared.settings import CommonSettings
from tests.support.chaos import ChaosSizes, Figures, OutcomeRecorder, publish_figures
from tests.support.rabbit_node import RabbitNode
from tests.support.waiting import eventually

SPOOL_LIMIT = 20
# A publisher that gives up on an unreachable broker quickly: the spool is what keeps the alert.
QUICK_RETRIES = {"max_retries": 1, "interval_start": 0.1, "interval_step": 0.1, "interval_max": 0.2}


def dropped_so_far() -> float:
    return REGISTRY.get_sample_value("hotrepos_alerts_dropped_total") or 0.0


def test_alerts_raised_during_a_broker_outage_arrive_once_it_is_back(
    rabbit_node: RabbitNode, sizes: ChaosSizes, figures_name: str
) -> None:
    vhost = rabbit_node.broker.create_vhost("hotrepos-chaos")
    settings = CommonSettings(amqp_url=rabbit_node.broker.amqp_url(vhost))
    with connect(settings) as connection:
        declare_topology(connection, [])
    recorder = OutcomeRecorder(settings.amqp_url, binding_key="", exchange=("hotrepos.alerts", "fanout"))
    handler = AlertHandler(
        "probe",
        lambda: Publisher(connect(settings), source="hotrepos/probe", pool_size=1, retry_policy=QUICK_RETRIES),
        interval_seconds=60,
        spool_limit=SPOOL_LIMIT,
    )
    logger = logging.getLogger("hotrepos.probe.outage")
    logger.addHandler(handler)
    logger.propagate = False
    dropped_before = dropped_so_far()
    during = SPOOL_LIMIT + 5
    try:
        logger.error("before the outage")
        eventually(lambda: recorder.events, timeout=30, message="the alert before the outage")
        rabbit_node.stop()
        for index in range(during):
            # Each its own kind (the line differs), so no interval holds one back.
            logger.error(f"raised during the outage #{index:03d}")
        time.sleep(sizes.broker_down_seconds)  # how long the broker stays away: the fault itself
        rabbit_node.start()
        handler.flush(timeout=120)
        eventually(lambda: len(recorder.events) >= 1 + SPOOL_LIMIT, timeout=60, message="the spooled alerts")
        # A sentinel after the spool: once it is heard, every spooled alert before it has been.
        logger.error("after the outage")
        eventually(
            lambda: any(e["data"]["message"] == "after the outage" for e in recorder.events),
            timeout=30,
            message="the alert after the outage",
        )
    finally:
        logger.removeHandler(handler)
        recorder.close()
    messages = [e["data"]["message"] for e in recorder.events]
    dropped = int(dropped_so_far() - dropped_before)
    raised = 1 + during + 1
    distinct = {message.split(" [")[0] for message in messages}
    payload = publish_figures(
        figures_name,
        Figures(
            requested=0,
            exported=0,
            failed=0,
            csv_files=0,
            emails=0,
            duplicates=len(messages) - len(distinct),
            lost=raised - len(distinct) - dropped,
            dead_lettered=0,
        ),
        alerts_raised=raised,
        alerts_delivered=len(messages),
        alerts_dropped_by_the_bound=dropped,
        spool_limit=SPOOL_LIMIT,
        broker_down_seconds=sizes.broker_down_seconds,
    )
    # The spool holds its bound besides the one alert being sent when the broker went away.
    assert during - SPOOL_LIMIT - 1 <= dropped <= during - SPOOL_LIMIT, payload
    assert payload["lost"] == 0 and payload["duplicates"] == 0, payload
    # The oldest were dropped; the newest went out in order, the first of them saying how many.
    spooled = [message.split(" [")[0] for message in messages if "during the outage" in message]
    assert spooled == sorted(spooled), spooled
    newest = [f"raised during the outage #{index:03d}" for index in range(during - SPOOL_LIMIT, during)]
    assert spooled[-SPOOL_LIMIT:] == newest, spooled
    noted = [message for message in messages if "earlier alerts were dropped" in message]
    assert noted and f"[{dropped} earlier alerts were dropped while the broker was unreachable]" in noted[0], messages
