"""The gateway's webhook routes in FastAPI's TestClient over in-memory fakes."""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.gateway.webhooks import WebhookAdmin
from shared.webhooks import DeliveryRecord, UrlGuard
from tests.support.fakes import FakeResolver, InMemoryDeliveryRecords, InMemoryWebhookSubscriptions
from tests.unit.test_gateway_app import Gateway, gateway_over

NOW = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.UTC)
DNS = FakeResolver({"hooks.example.com": ["93.184.215.14"], "localhost": ["127.0.0.1"]})


class Webhooks:
    def __init__(self, tmp_path: Path) -> None:
        self.subscriptions = InMemoryWebhookSubscriptions()
        self.records = InMemoryDeliveryRecords()
        ids = iter(f"w{n}" for n in range(1, 1000))
        admin = WebhookAdmin(
            self.subscriptions,
            self.records,
            UrlGuard.allowing(["127.0.0.1"], resolve=DNS),
            new_id=lambda: next(ids),
            clock=lambda: NOW,
        )
        self.gateway: Gateway = gateway_over(tmp_path, webhooks=admin)

    def post(self, body: dict[str, Any]) -> Any:
        return self.gateway.client.post("/api/webhooks", json=body)


@pytest.fixture
def webhooks(tmp_path: Path) -> Iterator[Webhooks]:
    made = Webhooks(tmp_path)
    with made.gateway.client:
        yield made


def test_a_subscription_is_created_with_its_secret_shown_once(webhooks: Webhooks) -> None:
    answer = webhooks.post({"url": "https://hooks.example.com/ci", "description": "the CI"})
    assert answer.status_code == 201
    created = answer.json()
    assert answer.headers["Location"] == "/api/webhooks/w1"
    assert set(created) == {"id", "url", "events", "format", "description", "secret"}
    assert (created["id"], created["url"], created["format"], created["description"]) == (
        "w1",
        "https://hooks.example.com/ci",
        "standard",
        "the CI",
    )
    assert created["events"] == ["report.exported", "report.failed"]
    assert created["secret"].startswith("whsec_")
    assert len(base64.b64decode(created["secret"].removeprefix("whsec_"))) >= 24
    assert webhooks.subscriptions.get("w1").secret == created["secret"]  # type: ignore[union-attr]

    listed = webhooks.gateway.client.get("/api/webhooks").json()
    assert isinstance(listed, list) and [w["id"] for w in listed] == ["w1"]
    assert "secret" not in listed[0] and listed[0]["url"] == "https://hooks.example.com/ci"


def test_a_slack_subscription_has_no_secret_and_events_can_be_chosen(webhooks: Webhooks) -> None:
    answer = webhooks.post(
        {
            "url": "https://hooks.example.com/slack",
            "format": "slack",
            "events": ["report.failed", "report.failed"],
        }
    )
    assert answer.status_code == 201, answer.json()
    assert (answer.json()["secret"], answer.json()["events"]) == (None, ["report.failed"])


def test_a_host_on_the_allow_list_may_use_plain_http_inside(webhooks: Webhooks) -> None:
    assert webhooks.post({"url": "http://127.0.0.1:9000/hook"}).status_code == 201


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a link-local address"),
        ("http://10.0.0.1/", "10.0.0.1 is a private address"),
        ("http://[::1]/", "::1 is a loopback address"),
        ("http://localhost/", "localhost resolves to 127.0.0.1, a loopback address"),
        ("file:///etc/passwd", "scheme must be http or https, not 'file'"),
        ("gopher://hooks.example.com:70/_x", "scheme must be http or https, not 'gopher'"),
        ("https://user:password@hooks.example.com/hook", "must not carry user-info"),
        ("http://hooks.example.com/hook", "must use https"),
        ("https://hooks.example.com:99999/hook", "port must be a number from 1 to 65535"),
    ],
)
def test_a_url_that_may_not_be_called_gets_a_422_with_the_reason(webhooks: Webhooks, url: str, reason: str) -> None:
    answer = webhooks.post({"url": url})
    assert answer.status_code == 422
    [error] = answer.json()["detail"]
    assert error["loc"] == ["body", "url"]
    assert reason in error["msg"]
    assert webhooks.subscriptions.all() == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"url": "https://hooks.example.com/h", "events": ["report.requested"]}, "events"),
        ({"url": "https://hooks.example.com/h", "events": []}, "events"),
        ({"url": "https://hooks.example.com/h", "format": "teams"}, "format"),
        ({"url": "https://hooks.example.com/" + "a" * 2100}, "url"),
        ({"events": ["report.failed"]}, "url"),
        ({"url": "https://hooks.example.com/h", "secret": "mine"}, "secret"),
    ],
)
def test_a_bad_subscription_gets_a_422_that_names_the_field(
    webhooks: Webhooks, body: dict[str, Any], field: str
) -> None:
    answer = webhooks.post(body)
    assert answer.status_code == 422
    assert any(field in error["loc"] for error in answer.json()["detail"])


def test_delete_answers_204_then_404(webhooks: Webhooks) -> None:
    webhooks.post({"url": "https://hooks.example.com/a"})
    assert webhooks.gateway.client.delete("/api/webhooks/w1").status_code == 204
    gone = webhooks.gateway.client.delete("/api/webhooks/w1")
    assert gone.status_code == 404 and "w1" in gone.json()["detail"]
    assert webhooks.gateway.client.get("/api/webhooks").json() == []
    assert webhooks.gateway.client.delete("/api/webhooks/" + "x" * 300).status_code == 404


def test_deliveries_list_the_latest_first_as_a_json_array(webhooks: Webhooks) -> None:
    webhooks.post({"url": "https://hooks.example.com/a"})
    assert webhooks.gateway.client.get("/api/webhooks/w1/deliveries").json() == []
    for n, status in enumerate(("delivered", "failed", "retrying")):
        webhooks.records.save(
            "w1",
            DeliveryRecord(
                event_id=f"e{n}",
                event_type="report.exported",
                report_id=f"r{n}",
                status=status,  # type: ignore[arg-type]
                attempts=n + 1,
                last_status_code=500 if status != "delivered" else 200,
                last_error=None if status == "delivered" else "HTTP 500",
                delivered_at=NOW if status == "delivered" else None,
                updated_at=NOW,
            ),
        )
    listed = webhooks.gateway.client.get("/api/webhooks/w1/deliveries").json()
    assert [(d["event_id"], d["status"], d["attempts"]) for d in listed] == [
        ("e2", "retrying", 3),
        ("e1", "failed", 2),
        ("e0", "delivered", 1),
    ]
    assert set(listed[0]) == {
        "event_id",
        "event_type",
        "report_id",
        "status",
        "attempts",
        "last_status_code",
        "last_error",
        "delivered_at",
    }
    assert len(webhooks.gateway.client.get("/api/webhooks/w1/deliveries?limit=1").json()) == 1
    assert webhooks.gateway.client.get("/api/webhooks/w1/deliveries?limit=0").status_code == 422
    assert webhooks.gateway.client.get("/api/webhooks/nope/deliveries").status_code == 404


def test_the_webhook_routes_are_in_the_openapi_document(webhooks: Webhooks) -> None:
    paths = webhooks.gateway.client.get("/openapi.json").json()["paths"]
    assert set(paths["/api/webhooks"]) == {"get", "post"}
    assert set(paths["/api/webhooks/{webhook_id}"]) == {"delete"}
    assert "get" in paths["/api/webhooks/{webhook_id}/deliveries"]
