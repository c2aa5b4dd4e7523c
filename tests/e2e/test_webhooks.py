"""Webhooks end to end: the pipeline, the gateway and the webhooks service as processes, RabbitMQ, Redis,
and a real receiver on loopback that verifies every signature with the `standardwebhooks` package."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from kombu.transport.native_delayed_delivery import level_name
from playwright.sync_api import expect, sync_playwright

from shared.topology import DELAY_LEVELS
from shared.webhooks import RedisWebhookSubscriptions, WebhookSubscription
from tests.conftest import TODAY
from tests.support.amqp import EventListener, cloud_event, dead_letters, publish, queue_depth
from tests.support.pipeline import Gateway, Pipeline
from tests.support.services import ServiceProcess
from tests.support.smtp import free_port
from tests.support.tcp_proxy import TcpProxy
from tests.support.waiting import eventually
from tests.support.webhook_receiver import Answer, Received, WebhookReceiver

HOTREPOS = Path(sys.executable).parent / "hotrepos"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
PUBLIC_URL = "https://hotrepos.test"
# Seconds, not a day: a retry after a few hundredths of a second, a cap of a few seconds.
WEBHOOKS_ENV = {
    "WEBHOOK_ALLOWED_HOSTS": "127.0.0.1",
    "WEBHOOK_TIMEOUT_SECONDS": "1",
    "WEBHOOK_RETRY_BASE_SECONDS": "0.05",
    "WEBHOOK_RETRY_MAX_SECONDS": "5",
    "WEBHOOK_MAX_ATTEMPTS": "60",
    "GATEWAY_PUBLIC_URL": PUBLIC_URL,
}
DELIVERIES_DLQ = "webhooks.deliveries.dlq"
SPEC = {"period": "week", "since": (TODAY - dt.timedelta(days=7)).isoformat(), "layout": "rows"}


@pytest.fixture(scope="module")
def receiver() -> Iterator[WebhookReceiver]:
    started = WebhookReceiver().start()
    yield started
    started.stop()


@pytest.fixture(scope="module")
def metrics_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def webhooks(pipeline: Pipeline, metrics_port: int) -> ServiceProcess:
    # Subscriptions are global to a Redis database: none left over from an earlier run may receive ours.
    client = redis.Redis.from_url(pipeline.redis_url)
    stored = RedisWebhookSubscriptions(client)
    for subscription in stored.all():
        stored.delete(subscription.id)
    client.close()
    return pipeline.start_webhooks(env={**WEBHOOKS_ENV, "METRICS_PORT": str(metrics_port)})


@pytest.fixture(scope="module")
def gateway(pipeline: Pipeline, webhooks: ServiceProcess) -> Gateway:
    return pipeline.start_gateway(env={"WEBHOOK_ALLOWED_HOSTS": "127.0.0.1"})


@pytest.fixture
def api(gateway: Gateway) -> Iterator[requests.Session]:
    session = requests.Session()
    yield session
    session.close()


Subscribe = Callable[..., dict[str, Any]]


@pytest.fixture
def subscribe(api: requests.Session, gateway: Gateway, receiver: WebhookReceiver) -> Iterator[Subscribe]:
    """Registers a receiver path through the API (its secret then verifies it); removed after the test."""
    created: list[str] = []

    def register(path: str, *, url: str | None = None, **fields: Any) -> dict[str, Any]:
        answer = api.post(f"{gateway.url}/api/webhooks", json={"url": url or receiver.url(path), **fields}, timeout=30)
        assert answer.status_code == 201, answer.text
        subscription: dict[str, Any] = answer.json()
        receiver.set_secret(path, subscription["secret"])
        created.append(subscription["id"])
        return subscription

    yield register
    for webhook_id in created:
        api.delete(f"{gateway.url}/api/webhooks/{webhook_id}", timeout=30)


def exported_data(report_id: str, repositories: int = 42) -> dict[str, Any]:
    return {
        "report_id": report_id,
        "path": f"reports/hotrepos-week-{report_id}.csv",
        "rows": repositories,
        "sha256": "0" * 64,
        "layout": "rows",
        "spec": SPEC,
        "repositories": repositories,
        "top_languages": [{"language": "Python", "count": repositories // 2}, {"language": "Rust", "count": 3}],
    }


def publish_exported(pipeline: Pipeline, repositories: int = 42, event_id: str | None = None) -> dict[str, Any]:
    """A report.exported published with pika, as the exporter would; its CloudEvent."""
    report_id = f"wh-{uuid.uuid4().hex[:10]}"
    event = cloud_event(
        "report.exported", exported_data(report_id, repositories), event_id=event_id, correlationid=report_id
    )
    publish(pipeline.amqp_url, "report.exported", event)
    return event


def publish_failed(pipeline: Pipeline, reason: str) -> dict[str, Any]:
    report_id = f"wh-{uuid.uuid4().hex[:10]}"
    data = {"report_id": report_id, "stage": "fetch", "reason": reason, "spec": SPEC}
    event = cloud_event("report.failed", data, correlationid=report_id)
    publish(pipeline.amqp_url, "report.failed", event)
    return event


def delivery_record(
    api: requests.Session, gateway: Gateway, webhook_id: str, event_id: str, until: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """The subscription's record of one event's delivery, once it satisfies `until`."""
    seen: dict[str, Any] = {}

    def reached() -> dict[str, Any] | None:
        answer = api.get(f"{gateway.url}/api/webhooks/{webhook_id}/deliveries", timeout=30)
        assert answer.status_code == 200, answer.text
        found = next((d for d in answer.json() if d["event_id"] == event_id), None)
        seen["record"] = found
        return found if found is not None and until(found) else None

    return eventually(reached, timeout=60, message=lambda: f"the delivery record; last seen {seen.get('record')}")


def hotrepos(gateway: Gateway, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(HOTREPOS), *args],
        env={**os.environ, "HOTREPOS_GATEWAY_URL": gateway.url},
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def request_on_the_page(gateway: Gateway, period: str) -> str:
    """Pick a period and click Generate on the page, in Chromium; the report's id once it is ready."""
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: scripts/bootstrap.sh installs Debian's chromium package"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(gateway.url)
            page.select_option("#period", period)
            page.click("#generate")
            download = page.locator("#download")
            expect(download).to_be_visible(timeout=90_000)
            href = download.get_attribute("href")
        finally:
            browser.close()
    assert href is not None and href.endswith("/download")
    return href.split("/")[-2]


def broker_body(listener: EventListener, event_id: str) -> bytes:
    """The bytes of one event exactly as the broker carried them."""

    def carried() -> bytes | None:
        return next((body for _, body in list(listener.raw) if json.loads(body).get("id") == event_id), None)

    return eventually(carried, timeout=30, message=f"event {event_id} on the broker")


def dead_letter_of(pipeline: Pipeline, subscription_id: str, event_id: str) -> tuple[Any, dict[str, Any]]:
    """The delivery's dead letter: its properties (the reason in a header) and its CloudEvent."""

    def found() -> tuple[Any, dict[str, Any]] | None:
        for properties, body in dead_letters(pipeline.amqp_url, DELIVERIES_DLQ):
            message = json.loads(body)
            if message["data"]["subscription_id"] == subscription_id and message["data"]["event_id"] == event_id:
                return properties, message
        return None

    return eventually(found, timeout=60, message=f"the dead letter of {subscription_id}/{event_id}")


def test_a_subscriber_registered_with_the_cli_hears_once_signed_of_a_report_requested_on_the_page(
    pipeline: Pipeline, gateway: Gateway, receiver: WebhookReceiver
) -> None:
    path = receiver.new_path(name="cli")
    added = hotrepos(
        gateway, "webhooks", "add", receiver.url(path), "--event", "report.exported", "--description", "the CI"
    )
    assert added.returncode == 0, added.stderr
    first, *_, secret = added.stdout.splitlines()
    webhook_id = first.split()[1]
    assert first == f"webhook {webhook_id} added: standard, report.exported -> {receiver.url(path)}"
    assert secret.startswith("whsec_")
    receiver.set_secret(path, secret)
    listener = EventListener(pipeline.amqp_url, "report.exported")
    try:
        report_id = request_on_the_page(gateway, "week")

        [delivery] = receiver.wait_for(path, 1, timeout=60)
        exported = listener.wait_for(lambda e: e["data"]["report_id"] == report_id)
        assert delivery.verified is True
        assert delivery.headers["content-type"] == "application/json"
        assert delivery.webhook_id == exported["id"]
        # The report.exported CloudEvent of that report, byte for byte as it went over the broker.
        assert delivery.body == broker_body(listener, exported["id"])

        # Exactly one: a later event reaches the same subscriber after it, and nothing else came.
        later = publish_exported(pipeline)
        received = receiver.wait_for(path, 2)
        assert [r.webhook_id for r in received] == [exported["id"], later["id"]]
        assert all(r.verified is True for r in received)
    finally:
        listener.close()

    shown = hotrepos(gateway, "webhooks", "deliveries", webhook_id)
    assert shown.returncode == 0, shown.stderr
    line = next(line for line in shown.stdout.splitlines() if line.startswith(exported["id"]))
    assert line.split()[1:6] == ["report.exported", report_id, "delivered", "1", "200"]
    listed = hotrepos(gateway, "webhooks", "list", "--json")
    [mine] = [w for w in json.loads(listed.stdout) if w["id"] == webhook_id]
    assert (mine["url"], mine["description"], "secret" in mine) == (receiver.url(path), "the CI", False)
    assert hotrepos(gateway, "webhooks", "remove", webhook_id).stdout.strip() == f"webhook {webhook_id} removed"
    gone = hotrepos(gateway, "webhooks", "remove", webhook_id)
    assert gone.returncode == 1 and f"no webhook '{webhook_id}'" in gone.stderr


def test_a_receiver_answering_500_twice_then_200_gets_it_once_after_three_attempts(
    pipeline: Pipeline, gateway: Gateway, api: requests.Session, receiver: WebhookReceiver, subscribe: Subscribe
) -> None:
    path = receiver.new_path(Answer(500), Answer(500))
    hook = subscribe(path)
    event = publish_exported(pipeline)

    record = delivery_record(api, gateway, hook["id"], event["id"], lambda d: d["status"] == "delivered")
    assert (record["attempts"], record["last_status_code"], record["last_error"]) == (3, 200, None)
    assert record["report_id"] == event["data"]["report_id"] and record["delivered_at"]
    received = receiver.received(path)
    assert [r.answered for r in received] == [500, 500, 200]
    assert {r.webhook_id for r in received} == {event["id"]}
    assert all(r.verified is True for r in received)


def test_a_receiver_answering_410_fails_after_one_attempt_and_is_dead_lettered_with_the_reason(
    pipeline: Pipeline, gateway: Gateway, api: requests.Session, receiver: WebhookReceiver, subscribe: Subscribe
) -> None:
    path = receiver.new_path(then=Answer(410))
    hook = subscribe(path)
    event = publish_exported(pipeline)

    record = delivery_record(api, gateway, hook["id"], event["id"], lambda d: d["status"] != "retrying")
    assert (record["status"], record["attempts"], record["last_status_code"]) == ("failed", 1, 410)
    assert record["last_error"] == "HTTP 410"
    properties, message = dead_letter_of(pipeline, hook["id"], event["id"])
    assert properties.headers["x-hotrepos-reason"] == f"webhook {hook['id']}: HTTP 410"
    assert message["type"] == "webhook.delivery"
    # Dead-lettered is final: nothing more can come.
    assert len(receiver.received(path)) == 1


def test_a_receiver_down_for_a_while_gets_the_delivery_once_it_is_up(
    pipeline: Pipeline, gateway: Gateway, api: requests.Session, receiver: WebhookReceiver, subscribe: Subscribe
) -> None:
    path = receiver.new_path()
    proxy = TcpProxy("127.0.0.1", receiver.port).start()
    proxy.cut()
    try:
        hook = subscribe(path, url=f"http://127.0.0.1:{proxy.port}{path}")
        event = publish_exported(pipeline)
        down = delivery_record(api, gateway, hook["id"], event["id"], lambda d: d["attempts"] >= 3)
        assert (down["status"], down["last_status_code"], down["last_error"]) == (
            "retrying",
            None,
            "connection refused",
        )
        assert receiver.received(path) == []

        proxy.restore()
        record = delivery_record(api, gateway, hook["id"], event["id"], lambda d: d["status"] == "delivered")
        assert record["attempts"] >= 4
        [delivered] = receiver.received(path)
        assert delivered.webhook_id == event["id"] and delivered.verified is True
    finally:
        proxy.cut()


def test_a_slow_receiver_is_timed_out_and_retried(
    pipeline: Pipeline,
    gateway: Gateway,
    api: requests.Session,
    receiver: WebhookReceiver,
    subscribe: Subscribe,
    metrics_port: int,
) -> None:
    timeouts_before = webhook_metric(metrics_port, "timeout")
    # Slower than WEBHOOK_TIMEOUT_SECONDS the first time, quick the second.
    path = receiver.new_path(Answer(200, delay=2.5))
    hook = subscribe(path)
    event = publish_exported(pipeline)

    record = delivery_record(api, gateway, hook["id"], event["id"], lambda d: d["status"] == "delivered")
    assert record["attempts"] == 2
    slow, fast = sorted(receiver.wait_for(path, 2), key=lambda r: r.at)
    assert slow.sender_left and not fast.sender_left  # the first answer came after the sender gave up
    assert slow.webhook_id == fast.webhook_id == event["id"]
    assert webhook_metric(metrics_port, "timeout") - timeouts_before == 1


# Where deliveries wait for their retry: the broker's delay levels.
DELAY_QUEUES = tuple(level_name(level) for level in range(DELAY_LEVELS))


def webhook_metric(port: int, outcome: str) -> float:
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    wanted = f'hotrepos_webhook_deliveries_total{{format="standard",outcome="{outcome}"}}'
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(wanted))


def test_two_replicas_and_many_reports_each_subscription_gets_each_event_once(
    pipeline: Pipeline, receiver: WebhookReceiver, subscribe: Subscribe
) -> None:
    second = pipeline.start_webhooks("webhooks-2", env=WEBHOOKS_ENV)
    try:
        paths = [receiver.new_path(name=f"many{n}") for n in range(3)]
        for path in paths:
            subscribe(path)
        events = [cloud_event("report.exported", exported_data(f"wh-many-{uuid.uuid4().hex[:8]}")) for _ in range(20)]
        for event in events:
            # Each one twice, as a publisher's retry after a lost confirm would: the same event id.
            publish(pipeline.amqp_url, "report.exported", event)
            publish(pipeline.amqp_url, "report.exported", event)
        wanted = {event["id"] for event in events}

        def all_delivered() -> bool:
            return all(wanted <= {r.webhook_id for r in receiver.received(path)} for path in paths)

        eventually(all_delivered, timeout=120, message="every event at every subscriber")
        # Copies that met their twin being sent by the other replica wait for a retry, then find it
        # delivered: once none waits, a later event reaches every subscriber after them.
        queues = ("webhooks.report.exported", "webhooks.deliveries", *DELAY_QUEUES)
        eventually(
            lambda: all(queue_depth(pipeline.amqp_url, queue) == 0 for queue in queues),
            timeout=60,
            message="no delivery waiting",
        )
        later = publish_exported(pipeline)
        eventually(
            lambda: all(later["id"] in {r.webhook_id for r in receiver.received(path)} for path in paths),
            timeout=60,
            message="the later event at every subscriber",
        )
        for path in paths:
            received: list[Received] = receiver.received(path)
            counts = Counter(r.webhook_id for r in received)
            assert set(counts) == wanted | {later["id"]}
            assert set(counts.values()) == {1}, counts.most_common(3)
            assert all(r.verified is True for r in received)
    finally:
        second.stop()


def test_a_subscription_deleted_while_its_delivery_waits_gets_no_more(
    pipeline: Pipeline, gateway: Gateway, api: requests.Session, receiver: WebhookReceiver, subscribe: Subscribe
) -> None:
    # Both answer 503 with the same Retry-After, so both deliveries wait in the same delay levels for the
    # same time, the deleted one's first: the sentinel's retry comes back after it, to the one replica.
    retry_after = {"Retry-After": "3"}
    deleted_path = receiver.new_path(then=Answer(503, headers=retry_after))
    deleted = subscribe(deleted_path, events=["report.exported"])
    sentinel_path = receiver.new_path(Answer(503, headers=retry_after))
    subscribe(sentinel_path, events=["report.failed"])

    publish_exported(pipeline)
    receiver.wait_for(deleted_path, 1)
    assert api.delete(f"{gateway.url}/api/webhooks/{deleted['id']}", timeout=30).status_code == 204
    failed = publish_failed(pipeline, "GitHub is down")

    retried = receiver.wait_for(sentinel_path, 2)
    assert [r.webhook_id for r in retried] == [failed["id"], failed["id"]]
    assert len(receiver.received(deleted_path)) == 1


def test_a_slack_subscription_hears_the_count_or_the_reason(
    pipeline: Pipeline, receiver: WebhookReceiver, subscribe: Subscribe
) -> None:
    path = receiver.new_path(name="slack")
    hook = subscribe(path, format="slack")
    assert hook["secret"] is None
    exported = publish_exported(pipeline, repositories=321)
    [ready] = receiver.wait_for(path, 1)
    text = json.loads(ready.body)["text"]
    assert "321 repositories" in text and "weekly" in text and "Python 160" in text
    assert f"<{PUBLIC_URL}/api/reports/{exported['data']['report_id']}/download|Download the CSV>" in text
    assert "webhook-signature" not in ready.headers

    failed = publish_failed(pipeline, "GitHub answered 422 <twice>")
    [_, failure] = receiver.wait_for(path, 2)
    text = json.loads(failure.body)["text"]
    assert failed["data"]["report_id"] in text and "GitHub answered 422 &lt;twice&gt;" in text


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a link-local address"),
        ("http://10.0.0.1/", "10.0.0.1 is a private address"),
        ("http://[::1]/", "::1 is a loopback address"),
        ("http://localhost/", "a loopback address"),
        ("file:///etc/passwd", "scheme must be http or https, not 'file'"),
        ("gopher://127.0.0.1:70/_stats", "scheme must be http or https, not 'gopher'"),
        ("http://user:secret@127.0.0.1:9/hook", "must not carry user-info"),
    ],
)
def test_registration_refuses_what_may_not_be_called(
    gateway: Gateway, api: requests.Session, url: str, reason: str
) -> None:
    answer = api.post(f"{gateway.url}/api/webhooks", json={"url": url}, timeout=30)
    assert answer.status_code == 422
    [error] = answer.json()["detail"]
    assert error["loc"] == ["body", "url"] and reason in error["msg"]
    assert url not in [w["url"] for w in api.get(f"{gateway.url}/api/webhooks", timeout=30).json()]


def test_the_cli_says_why_a_url_is_refused(gateway: Gateway) -> None:
    refused = hotrepos(gateway, "webhooks", "add", "http://169.254.169.254/latest/meta-data/")
    assert refused.returncode == 2
    assert "url: Value error, 169.254.169.254 is a link-local address" in refused.stderr


def test_a_url_that_points_inside_at_delivery_time_is_dead_lettered_with_the_reason(
    pipeline: Pipeline, gateway: Gateway, api: requests.Session, receiver: WebhookReceiver
) -> None:
    """As if its name had been rebound to loopback since its registration: the delivery checks again."""
    path = receiver.new_path()
    subscription = WebhookSubscription(
        id=uuid.uuid4().hex,
        url=f"https://localhost:{receiver.port}{path}",
        events=("report.exported",),
        format="standard",
        secret="whsec_" + "A" * 32,
        created_at=dt.datetime.now(dt.UTC),
    )
    client = redis.Redis.from_url(pipeline.redis_url)
    stored = RedisWebhookSubscriptions(client)
    stored.add(subscription)
    try:
        event = publish_exported(pipeline)
        record = delivery_record(api, gateway, subscription.id, event["id"], lambda d: d["status"] == "failed")
        assert "localhost resolves to" in record["last_error"] and "a loopback address" in record["last_error"]
        properties, _ = dead_letter_of(pipeline, subscription.id, event["id"])
        assert "a loopback address" in properties.headers["x-hotrepos-reason"]
        assert receiver.received(path) == []
    finally:
        stored.delete(subscription.id)
        client.close()
