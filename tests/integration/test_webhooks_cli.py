"""`hotrepos webhooks` against a real HTTP server standing in for the gateway: the bearer token it
sends, and what it says when the gateway refuses or does not answer."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from hotrepos_cli.__main__ import main
from tests.support.smtp import free_port
from tests.support.webhook_receiver import Answer, WebhookReceiver


@pytest.fixture
def gateway() -> Iterator[WebhookReceiver]:
    started = WebhookReceiver().start()
    yield started
    started.stop()


def test_the_token_goes_as_a_bearer_token_and_a_refusal_says_to_set_it(
    gateway: WebhookReceiver, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    gateway.new_path(Answer(200, body=b"[]"), then=Answer(401, body=b'{"detail": "no token"}'), path="/api/webhooks")
    monkeypatch.setenv("HOTREPOS_GATEWAY_URL", f"http://127.0.0.1:{gateway.port}")
    monkeypatch.delenv("HOTREPOS_TOKEN", raising=False)

    assert main(["webhooks", "list"]) == 0
    assert capsys.readouterr().out.split() == ["ID", "FORMAT", "EVENTS", "URL", "DESCRIPTION"]
    monkeypatch.setenv("HOTREPOS_TOKEN", "s3cret-token")
    assert main(["webhooks", "list"]) == 4
    assert "set HOTREPOS_TOKEN to a token it accepts" in capsys.readouterr().err

    without, with_token = gateway.received("/api/webhooks")
    assert "authorization" not in without.headers
    assert with_token.headers["authorization"] == "Bearer s3cret-token"


def test_a_gateway_that_does_not_answer_is_named(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("HOTREPOS_GATEWAY_URL", url)
    assert main(["webhooks", "remove", "w1"]) == 3
    assert f"the gateway at {url} does not answer" in capsys.readouterr().err
