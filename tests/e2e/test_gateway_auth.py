"""Who may ask, see and cancel, and how often: real gateway processes over the real broker and Redis."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import TODAY
from tests.e2e.test_gateway_api import read_stream, wait_for_state
from tests.fake_github import FakeGitHub
from tests.support.pipeline import Gateway, Pipeline
from tests.support.services import ROOT
from tests.support.waiting import eventually

QUOTA = 3
UNROUTABLE = "192.0.2.1"  # TEST-NET-1: nothing answers there, so connecting would hang


@pytest.fixture(scope="module")
def replicas(pipeline: Pipeline) -> tuple[Gateway, Gateway]:
    """Two gateways with tokens and a small quota, as two replicas behind one address would be."""
    env = {"GATEWAY_AUTH": "token", "GATEWAY_REQUESTS_PER_HOUR": str(QUOTA)}
    return pipeline.start_gateway("gateway-a", env=env), pipeline.start_gateway("gateway-b", env=env)


@pytest.fixture
def clients(replicas: tuple[Gateway, Gateway]) -> Iterator[tuple[httpx.Client, httpx.Client]]:
    with (
        httpx.Client(base_url=replicas[0].url, timeout=30) as a,
        httpx.Client(base_url=replicas[1].url, timeout=30) as b,
    ):
        yield a, b


def new_name(role: str) -> str:
    return f"{role}-{uuid.uuid4().hex[:8]}"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_no_token_a_wrong_one_and_a_revoked_one_get_401_on_every_replica(
    pipeline: Pipeline, clients: tuple[httpx.Client, httpx.Client]
) -> None:
    name = new_name("reader")
    created = json.loads(pipeline.tokens("create", name, "--json").stdout)
    assert (created["name"], created["admin"]) == (name, False) and created["token"].startswith("hr_")
    token = created["token"]
    assert name in pipeline.tokens("list").stdout and token not in pipeline.tokens("list").stdout

    for client in clients:
        assert client.get("/api/reports", headers=bearer(token)).status_code == 200
        for headers in ({}, bearer("hr_" + "x" * 43), bearer(token[:-1])):
            refused = client.get("/api/reports", headers=headers)
            assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"

    pipeline.tokens("revoke", name)
    revoked_at = time.monotonic()
    eventually(
        lambda: all(c.get("/api/reports", headers=bearer(token)).status_code == 401 for c in clients),
        timeout=1,
        message="the revoked token refused by both replicas within a second",
    )
    assert time.monotonic() - revoked_at <= 1.5
    for client in clients:
        refused = client.post("/api/reports", json={"period": "day"}, headers=bearer(token))
        assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
    logs = "".join(p.output() for p in pipeline.processes if p.name.startswith("gateway-"))
    assert '"reason": "revoked token"' in logs and f'"identity": "{name}"' in logs
    assert token not in logs and token[:20] not in logs


def test_one_identity_cannot_see_download_stream_or_cancel_anothers_report_and_an_admin_can(
    pipeline: Pipeline, clients: tuple[httpx.Client, httpx.Client]
) -> None:
    a, b = clients
    alice, bob, admin = (
        pipeline.create_token(new_name("alice")),
        pipeline.create_token(new_name("bob")),
        pipeline.create_token(new_name("admin"), admin=True),
    )
    accepted = a.post("/api/reports", json={"period": "day"}, headers=bearer(alice))
    assert accepted.status_code == 202, accepted.text
    report_id = accepted.json()["report_id"]
    b.headers.update(bearer(alice))
    status = wait_for_state(b, report_id, "exported")
    urls = [status["status_url"], status["events_url"], status["download_url"]]

    unknown = f"/api/reports/{uuid.uuid4().hex}"
    for client in clients:
        for url in urls:
            hidden = client.get(url, headers=bearer(bob))
            assert hidden.status_code == 404, url
        assert client.get(status["status_url"], headers=bearer(bob)).json()["detail"] == client.get(
            unknown, headers=bearer(bob)
        ).json()["detail"].replace(unknown.rsplit("/", 1)[1], report_id)
        assert client.delete(status["status_url"], headers=bearer(bob)).status_code == 404
        bobs_history = client.get("/api/reports", params={"limit": 100}, headers=bearer(bob)).json()["items"]
        assert report_id not in [item["report_id"] for item in bobs_history]

        for token in (alice, admin):
            assert client.get(status["status_url"], headers=bearer(token)).json()["state"] == "exported"
            assert client.get(status["download_url"], headers=bearer(token)).text.startswith("language,")
            steps = read_stream(client, status["events_url"], headers=bearer(token))
            assert steps[-1]["data"]["state"] == "exported"
            history = client.get("/api/reports", params={"limit": 100}, headers=bearer(token)).json()["items"]
            assert report_id in [item["report_id"] for item in history]
        # Over already: a 409 says the admin may see it, where bob got a 404.
        assert client.delete(status["status_url"], headers=bearer(admin)).status_code == 409
    logs = "".join(p.output() for p in pipeline.processes if p.name.startswith("gateway-"))
    assert '"reason": "another identity\'s report"' in logs


def test_the_quota_is_429_with_retry_after_across_two_replicas(
    pipeline: Pipeline, clients: tuple[httpx.Client, httpx.Client]
) -> None:
    token = pipeline.create_token(new_name("busy"))
    # Distinct orders, so that none joins another still in flight; the replicas take turns.
    answers = [
        clients[n % 2].post(
            "/api/reports",
            json={"period": "day", "ref_date": (TODAY - dt.timedelta(days=n)).isoformat()},
            headers=bearer(token),
        )
        for n in range(QUOTA + 2)
    ]
    assert [answer.status_code for answer in answers] == [202] * QUOTA + [429, 429]
    for refused in answers[QUOTA:]:
        assert 0 < int(refused.headers["retry-after"]) <= 3600
    # Another identity has a quota of its own.
    other = pipeline.create_token(new_name("calm"))
    assert clients[1].post("/api/reports", json={"period": "day"}, headers=bearer(other)).status_code == 202
    logs = "".join(p.output() for p in pipeline.processes if p.name.startswith("gateway-"))
    assert '"reason": "quota"' in logs


def test_the_proxy_header_is_ignored_from_an_untrusted_address(pipeline: Pipeline) -> None:
    elsewhere = pipeline.start_gateway(
        "gateway-proxy", env={"GATEWAY_AUTH": "proxy", "GATEWAY_TRUSTED_PROXIES": "10.255.255.1"}
    )
    trusting = pipeline.start_gateway(
        "gateway-trusting", env={"GATEWAY_AUTH": "proxy", "GATEWAY_TRUSTED_PROXIES": "127.0.0.1/32"}
    )
    user = {"X-Forwarded-User": new_name("carol"), "X-Forwarded-Email": "carol@example.com"}
    try:
        assert httpx.get(f"{elsewhere.url}/api/reports", headers=user).status_code == 401
        assert httpx.post(f"{elsewhere.url}/api/reports", json={"period": "day"}, headers=user).status_code == 401
        assert httpx.get(f"{trusting.url}/api/reports").status_code == 401
        accepted = httpx.post(f"{trusting.url}/api/reports", json={"period": "day"}, headers=user)
        assert accepted.status_code == 202, accepted.text
        report_id = accepted.json()["report_id"]
        assert httpx.get(f"{trusting.url}/api/reports/{report_id}", headers=user).status_code == 200
        assert httpx.get(f"{elsewhere.url}/api/reports/{report_id}", headers=user).status_code == 401
        assert "X-Forwarded-User ignored from an untrusted address" in elsewhere.process.output()
    finally:
        elsewhere.process.stop()
        trusting.process.stop()


def test_the_gateway_refuses_none_on_a_non_loopback_address_before_connecting_to_anything() -> None:
    env = {
        **os.environ,
        "GATEWAY_AUTH": "none",
        "GATEWAY_HOST": "0.0.0.0",
        "AMQP_URL": f"amqp://guest:guest@{UNROUTABLE}:5672/%2F",
        "REDIS_URL": f"redis://{UNROUTABLE}:6379/0",
    }
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "services.gateway"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 2, done.stderr
    assert time.monotonic() - started < 15  # it never tried the broker, which would not answer
    assert "GATEWAY_AUTH" in done.stderr and "loopback" in done.stderr and "0.0.0.0" in done.stderr


def test_an_open_stream_ends_within_a_second_or_two_once_its_token_is_revoked(
    pipeline: Pipeline, clients: tuple[httpx.Client, httpx.Client], fake_github: FakeGitHub
) -> None:
    name = new_name("watcher")
    token, admin = pipeline.create_token(name), pipeline.create_token(new_name("admin"), admin=True)
    # GitHub holds the last page off, so the report stays in flight and its stream stays open.
    fake_github.add_fault("retry_after", page=5, times=None, seconds=30)
    order = {"period": "week", "ref_date": (TODAY - dt.timedelta(days=20)).isoformat()}
    report_id = clients[0].post("/api/reports", json=order, headers=bearer(token)).json()["report_id"]
    try:
        with clients[1].stream(
            "GET", f"/api/reports/{report_id}/events", headers=bearer(token), timeout=httpx.Timeout(30, read=30)
        ) as response:
            assert response.status_code == 200
            lines = response.iter_lines()
            assert next(line for line in lines if line.startswith("data:"))
            pipeline.tokens("revoke", name)
            revoked = time.monotonic()
            for _ in lines:
                pass  # until the gateway ends the stream
            assert time.monotonic() - revoked < 3
        assert clients[0].get(f"/api/reports/{report_id}", headers=bearer(token)).status_code == 401
    finally:
        clients[0].delete(f"/api/reports/{report_id}", headers=bearer(admin))
        fake_github.reset()
