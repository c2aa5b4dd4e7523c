"""The generated least-privilege users against the real broker: each can do its job, and no more."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pika
import pika.exceptions
import pytest
import requests
from kombu.transport.native_delayed_delivery import level_name

from infra.rabbitmq.definitions import OPERATOR, principals
from services.fetcher.topology import TASK_DEAD_LETTER_QUEUE, TASK_EXCHANGE, TASK_QUEUE
from shared.amqp import connect, declare_topology
from shared.events import (
    EVENT_TYPES,
    AlertRaised,
    EventData,
    ReportAggregated,
    ReportCancelRequested,
    ReportExported,
    ReportFailed,
    ReportPageFetched,
    ReportQueued,
    ReportRequested,
    ReportSpec,
)
from shared.pipeline import PublishRefused
from shared.publisher import Publisher, build_event
from shared.settings import CommonSettings
from shared.topology import (
    AGGREGATOR_PAGE_FETCHED,
    ALERTS,
    CONTROL,
    DELAY,
    DELAYED,
    DLX,
    EVENTS,
    FETCHER_REQUESTED,
    PUBLISHES,
    REASON_HEADER,
    SUBSCRIPTIONS,
    control_of,
    delayed_routing_key,
    exchange_of,
    redelivery_routing_key,
    subscriptions_with_control,
)
from shared.webhooks import WEBHOOK_DELIVERY, WebhookDelivery
from tests.support.amqp import EventListener, cloud_event, dead_letters, publish
from tests.support.broker import Broker
from tests.support.broker_users import ServiceUsers, service_users
from tests.support.services import ServiceProcess
from tests.support.waiting import eventually

CONSUMERS = tuple(service for service in principals() if subscriptions_with_control(service))
EVENT_TYPES_ON_EVENTS = (
    "report.requested",
    "report.queued",
    "report.page.fetched",
    "report.aggregated",
    "report.exported",
    "report.failed",
)
SPEC = ReportSpec(period="day", since=dt.date(2026, 11, 21))


def sample(event_type: str, report_id: str) -> EventData:
    """A valid event of each type: permissions are about where it goes, not what it says."""
    samples: dict[str, EventData] = {
        "report.requested": ReportRequested(report_id=report_id, period="day"),
        "report.queued": ReportQueued(report_id=report_id, priority="bulk", position=0, eta_seconds=1.0),
        "report.page.fetched": ReportPageFetched(report_id=report_id, page=1, pages=1, spec=SPEC, items=[]),
        "report.aggregated": ReportAggregated(report_id=report_id, spec=SPEC, total=0, languages=[]),
        "report.exported": ReportExported(
            report_id=report_id,
            path="r.csv",
            rows=0,
            sha256="0" * 64,
            layout="rows",
            spec=SPEC,
            repositories=0,
            top_languages=[],
        ),
        "report.failed": ReportFailed(report_id=report_id, stage="test", reason="test"),
        "report.cancel.requested": ReportCancelRequested(report_id=report_id),
        WEBHOOK_DELIVERY: WebhookDelivery(
            subscription_id="s", event_id="e", event_type="report.exported", report_id=report_id, body="{}"
        ),
    }
    return samples[event_type]


def publish_as(publisher: Publisher, event_type: str, report_id: str) -> None:
    """A contract event as any publisher sends it; a service's own message on its own exchange."""
    if event_type in EVENT_TYPES:
        publisher.publish(sample(event_type, report_id))
        return
    event = build_event(sample(event_type, report_id), source=publisher.source, event_type=event_type)
    publisher.publish_event(event, exchange=exchange_of(event_type))


@pytest.fixture
def users(broker: Broker, vhost: str) -> Iterator[ServiceUsers]:
    with service_users(broker, vhost) as loaded:
        yield loaded


def settings_of(users: ServiceUsers, service: str) -> CommonSettings:
    return CommonSettings(amqp_url=users.amqp_url(service))


def declare_as_services(users: ServiceUsers) -> None:
    """Each consumer declares its topology under its own user, exactly as it does at start."""
    for service in CONSUMERS:
        with connect(settings_of(users, service)) as connection:
            declare_topology(connection, subscriptions_with_control(service))
            if service == "fetcher":
                TASK_QUEUE(connection.default_channel).declare()  # as the fetcher's Celery worker does
                TASK_DEAD_LETTER_QUEUE(connection.default_channel).declare()  # as the fetcher does at start


def refusal(amqp_url: str, action: str, *args: str) -> str | None:
    """Run one AMQP action on a fresh channel; the broker's refusal text, or None if it was allowed."""
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        if action == "publish":
            exchange, routing_key = args
            channel.basic_publish(exchange, routing_key, b"{}", pika.BasicProperties(delivery_mode=2))
        elif action == "get":
            channel.basic_get(args[0], auto_ack=False)
        elif action == "consume":
            channel.basic_consume(args[0], lambda *_: None)
        elif action == "declare":
            channel.queue_declare(args[0], durable=True)
        elif action == "bind":
            queue, exchange, key = args
            channel.queue_bind(queue, exchange, key)
        elif action == "delete":
            channel.queue_delete(args[0])
        else:
            raise ValueError(action)
        return None
    except pika.exceptions.ChannelClosedByBroker as exc:
        return f"{exc.reply_code} {exc.reply_text}"
    finally:
        if connection.is_open:
            connection.close()


def test_every_service_can_declare_publish_and_consume_what_it_needs(users: ServiceUsers) -> None:
    declare_as_services(users)
    report_id = f"perm-{uuid.uuid4().hex[:8]}"
    for service in principals():
        publisher = Publisher(connect(settings_of(users, service)), source=f"tests/{service}", pool_size=1)
        try:
            for event_type in PUBLISHES[service]:
                publish_as(publisher, event_type, report_id)
            publisher.publish(
                AlertRaised(service=service, level="ERROR", logger="tests", message="test", fingerprint="f"),
            )
            for subscription in (s for s in SUBSCRIPTIONS if s.service == service):
                # What the consumer wrapper does with a poison message, and with one to retry later.
                publisher.publish_raw(b"{}", exchange=DLX, routing_key=subscription.queue_name)
                publisher.publish_raw(
                    b"{}", exchange=DELAY, routing_key=delayed_routing_key(3600, subscription.queue_name)
                )
            if service == "fetcher":
                publisher.publish_raw(b"{}", exchange=TASK_EXCHANGE, routing_key=TASK_QUEUE.routing_key)
        finally:
            publisher.close()

    for service in CONSUMERS:
        with connect(settings_of(users, service)) as connection:
            # A replica's exclusive, server-named queue on hotrepos.control.
            assert control_of(service).queue()(connection.default_channel).declare().startswith("amq.gen-")

    published = [t for service in principals() for t in PUBLISHES[service] if exchange_of(t) is EVENTS]
    for subscription in SUBSCRIPTIONS:
        if subscription.exchange is EVENTS:
            expected = [t for t in published if topic_matches(subscription.binding_key, t)]
        elif subscription.exchange is ALERTS:  # one alert from each service
            expected = ["alert.raised"] * len(principals())
        else:  # a service's own exchange: what that service published there
            expected = [t for t in PUBLISHES[subscription.service] if exchange_of(t) is subscription.exchange]
        received = drain(users.amqp_url(subscription.service), subscription.queue_name)
        assert sorted(received) == sorted(expected), subscription.queue_name
        assert len(drain(users.amqp_url(subscription.service), subscription.dlq_name)) == 1
    assert drain(users.amqp_url("fetcher"), "fetcher.tasks") == ["?"]


def topic_matches(binding_key: str, routing_key: str) -> bool:
    """The bindings of the contract: an exact key, or a prefix followed by `.#`."""
    if binding_key.endswith(".#"):
        return routing_key.startswith(binding_key[:-1])
    return binding_key == routing_key


def drain(amqp_url: str, queue: str) -> list[str]:
    """The event types of every message in a queue, consumed by the queue's own service user."""
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        types = []
        while True:
            method, _, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                return types
            types.append(str(json.loads(body).get("type", "?")))
    finally:
        connection.close()


def test_publishing_another_services_event_is_refused(users: ServiceUsers) -> None:
    declare_as_services(users)
    outcomes = {
        (service, event_type): refusal(users.amqp_url(service), "publish", EVENTS.name, event_type)
        for service in principals()
        for event_type in EVENT_TYPES_ON_EVENTS
    }
    allowed = {key for key, refused in outcomes.items() if refused is None}
    assert allowed == {(service, t) for service in principals() for t in PUBLISHES[service] if exchange_of(t) is EVENTS}
    # The notifier and the webhooks service may not write to hotrepos.events at all; the others only
    # with their keys.
    silent = {service for service in principals() if not any(exchange_of(t) is EVENTS for t in PUBLISHES[service])}
    assert silent == {"notifier", "webhooks"}
    for key, refused in outcomes.items():
        if key not in allowed:
            assert refused is not None and refused.startswith("403 ACCESS_REFUSED - access to "), key
            assert f"topic '{key[1]}'" in refused or key[0] in silent, refused


def test_reading_binding_or_declaring_what_another_service_owns_is_refused(users: ServiceUsers) -> None:
    declare_as_services(users)
    unexpected = []
    for service in principals():
        url = users.amqp_url(service)
        for subscription in SUBSCRIPTIONS:
            if subscription.service == service:
                continue
            for action, args in (
                ("get", (subscription.queue_name,)),
                ("consume", (subscription.queue_name,)),
                ("get", (subscription.dlq_name,)),
                ("declare", (f"{subscription.queue_name}.extra",)),
                ("delete", (subscription.queue_name,)),
                ("bind", (subscription.queue_name, EVENTS.name, "report.#")),
            ):
                refused = refusal(url, action, *args)
                if refused is None or not refused.startswith("403"):
                    unexpected.append((service, action, args, refused))
        # A service may not tap events it does not consume, even into a queue of its own.
        own = next((s for s in SUBSCRIPTIONS if s.service == service and s.exchange is EVENTS), None)
        if own is not None:
            refused = refusal(url, "bind", own.queue_name, EVENTS.name, "#")
            if refused is None or "access to topic" not in refused:
                unexpected.append((service, "bind", (own.queue_name, "#"), refused))
        refused = refusal(url, "declare", f"{service}.undeclared")
        if refused is None:
            unexpected.append((service, "declare", (f"{service}.undeclared",), refused))
    assert unexpected == []


def test_notifier_and_beat_cannot_publish_pipeline_events(users: ServiceUsers) -> None:
    declare_as_services(users)
    notifier = Publisher(connect(settings_of(users, "notifier")), source="tests/notifier", pool_size=1)
    try:
        with pytest.raises(PublishRefused, match=r"report\.exported.*ACCESS_REFUSED"):
            notifier.publish(sample("report.exported", "perm-n"))
        # The refusal closed a channel, not the publisher: what it may do still works.
        notifier.publish(
            AlertRaised(service="notifier", level="ERROR", logger="t", message="m", fingerprint="f"),
        )
    finally:
        notifier.close()
    assert refusal(users.amqp_url("fetcher-beat"), "publish", EVENTS.name, "report.failed") is not None


def test_no_side_door_into_another_services_queue(users: ServiceUsers) -> None:
    declare_as_services(users)
    fetcher = users.amqp_url("fetcher")
    assert refusal(fetcher, "publish", "", "notifier.report.exported") is not None
    side_doors = [
        (DELAY.name, delayed_routing_key(1, "notifier.report.exported")),
        (DELAYED.name, redelivery_routing_key("notifier.report.exported")),
        (level_name(3), delayed_routing_key(1, "notifier.report.exported")),
        (DLX.name, "notifier.report.exported"),
    ]
    for side_door, key in side_doors:
        assert refusal(fetcher, "publish", side_door, key) is not None, side_door
    # Nor into another service's own exchange.
    assert refusal(fetcher, "publish", "webhooks.deliveries", "") is not None
    # Its own retries and dead letters still go through.
    assert refusal(fetcher, "publish", DELAY.name, delayed_routing_key(1, "fetcher.report.requested")) is None
    assert refusal(fetcher, "publish", DLX.name, "fetcher.report.requested") is None


def test_a_refused_publish_in_a_service_is_an_error_an_alert_and_a_dead_letter(
    broker: Broker, vhost: str, users: ServiceUsers, redis_url: str, tmp_path: Path
) -> None:
    # Drift between the contract and the broker: the aggregator may no longer publish its result.
    users.set_topic_permission("aggregator", write=r"^report\.failed$", read=r"^report\.page\.fetched$")
    alerts = EventListener(broker.amqp_url(vhost), binding_key="", exchange="hotrepos.alerts")
    aggregator = ServiceProcess(
        "aggregator",
        {
            "AMQP_URL": users.amqp_url("aggregator"),
            "REDIS_URL": redis_url,
            "LOG_DIR": str(tmp_path / "logs"),
            "ALERT_INTERVAL_SECONDS": "1",
        },
        tmp_path / "logs",
    ).start()
    try:

        def consuming() -> bool:
            assert aggregator.alive, aggregator.output()[-3000:]
            try:
                return int(broker.queue(vhost, "aggregator.report.page.fetched").get("consumers", 0)) > 0
            except Exception:
                return False

        eventually(consuming, timeout=60, message="the aggregator consuming")
        report_id = f"refused-{uuid.uuid4().hex[:8]}"
        page = sample("report.page.fetched", report_id).model_dump(mode="json")
        publish(broker.amqp_url(vhost), "report.page.fetched", cloud_event("report.page.fetched", page))

        alert = alerts.wait_for(
            lambda e: e.get("type") == "alert.raised" and "publish.refused" in e["data"]["message"], 60
        )
        assert "report.aggregated" in alert["data"]["message"]
        assert "ACCESS_REFUSED" in alert["data"]["message"]
        assert alert["data"]["service"] == "aggregator"

        def dead_lettered() -> list[tuple[object, bytes]]:
            return dead_letters(broker.amqp_url(vhost), "aggregator.report.page.fetched.dlq")

        eventually(lambda: len(dead_lettered()) == 1, timeout=30, message="the page in the dead-letter queue")
        properties, body = dead_lettered()[0]
        assert json.loads(body)["data"]["report_id"] == report_id
        assert "ACCESS_REFUSED" in properties.headers["x-hotrepos-reason"]  # type: ignore[attr-defined]
        assert aggregator.alive  # one refused publish does not take the service down
    finally:
        alerts.close()
        aggregator.stop()


def operator_cli(users: ServiceUsers, *args: str) -> subprocess.Popen[str]:
    """`hotrepos ...` logged in as the operator, the user an operator points the command line at."""
    return subprocess.Popen(
        [sys.executable, "-m", "hotrepos_cli", *args],
        env={**os.environ, "AMQP_URL": users.amqp_url(OPERATOR)},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finished(command: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = command.communicate(timeout=90)
    return command.returncode, out, err


def dead_letter_a_page_task(users: ServiceUsers) -> None:
    """A page task the fetcher's worker gives up on: the broker dead-letters it, with its x-death record."""
    publish(users.amqp_url("fetcher"), TASK_QUEUE.routing_key, b'{"type": "page-task"}', exchange=TASK_EXCHANGE.name)
    connection = pika.BlockingConnection(pika.URLParameters(users.amqp_url("fetcher")))
    try:
        channel = connection.channel()
        method, _, _ = channel.basic_get(TASK_QUEUE.name, auto_ack=False)
        assert method is not None
        channel.basic_reject(method.delivery_tag, requeue=False)
    finally:
        connection.close()


def test_the_operator_can_do_everything_the_command_line_does(users: ServiceUsers) -> None:
    declare_as_services(users)
    control = EventListener(users.amqp_url("gateway"), binding_key="", exchange=CONTROL.name)
    try:
        status, report_id, err = finished(operator_cli(users, "request", "--period", "day"))
        assert status == 0, err
        assert drain(users.amqp_url("fetcher"), FETCHER_REQUESTED.queue_name) == ["report.requested"]

        status, _, err = finished(operator_cli(users, "cancel", report_id.strip()))
        assert status == 0, err
        control.wait_for(lambda e: e["data"]["report_id"] == report_id.strip(), 30)
    finally:
        control.close()

    # request --wait and tail: a queue of its own on hotrepos.events, followed until the outcome.
    waiting = operator_cli(users, "request", "--period", "week", "--wait", "--timeout", "60")
    assert waiting.stderr is not None
    followed = waiting.stderr.readline().split()[1]  # "report <id> requested (week)"
    tail = operator_cli(users, "tail", "report.#", "--count", "1")
    assert tail.stderr is not None and "listening" in tail.stderr.readline()
    with connect(settings_of(users, "exporter")) as connection:
        exporter = Publisher(connection, source="tests/exporter", pool_size=1)
        try:
            exporter.publish(sample("report.exported", followed))
        finally:
            exporter.close()
    status, path, err = finished(waiting)
    assert (status, path.strip()) == (0, "r.csv"), err
    status, line, err = finished(tail)
    assert status == 0 and "report.exported" in line and followed in line, err

    # dlq: read every dead-letter queue, and replay where the dlq command sends each message.
    publish(
        users.amqp_url("aggregator"),
        AGGREGATOR_PAGE_FETCHED.queue_name,
        cloud_event("report.page.fetched", sample("report.page.fetched", "dead").model_dump(mode="json")),
        exchange=DLX.name,
        headers={REASON_HEADER: "test"},
    )
    dead_letter_a_page_task(users)
    status, listed, err = finished(operator_cli(users, "dlq", "list"))
    assert status == 0, err
    counts = dict(line.split() for line in listed.splitlines())
    assert counts[AGGREGATOR_PAGE_FETCHED.dlq_name] == "1" and counts[TASK_DEAD_LETTER_QUEUE.name] == "1"
    assert {
        c for q, c in counts.items() if q not in (AGGREGATOR_PAGE_FETCHED.dlq_name, TASK_DEAD_LETTER_QUEUE.name)
    } == {"0"}
    status, shown, err = finished(operator_cli(users, "dlq", "show"))
    assert status == 0 and len(shown.splitlines()) == 2, err
    status, replayed, err = finished(operator_cli(users, "dlq", "replay"))
    assert (status, replayed.strip()) == (0, "replayed 2 message(s)"), err
    assert drain(users.amqp_url("aggregator"), AGGREGATOR_PAGE_FETCHED.queue_name) == ["report.page.fetched"]
    assert drain(users.amqp_url("fetcher"), TASK_QUEUE.name) == ["page-task"]
    dead_letter_a_page_task(users)
    status, purged, err = finished(operator_cli(users, "dlq", "purge", "--all"))
    assert status == 0 and f"{TASK_DEAD_LETTER_QUEUE.name}: purged 1" in purged, err


def test_the_operator_is_refused_everything_else(broker: Broker, users: ServiceUsers) -> None:
    declare_as_services(users)
    operator = users.amqp_url(OPERATOR)
    unexpected = []
    attempts: list[tuple[str, tuple[str, ...]]] = [
        *(("publish", (EVENTS.name, t)) for t in EVENT_TYPES_ON_EVENTS if t != "report.requested"),
        ("publish", (ALERTS.name, "")),
        ("publish", ("", FETCHER_REQUESTED.queue_name)),
        ("publish", (DLX.name, FETCHER_REQUESTED.queue_name)),
        ("publish", (DELAY.name, delayed_routing_key(1, FETCHER_REQUESTED.queue_name))),
        ("publish", (DELAYED.name, redelivery_routing_key(TASK_QUEUE.name))),
        ("get", (level_name(0),)),
        ("declare", ("operator.own",)),
        ("get", (TASK_QUEUE.name,)),
        ("delete", (TASK_DEAD_LETTER_QUEUE.name,)),
    ]
    for subscription in SUBSCRIPTIONS:
        attempts += [
            ("get", (subscription.queue_name,)),
            ("consume", (subscription.queue_name,)),
            ("delete", (subscription.dlq_name,)),
            ("bind", (subscription.queue_name, EVENTS.name, "report.#")),
            ("bind", (subscription.dlq_name, EVENTS.name, "report.#")),
        ]
    for action, args in attempts:
        refused = refusal(operator, action, *args)
        if refused is None or not refused.startswith("403 ACCESS_REFUSED"):
            unexpected.append((action, args, refused))
    assert unexpected == []

    status, _, err = finished(
        operator_cli(users, "publish", "report.failed", "--data", '{"report_id": "r", "stage": "s", "reason": "r"}')
    )
    assert status == 4 and "refused publishing to 'hotrepos.events' with routing key 'report.failed'" in err, err
    # No administrator tag: the management API does not let it in.
    overview = requests.get(
        f"{broker.management_url}/api/overview", auth=(users.names[OPERATOR], users.passwords[OPERATOR]), timeout=30
    )
    assert overview.status_code == 401
