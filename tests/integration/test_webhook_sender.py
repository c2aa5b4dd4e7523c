"""The webhooks service's HTTP sender against a real receiver on loopback: answers, redirects, timeouts,
refused connections, and the URL guard at the moment of connecting."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from services.webhooks.handlers import WebhookRequest
from services.webhooks.sender import HttpWebhookSender
from shared.webhooks import UrlGuard
from tests.support.fakes import FakeResolver
from tests.support.metrics import sample
from tests.support.smtp import free_port
from tests.support.webhook_receiver import Answer, WebhookReceiver

LOOPBACK_ALLOWED = UrlGuard.allowing(["127.0.0.1"])


@pytest.fixture(scope="module")
def receiver() -> Iterator[WebhookReceiver]:
    started = WebhookReceiver().start()
    yield started
    started.stop()


def post(url: str, body: bytes = b'{"hello": "world"}') -> WebhookRequest:
    return WebhookRequest(url, body, {"Content-Type": "application/json", "webhook-id": "e-1"}, "standard")


def test_an_answer_is_its_status_and_the_attempt_is_counted(receiver: WebhookReceiver) -> None:
    path = receiver.new_path(Answer(201))
    counted = sample("hotrepos_webhook_deliveries_total", format="standard", outcome="2xx")
    timed = sample("hotrepos_webhook_delivery_duration_seconds_count", format="standard")

    result = HttpWebhookSender(LOOPBACK_ALLOWED, 5).send(post(receiver.url(path)))

    assert (result.outcome, result.status_code, result.error) == ("answered", 201, None)
    [got] = receiver.received(path)
    assert got.body == b'{"hello": "world"}'
    assert got.headers["webhook-id"] == "e-1" and got.headers["user-agent"].startswith("hotrepos-webhooks/")
    assert sample("hotrepos_webhook_deliveries_total", format="standard", outcome="2xx") - counted == 1
    assert sample("hotrepos_webhook_delivery_duration_seconds_count", format="standard") - timed == 1


def test_a_redirect_is_not_followed(receiver: WebhookReceiver) -> None:
    elsewhere = receiver.new_path()
    path = receiver.new_path(Answer(302, headers={"Location": receiver.url(elsewhere)}))
    result = HttpWebhookSender(LOOPBACK_ALLOWED, 5).send(post(receiver.url(path)))
    assert (result.outcome, result.status_code) == ("answered", 302)
    # send() returned: a redirect it followed would have reached the receiver by now.
    assert receiver.received(elsewhere) == []


def test_retry_after_and_a_large_answer_are_read_and_the_answer_dropped(receiver: WebhookReceiver) -> None:
    path = receiver.new_path(Answer(429, headers={"Retry-After": "7"}, body=b"x" * 5_000_000))
    result = HttpWebhookSender(LOOPBACK_ALLOWED, 5, max_answer_bytes=1024).send(post(receiver.url(path)))
    assert (result.outcome, result.status_code, result.retry_after) == ("answered", 429, 7.0)


def test_a_slow_receiver_times_out(receiver: WebhookReceiver) -> None:
    path = receiver.new_path(Answer(200, delay=2))
    counted = sample("hotrepos_webhook_deliveries_total", format="standard", outcome="timeout")
    result = HttpWebhookSender(LOOPBACK_ALLOWED, 0.5).send(post(receiver.url(path)))
    assert (result.outcome, result.error) == ("timeout", "no answer within 0.5s")
    [got] = receiver.wait_for(path, 1)
    assert got.sender_left  # the receiver's answer found nobody waiting for it
    assert sample("hotrepos_webhook_deliveries_total", format="standard", outcome="timeout") - counted == 1


def test_a_receiver_that_is_down_refuses_the_connection() -> None:
    result = HttpWebhookSender(LOOPBACK_ALLOWED, 2).send(post(f"http://127.0.0.1:{free_port()}/hook"))
    assert (result.outcome, result.error) == ("connection-error", "connection refused")


def test_loopback_is_refused_without_the_allow_list(receiver: WebhookReceiver) -> None:
    path = receiver.new_path()
    result = HttpWebhookSender(UrlGuard(), 2).send(post(receiver.url(path)))
    assert result.outcome == "refused"
    assert result.error == (
        "URL refused: 127.0.0.1 is a loopback address; "
        "only hosts listed in WEBHOOK_ALLOWED_HOSTS may be inside the network"
    )
    assert receiver.received(path) == []


def test_the_connection_goes_only_to_an_address_the_guard_accepted(receiver: WebhookReceiver) -> None:
    """A name is resolved by the guard when connecting, and the connection goes where it said."""
    dns = FakeResolver({"receiver.test": ["127.0.0.1"], "rebound.test": ["127.0.0.1"]})
    path = receiver.new_path()
    allowed = HttpWebhookSender(UrlGuard.allowing(["receiver.test"], resolve=dns), 2)
    result = allowed.send(post(f"http://receiver.test:{receiver.port}{path}"))
    assert (result.outcome, result.status_code) == ("answered", 200)
    [got] = receiver.received(path)
    assert got.headers["host"] == f"receiver.test:{receiver.port}"

    # DNS rebinding: a public-looking https name, which now resolves to loopback. The URL's own rules
    # pass (a name, https); the connection is refused before it is made.
    rebound = receiver.new_path()
    result = HttpWebhookSender(UrlGuard(resolve=dns), 2).send(post(f"https://rebound.test:{receiver.port}{rebound}"))
    assert (result.outcome, result.error) == (
        "refused",
        "URL refused: rebound.test resolves to 127.0.0.1, a loopback address; "
        "only hosts listed in WEBHOOK_ALLOWED_HOSTS may be inside the network",
    )
    assert receiver.received(rebound) == []


def test_the_url_rules_hold_at_every_delivery(receiver: WebhookReceiver) -> None:
    sender = HttpWebhookSender(UrlGuard(resolve=FakeResolver({"hooks.test": ["93.184.215.14"]})), 2)
    for url, reason in (
        ("http://hooks.test/h", "must use https"),
        ("https://me:pw@hooks.test/h", "user-info"),
        ("file:///etc/passwd", "scheme must be http or https"),
        ("https://169.254.169.254/latest/meta-data/", "link-local"),
    ):
        result = sender.send(post(url))
        assert result.outcome == "refused" and reason in (result.error or ""), (url, result)
