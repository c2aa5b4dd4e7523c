"""Every `hotrepos` command closes each AMQP connection it opens with Connection.Close, never just drops it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest

from shared.amqp import connect, declare_topology
from shared.settings import CommonSettings
from shared.topology import AGGREGATOR_PAGE_FETCHED, REASON_HEADER, every_subscription
from tests.support.amqp import cloud_event, publish
from tests.support.amqp_wire import ClientStream, RecordingAmqpProxy
from tests.support.broker import Broker
from tests.support.waiting import eventually

REPORT_ID = "closes-its-connections"


@pytest.fixture
def proxy(broker: Broker, vhost: str) -> Iterator[RecordingAmqpProxy]:
    with connect(CommonSettings(amqp_url=broker.amqp_url(vhost))) as connection:
        declare_topology(connection, every_subscription())
    with RecordingAmqpProxy(broker.host, broker.port) as recording:
        yield recording


def hotrepos(amqp_url: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "hotrepos_cli", *args],
        env={**os.environ, "AMQP_URL": amqp_url},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proxy: RecordingAmqpProxy, command: subprocess.Popen[str]) -> tuple[list[ClientStream], str]:
    """The command's connections and its stderr, once it has exited and the proxy has seen each connection end."""
    _, err = command.communicate(timeout=90)
    streams = proxy.take_streams()
    assert streams, f"the command opened no connection: {err}"
    eventually(
        lambda: all(s.ended.is_set() for s in streams), timeout=30, message="every connection of the command ended"
    )
    return streams, err


def dead_letter(amqp_url: str) -> None:
    page = {"report_id": REPORT_ID, "page": 1, "pages": 1, "spec": {"period": "day", "since": "2026-11-21"}}
    publish(
        amqp_url,
        AGGREGATOR_PAGE_FETCHED.queue_name,
        cloud_event("report.page.fetched", {**page, "items": []}),
        exchange="hotrepos.dlx",
        headers={REASON_HEADER: "test"},
    )


def nothing(amqp_url: str) -> None:
    """No setup."""


COMMANDS: dict[str, tuple[tuple[str, ...], Callable[[str], None]]] = {
    "request": (("request", "--period", "day"), nothing),
    "cancel": (("cancel", REPORT_ID), nothing),
    "publish": (("publish", "report.requested", "--data", '{"period": "week"}'), nothing),
    "dlq list": (("dlq", "list"), nothing),
    "dlq show": (("dlq", "show"), dead_letter),
    "dlq replay": (("dlq", "replay"), dead_letter),
    "dlq purge": (("dlq", "purge", "--all"), dead_letter),
}


@pytest.mark.parametrize("name", COMMANDS)
def test_each_command_closes_its_connections(name: str, proxy: RecordingAmqpProxy, broker: Broker, vhost: str) -> None:
    args, setup = COMMANDS[name]
    setup(broker.amqp_url(vhost))
    command = hotrepos(proxy.url(broker.user, broker.password, vhost), *args)
    streams, err = finish(proxy, command)
    assert command.returncode == 0, err
    assert [s.closed_properly for s in streams] == [True] * len(streams)


def test_request_wait_closes_its_connections(proxy: RecordingAmqpProxy, broker: Broker, vhost: str) -> None:
    command = hotrepos(
        proxy.url(broker.user, broker.password, vhost), "request", "--period", "day", "--wait", "--timeout", "60"
    )
    assert command.stderr is not None
    requested = command.stderr.readline()  # "report <id> requested (day)": it follows the report from here on
    report_id = requested.split()[1]
    failed = {"report_id": report_id, "stage": "fetch", "reason": "ended by the test"}
    publish(broker.amqp_url(vhost), "report.failed", cloud_event("report.failed", failed))
    streams, err = finish(proxy, command)
    assert command.returncode == 1, requested + err
    assert [s.closed_properly for s in streams] == [True] * len(streams)


def test_tail_closes_its_connections(proxy: RecordingAmqpProxy, broker: Broker, vhost: str) -> None:
    command = hotrepos(proxy.url(broker.user, broker.password, vhost), "tail", "report.#", "--count", "1")
    assert command.stderr is not None
    assert "listening" in command.stderr.readline()
    publish(broker.amqp_url(vhost), "report.requested", cloud_event("report.requested", {"period": "day"}))
    streams, err = finish(proxy, command)
    assert command.returncode == 0, err
    assert [s.closed_properly for s in streams] == [True] * len(streams)
