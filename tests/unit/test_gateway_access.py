"""Who may ask, see and cancel, and how often: the gateway's routes in TestClient over in-memory fakes."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from structlog.testing import capture_logs

from services.gateway.__main__ import GatewaySettings
from services.gateway.access import Authentication, Identity, StreamTokens, is_loopback
from services.gateway.feed import Wakeup
from services.gateway.hardening import CONTENT_SECURITY_POLICY
from services.gateway.routes import create_app
from services.gateway.webhooks import WebhookAdmin
from shared.api_tokens import ApiToken
from shared.events import ReportRequested
from shared.settings import load_settings
from shared.webhooks import UrlGuard
from tests.support.fakes import (
    FakeResolver,
    InMemoryApiTokens,
    InMemoryDeliveryRecords,
    InMemoryWebhookSubscriptions,
    RecordingPublisher,
    meta_of,
)
from tests.unit.test_gateway_app import DownPublisher, Gateway, TestClient, fold_lifecycle, gateway_over

CREATED = dt.datetime(2026, 11, 22, tzinfo=dt.UTC)
TOKENS = InMemoryApiTokens(
    alice=ApiToken(name="alice", created_at=CREATED),
    bob=ApiToken(name="bob", created_at=CREATED),
    root=ApiToken(name="root", admin=True, created_at=CREATED),
    gone=ApiToken(name="gone", created_at=CREATED, revoked_at=CREATED),
)
BY_TOKEN = Authentication(mode="token", tokens=TOKENS)
PROXY = ipaddress.ip_network("10.0.0.5/32")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class Refusing:
    """A quota already spent: the next place frees up in 42 s."""

    def take(self, identity: str, request_id: str) -> float | None:
        return 42.0

    def give_back(self, identity: str, request_id: str) -> None:
        raise AssertionError("nothing was taken")


class Counting:
    """A quota that keeps the requests it counts."""

    def __init__(self) -> None:
        self.taken: set[tuple[str, str]] = set()

    def take(self, identity: str, request_id: str) -> float | None:
        self.taken.add((identity, request_id))
        return None

    def give_back(self, identity: str, request_id: str) -> None:
        self.taken.discard((identity, request_id))


def client_over(gateway: Gateway, client: tuple[str, int] = ("testclient", 50000), **changes: Any) -> TestClient:
    return TestClient(create_app(replace(gateway.deps, **changes)), client=client)


@pytest.fixture
def gateway(tmp_path: Path) -> Gateway:
    return gateway_over(tmp_path)


@pytest.fixture
def api(gateway: Gateway) -> Iterator[TestClient]:
    with client_over(gateway, authentication=BY_TOKEN) as client:
        yield client


def order_as(api: TestClient, token: str, **order: object) -> str:
    answer = api.post("/api/reports", json={"period": "week", **order}, headers=bearer(token))
    assert answer.status_code == 202, answer.text
    return str(answer.json()["report_id"])


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "no bearer token"),
        (bearer("hr_not-a-token"), "unknown token"),
        (bearer("gone"), "revoked token"),
        ({"Authorization": "Basic YWxpY2U6eA=="}, "no bearer token"),
    ],
)
def test_no_token_a_wrong_one_or_a_revoked_one_is_a_401_logged_without_the_token(
    api: TestClient, headers: dict[str, str], reason: str
) -> None:
    with capture_logs() as logs:
        answers = [
            api.get("/api/reports", headers=headers),
            api.post("/api/reports", json={"period": "week"}, headers=headers),
            api.get("/api/reports/abc", headers=headers),
            api.get("/api/webhooks", headers=headers),
        ]
    assert [a.status_code for a in answers] == [401] * 4
    assert all(a.headers["WWW-Authenticate"] == "Bearer" for a in answers)
    assert all(a.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY for a in answers)
    refusals = [entry for entry in logs if entry["event"] == "request.refused"]
    assert [entry["reason"] for entry in refusals] == [reason] * 4
    assert all(entry["log_level"] == "warning" and entry["status"] == 401 for entry in refusals)
    assert "hr_not-a-token" not in repr(logs) and "YWxpY2U6eA" not in repr(logs)
    if reason == "revoked token":
        assert {entry["identity"] for entry in refusals} == {"gone"}


def test_the_page_health_and_docs_need_no_token(api: TestClient) -> None:
    assert api.get("/").status_code == 200
    assert api.get("/healthz").status_code == 200
    assert api.get("/docs").status_code == 200
    # /docs offers to send a token: Swagger UI's "Authorize" takes it from the security scheme.
    schemes = api.get("/openapi.json").json()["components"]["securitySchemes"]
    assert (schemes["HTTPBearer"]["type"], schemes["HTTPBearer"]["scheme"]) == ("http", "bearer")


class RevokedOnceUsed:
    """erin's token, valid when the stream opens and revoked right after."""

    def __init__(self) -> None:
        self.lookups = 0

    async def lookup_digest(self, digest: str) -> ApiToken | None:
        self.lookups += 1
        return ApiToken(name="erin", created_at=CREATED, revoked_at=CREATED if self.lookups > 1 else None)


def test_an_open_stream_ends_within_a_second_or_two_once_its_token_is_revoked(gateway: Gateway) -> None:
    tokens = RevokedOnceUsed()
    report_id = "still-running"
    data = ReportRequested(report_id=report_id, period="day")
    gateway.statuses.apply(data, meta_of(data))
    gateway.statuses.record_owner(report_id, "erin", CREATED)
    started = time.monotonic()
    with client_over(gateway, authentication=Authentication(mode="token", tokens=tokens)) as api:
        # The report never finishes: only the revocation ends its stream.
        streamed = api.get(f"/api/reports/{report_id}/events", headers=bearer("erin"))
    assert streamed.status_code == 200
    assert '"state": "requested"' in streamed.text
    assert 1 <= time.monotonic() - started < 5
    assert tokens.lookups >= 2


def test_a_report_is_its_owners_and_an_admins_and_nobody_elses(api: TestClient, gateway: Gateway) -> None:
    report_id = order_as(api, "alice")
    fold_lifecycle(gateway, report_id)
    (gateway.deps.reports_dir / "hot.csv").write_text("language,full_name\r\n")
    urls = [f"/api/reports/{report_id}", f"/api/reports/{report_id}/events", f"/api/reports/{report_id}/download"]

    for url in urls:
        assert api.get(url, headers=bearer("alice")).status_code == 200, url
        assert api.get(url, headers=bearer("root")).status_code == 200, url
        with capture_logs() as logs:
            hidden = api.get(url, headers=bearer("bob"))
        unknown = api.get(url.replace(report_id, "f" * 32), headers=bearer("root"))
        # Word for word what an id no report has gets: nothing tells that this one exists.
        assert (hidden.status_code, unknown.status_code) == (404, 404), url
        assert hidden.json()["detail"] == unknown.json()["detail"].replace("f" * 32, report_id)
        [refusal] = [entry for entry in logs if entry["event"] == "request.refused"]
        assert (refusal["identity"], refusal["reason"], refusal["report_id"]) == (
            "bob",
            "another identity's report",
            report_id,
        )
    assert api.delete(f"/api/reports/{report_id}", headers=bearer("bob")).status_code == 404


def test_only_the_owner_or_an_admin_cancels(api: TestClient, gateway: Gateway) -> None:
    mine, theirs = order_as(api, "alice"), order_as(api, "bob")
    assert api.delete(f"/api/reports/{theirs}", headers=bearer("alice")).status_code == 404
    assert api.delete(f"/api/reports/{mine}", headers=bearer("alice")).status_code == 202
    assert api.delete(f"/api/reports/{theirs}", headers=bearer("root")).status_code == 202
    cancelled = [e.data["report_id"] for e in gateway.publisher.events if e.type == "report.cancel.requested"]
    assert cancelled == [mine, theirs]


def scheduled_report(gateway: Gateway, report_id: str = "scheduled-day-2026-11-22") -> str:
    data = ReportRequested(report_id=report_id, period="day", priority="scheduled")
    gateway.statuses.apply(data, meta_of(data))
    return report_id


def test_the_history_lists_ones_own_and_the_scheduled_reports_and_an_admin_sees_all(
    api: TestClient, gateway: Gateway
) -> None:
    alices = order_as(api, "alice")
    bobs = order_as(api, "bob")
    scheduled = scheduled_report(gateway)

    def history(token: str) -> set[str]:
        page = api.get("/api/reports", headers=bearer(token)).json()
        assert page["total"] == len(page["items"])
        return {item["report_id"] for item in page["items"]}

    assert history("alice") == {alices, scheduled}
    assert history("bob") == {bobs, scheduled}
    assert history("root") == {alices, bobs, scheduled}


def test_a_scheduled_report_is_everyones_to_see_and_an_admins_to_cancel(api: TestClient, gateway: Gateway) -> None:
    scheduled = scheduled_report(gateway)
    assert api.get(f"/api/reports/{scheduled}", headers=bearer("alice")).status_code == 200
    assert api.delete(f"/api/reports/{scheduled}", headers=bearer("alice")).status_code == 403
    assert api.delete(f"/api/reports/{scheduled}", headers=bearer("root")).status_code == 202


def test_a_report_another_client_asked_for_over_the_broker_is_for_admins_only(
    api: TestClient, gateway: Gateway
) -> None:
    data = ReportRequested(report_id="from-the-cli", period="day")
    gateway.statuses.apply(data, meta_of(data))
    assert api.get("/api/reports/from-the-cli", headers=bearer("alice")).status_code == 404
    assert api.get("/api/reports/from-the-cli", headers=bearer("root")).status_code == 200


def test_an_identical_order_in_flight_is_that_report_and_once_it_is_over_a_new_one(
    api: TestClient, gateway: Gateway
) -> None:
    first = order_as(api, "alice", layout="by-language")
    assert order_as(api, "alice", layout="by-language") == first
    assert order_as(api, "alice", layout="by-language", ref_date="2026-11-22") == first  # today, spelt out
    assert order_as(api, "alice", layout="rows") != first
    assert order_as(api, "bob", layout="by-language") != first
    keyed = {**bearer("alice"), "Idempotency-Key": "k-1"}
    order = {"period": "week", "layout": "by-language"}
    assert api.post("/api/reports", json=order, headers=keyed).json()["report_id"] == first
    fold_lifecycle(gateway, first)
    # The key stands for the report it joined: its retry finds that one, finished or not.
    assert api.post("/api/reports", json=order, headers=keyed).json()["report_id"] == first
    assert order_as(api, "alice", layout="by-language") != first
    assert gateway.publisher.types().count("report.requested") == 4


def test_past_the_quota_a_request_gets_429_with_retry_after_and_is_logged(gateway: Gateway) -> None:
    with client_over(gateway, authentication=BY_TOKEN, quota=Refusing()) as api, capture_logs() as logs:
        answer = api.post("/api/reports", json={"period": "week"}, headers=bearer("alice"))
    assert answer.status_code == 429
    assert answer.headers["Retry-After"] == "42"
    assert gateway.publisher.events == []
    [refusal] = [entry for entry in logs if entry["event"] == "request.refused"]
    assert (refusal["status"], refusal["identity"], refusal["reason"]) == (429, "alice", "quota")


def test_a_request_the_broker_did_not_take_counts_nothing_and_its_retry_counts_once(tmp_path: Path) -> None:
    quota = Counting()
    down = gateway_over(tmp_path, publisher=DownPublisher())
    with client_over(down, authentication=BY_TOKEN, quota=quota) as api:
        keyed = {**bearer("alice"), "Idempotency-Key": "k-2"}
        assert api.post("/api/reports", json={"period": "day"}, headers=keyed).status_code == 503
        assert quota.taken == set()
    up = replace(down.deps, publisher=RecordingPublisher())
    with TestClient(create_app(replace(up, authentication=BY_TOKEN, quota=quota))) as api:
        report_id = api.post("/api/reports", json={"period": "day"}, headers=keyed).json()["report_id"]
    assert quota.taken == {("alice", report_id)}


def test_a_proxy_is_believed_only_from_a_trusted_address(gateway: Gateway) -> None:
    auth = Authentication(mode="proxy", trusted_proxies=(PROXY,))
    headers = {"X-Forwarded-User": "carol", "X-Forwarded-Email": "carol@example.com"}
    with client_over(gateway, client=("10.0.0.9", 1234), authentication=auth) as outsider, capture_logs() as logs:
        assert outsider.get("/api/reports", headers=headers).status_code == 401
        assert outsider.post("/api/reports", json={"period": "day"}, headers=headers).status_code == 401
    assert {entry["reason"] for entry in logs if entry["event"] == "request.refused"} == {
        "X-Forwarded-User ignored from an untrusted address"
    }
    with client_over(gateway, client=("10.0.0.5", 1234), authentication=auth) as proxied:
        assert proxied.get("/api/reports").status_code == 401  # the proxy itself sent no identity
        report_id = proxied.post("/api/reports", json={"period": "day"}, headers=headers).json()["report_id"]
        assert proxied.get(f"/api/reports/{report_id}", headers=headers).status_code == 200
        other = {"X-Forwarded-User": "dave"}
        assert proxied.get(f"/api/reports/{report_id}", headers=other).status_code == 404
    [requested] = gateway.publisher.events
    assert requested.data["notify"] == "carol@example.com"  # the proxy's email, as the order named none
    assert gateway.statuses.owners[report_id] == "carol"


def test_webhook_subscriptions_are_their_creators(tmp_path: Path) -> None:
    webhooks = WebhookAdmin(
        InMemoryWebhookSubscriptions(), InMemoryDeliveryRecords(), UrlGuard.allowing(["127.0.0.1"], FakeResolver())
    )
    gateway = gateway_over(tmp_path, webhooks=webhooks)
    with client_over(gateway, authentication=BY_TOKEN) as api:
        created = api.post("/api/webhooks", json={"url": "http://127.0.0.1:9/hook"}, headers=bearer("alice"))
        assert created.status_code == 201, created.text
        [subscription] = webhooks.subscriptions.all()
        assert subscription.owner == "alice"
        assert [w["id"] for w in api.get("/api/webhooks", headers=bearer("alice")).json()] == [subscription.id]
        assert api.get("/api/webhooks", headers=bearer("bob")).json() == []
        assert len(api.get("/api/webhooks", headers=bearer("root")).json()) == 1
        url = f"/api/webhooks/{subscription.id}"
        assert api.get(f"{url}/deliveries", headers=bearer("bob")).status_code == 404
        assert api.delete(url, headers=bearer("bob")).status_code == 404
        assert api.get(f"{url}/deliveries", headers=bearer("alice")).status_code == 200
        assert api.delete(url, headers=bearer("alice")).status_code == 204


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "gateway.example.com"])
def test_none_is_refused_unless_the_gateway_listens_on_loopback(
    host: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ValidationError, match="allowed only on a loopback address"):
        GatewaySettings(gateway_auth="none", gateway_host=host)
    monkeypatch.setenv("GATEWAY_AUTH", "none")
    monkeypatch.setenv("GATEWAY_HOST", host)
    with pytest.raises(SystemExit) as stopped:
        load_settings(GatewaySettings)
    assert stopped.value.code == 2
    assert capsys.readouterr().err.startswith("hotrepos: invalid setting GATEWAY_AUTH: ")


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"])
def test_none_is_allowed_on_loopback(host: str) -> None:
    assert is_loopback(host)
    assert GatewaySettings(gateway_auth="none", gateway_host=host).gateway_auth == "none"


def test_token_is_the_default_and_proxies_are_listed_as_networks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_HOST", "0.0.0.0")
    monkeypatch.setenv("GATEWAY_TRUSTED_PROXIES", "10.0.0.5, 172.18.0.0/16")
    settings = GatewaySettings()
    assert settings.gateway_auth == "token"
    assert settings.gateway_trusted_proxies == [PROXY, ipaddress.ip_network("172.18.0.0/16")]


def test_the_streams_of_one_token_cost_the_store_one_read_a_second_and_all_end_on_revocation() -> None:
    tokens = RevokedOnceUsed()
    streams = StreamTokens(Authentication(mode="token", tokens=tokens), every_seconds=0.05)
    erin = Identity(name="erin", admin=False, token_digest="erin-digest")

    async def follow() -> tuple[list[bool], list[bool]]:
        wakeups = [Wakeup() for _ in range(1000)]
        with contextlib.ExitStack() as open_streams:
            watches = [open_streams.enter_context(streams.watching(erin, wakeup)) for wakeup in wakeups]
            woken = await asyncio.gather(*(wakeup.changed(timeout=5) for wakeup in wakeups))
            return list(woken), [watch.revoked for watch in watches]

    woken, revoked = asyncio.run(follow())
    # The first check finds the token valid, the second revoked: two reads for a thousand streams.
    assert all(woken) and all(revoked)
    assert tokens.lookups == 2


def test_a_stream_without_a_token_is_never_watched() -> None:
    tokens = RevokedOnceUsed()
    streams = StreamTokens(Authentication(mode="token", tokens=tokens), every_seconds=0.01)

    async def follow() -> bool:
        with streams.watching(Identity(name="anonymous", admin=True), Wakeup()) as watch:
            await asyncio.sleep(0.05)
            return watch.revoked

    assert asyncio.run(follow()) is False
    assert tokens.lookups == 0
