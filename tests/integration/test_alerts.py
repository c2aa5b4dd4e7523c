"""ERROR records become alerts on hotrepos.alerts, one per interval for a storm of identical errors."""

from __future__ import annotations

import logging

from shared.alerts import AlertHandler
from shared.amqp import connect, declare_topology
from shared.publisher import Publisher
from shared.settings import CommonSettings
from tests.support.amqp import EventListener

SENTINEL = "the storm is over"


def test_a_storm_of_identical_errors_gives_one_alert_per_interval(amqp_url: str) -> None:
    settings = CommonSettings(amqp_url=amqp_url)
    with connect(settings) as connection:
        declare_topology(connection, [])
    listener = EventListener(amqp_url, "", exchange="hotrepos.alerts")
    now = [1000.0]
    handler = AlertHandler(
        "probe",
        lambda: Publisher(connect(settings), source="hotrepos/probe", pool_size=1),
        interval_seconds=60,
        clock=lambda: now[0],
    )
    logger = logging.getLogger("hotrepos.probe.storm")
    logger.addHandler(handler)
    logger.propagate = False

    def write_failed(index: int) -> None:
        logger.error("disk full on write %d", index)

    try:
        for index in range(200):
            write_failed(index)
        logger.warning("a warning is no alert")
        logger.error("another kind of error")
        now[0] += 61
        write_failed(999)
        # The sentinel: an error of a kind of its own, so an alert that no interval holds back. The
        # handler publishes its alerts one at a time, in the order they were raised, each confirmed
        # by the broker before the next; the listener's queue keeps that order. Once the sentinel is
        # heard, any alert the storm raised before it has been heard too.
        logger.error(SENTINEL)
        handler.flush()
        listener.wait_for(lambda e: e["data"]["message"] == SENTINEL, 10)
    finally:
        logger.removeHandler(handler)
        listener.close()
    alerts = [e["data"] for e in listener.events if e["data"]["message"] != SENTINEL]
    assert [a["message"] for a in alerts] == ["disk full on write 0", "another kind of error", "disk full on write 999"]
    assert [a["suppressed"] for a in alerts] == [0, 0, 199]
    assert alerts[0]["fingerprint"] == alerts[2]["fingerprint"] != alerts[1]["fingerprint"]
    assert all(e["type"] == "alert.raised" and e["source"] == "hotrepos/probe" for e in listener.events)
