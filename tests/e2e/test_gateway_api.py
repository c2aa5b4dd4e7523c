"""The gateway's HTTP API against the real pipeline, RabbitMQ, Redis, the fake GitHub and an SMTP sink."""

from __future__ import annotations

import datetime as dt
import hashlib
import http.client
import json
import re
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from services.gateway.hardening import CONTENT_SECURITY_POLICY
from tests.conftest import TODAY
from tests.fake_github import FakeGitHub
from tests.support.amqp import EventListener, cloud_event, publish
from tests.support.broker import Broker
from tests.support.pipeline import ADMIN, Gateway, Pipeline
from tests.support.smtp import SmtpSink
from tests.support.tcp_proxy import TcpProxy
from tests.support.waiting import eventually

REQUESTER = "reader@example.com"
SINCE = TODAY - dt.timedelta(days=7)
SPEC = {"period": "week", "since": SINCE.isoformat(), "layout": "rows"}
CSV_HEADER = "language,full_name,stars,forks,created_at,html_url,description"


@pytest.fixture(scope="module")
def gateway(pipeline: Pipeline) -> Gateway:
    # The forced-failure endpoint is off unless asked for; this module asks, to test the 500 alert.
    return pipeline.start_gateway(env={"GATEWAY_DEBUG_FAULTS": "1"})


@pytest.fixture
def api(gateway: Gateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        yield client


@pytest.fixture
def listener(pipeline: Pipeline) -> Iterator[EventListener]:
    events = EventListener(pipeline.amqp_url, "#")
    yield events
    events.close()


def read_stream(client: httpx.Client, url: str, headers: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Every event of an SSE stream until the server ends it, as {id, event, data}."""
    events = []
    with client.stream("GET", url, headers=headers, timeout=httpx.Timeout(30, read=120)) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        for event in sse_events(response.iter_lines()):
            events.append(event)
    return events


def sse_events(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    fields: dict[str, Any] = {}
    for line in lines:
        if not line:
            if "data" in fields:
                yield {**fields, "data": json.loads(fields["data"])}
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")


def wait_for_state(client: httpx.Client, report_id: str, *states: str, timeout: float = 90) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def reached() -> bool:
        response = client.get(f"/api/reports/{report_id}")
        seen["status"] = response.json() if response.status_code == 200 else response.status_code
        return response.status_code == 200 and seen["status"]["state"] in states

    try:
        eventually(reached, timeout=timeout, message=f"report {report_id} in {states}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last seen: {seen.get('status')}") from None
    return dict(seen["status"])


def publish_exported(pipeline: Pipeline, report_id: str, path: str) -> None:
    data = {
        "report_id": report_id,
        "path": path,
        "rows": 1,
        "sha256": "c" * 64,
        "layout": "rows",
        "spec": SPEC,
        "repositories": 1,
        "top_languages": [],
    }
    publish(pipeline.amqp_url, "report.exported", cloud_event("report.exported", data, correlationid=report_id))


def test_a_report_goes_from_post_through_its_stages_to_the_download(
    api: httpx.Client, listener: EventListener, module_smtp_sink: SmtpSink
) -> None:
    response = api.post(
        "/api/reports",
        json={"period": "week", "notify": REQUESTER},
        headers={"Accept-Language": "de-CH;q=0.8, fr;q=0.9, *;q=0.1"},
    )

    assert response.status_code == 202, response.text
    accepted = response.json()
    report_id = accepted["report_id"]
    assert re.fullmatch(r"[0-9a-f]{32}", report_id)
    assert accepted == {
        "report_id": report_id,
        "status_url": f"/api/reports/{report_id}",
        "events_url": f"/api/reports/{report_id}/events",
    }
    assert response.headers["location"] == accepted["status_url"]

    # One gateway consumes here, so the stream is exactly one step per stage and per page.
    steps = read_stream(api, accepted["events_url"])
    assert [(s["event"], s["data"]["state"], s["data"]["pages_fetched"]) for s in steps] == [
        ("progress", "requested", 0),
        *[("progress", "fetching", page) for page in range(1, 6)],
        ("progress", "aggregated", 5),
        ("progress", "exported", 5),
    ]
    assert [s["id"] for s in steps] == [str(n) for n in range(1, 9)]
    assert steps[-1]["data"]["download_url"] == f"/api/reports/{report_id}/download"

    requested = listener.wait_for(lambda e: e["type"] == "report.requested" and e["data"].get("report_id") == report_id)
    assert (requested["correlationid"], requested["locale"], requested["source"]) == (
        report_id,
        "fr",
        "hotrepos/gateway",
    )
    assert requested["data"] == {
        "report_id": report_id,
        "period": "week",
        "ref_date": None,
        "notify": REQUESTER,
        "layout": "rows",
        "priority": "interactive",
    }
    exported = listener.wait_for_outcome(report_id)["data"]

    status = api.get(accepted["status_url"]).json()
    assert status["state"] == "exported" and status["failure"] is None
    assert (status["period"], status["since"], status["locale"]) == ("week", SINCE.isoformat(), "fr")
    assert (status["pages_fetched"], status["pages"]) == (5, 5)
    assert (status["rows"], status["sha256"], status["repositories"]) == (
        exported["rows"],
        exported["sha256"],
        exported["repositories"],
    )
    assert sum(language["count"] for language in status["languages"]) == status["repositories"] > 0

    download = api.get(status["download_url"])
    assert download.status_code == 200
    assert download.headers["content-type"] == "text/csv; charset=utf-8"
    file_name = exported["path"].rsplit("/", 1)[-1]
    assert download.headers["content-disposition"] == f'attachment; filename="{file_name}"'
    assert hashlib.sha256(download.content).hexdigest() == status["sha256"]
    assert download.text.split("\r\n", 1)[0] == CSV_HEADER

    mail = module_smtp_sink.wait_for(lambda m: report_id in m.get_content(), 30)[0]
    assert str(mail["Subject"]).startswith("Votre rapport hotrepos hebdomadaire est prêt")

    # A client that reconnects with Last-Event-ID gets only what it missed, and none once it is over.
    rest = read_stream(api, accepted["events_url"], headers={"Last-Event-ID": "6"})
    assert [s["data"]["state"] for s in rest] == ["aggregated", "exported"]
    assert api.get(accepted["events_url"], headers={"Last-Event-ID": "8"}).status_code == 204


def test_every_replica_streams_progress_as_it_happens_and_agrees_after_a_restart(
    pipeline: Pipeline, api: httpx.Client
) -> None:
    report_id = f"live-{uuid.uuid4().hex[:12]}"

    def publish_page(page: int) -> None:
        data = {"report_id": report_id, "page": page, "pages": 5, "spec": SPEC, "items": []}
        publish(
            pipeline.amqp_url, "report.page.fetched", cloud_event("report.page.fetched", data, correlationid=report_id)
        )

    replica = pipeline.start_gateway("gateway-b")
    try:
        publish_page(1)
        wait_for_state(api, report_id, "fetching")
        with (
            httpx.Client(base_url=replica.url, timeout=30) as other,
            other.stream("GET", f"/api/reports/{report_id}/events", timeout=httpx.Timeout(30, read=60)) as response,
        ):
            events = sse_events(response.iter_lines())
            assert next(events)["data"]["pages_fetched"] == 1
            # Each page is published only once the previous one has come out of the stream: the
            # stream follows the report live, whichever replica's consumer took the event.
            for page in range(2, 6):
                publish_page(page)
                step = next(events)["data"]
                assert (step["state"], step["pages_fetched"]) == ("fetching", page)
            # The real aggregator and exporter take it from there.
            assert [next(events)["data"]["state"] for _ in range(2)] == ["aggregated", "exported"]
            assert list(events) == []  # the server ends the stream once the report is over

            assert other.get(f"/api/reports/{report_id}").json() == wait_for_state(api, report_id, "exported")
        replica.process.stop()
        restarted = pipeline.start_gateway("gateway-b")
        try:
            assert (
                httpx.get(f"{restarted.url}/api/reports/{report_id}").json()
                == api.get(f"/api/reports/{report_id}").json()
            )
        finally:
            restarted.process.stop()
    finally:
        replica.process.stop()


def test_a_retried_post_with_the_same_idempotency_key_is_the_same_report(
    pipeline: Pipeline, api: httpx.Client, listener: EventListener
) -> None:
    key = str(uuid.uuid4())
    first = api.post("/api/reports", json={"period": "day"}, headers={"Idempotency-Key": key})
    retried = api.post("/api/reports", json={"period": "day"}, headers={"Idempotency-Key": key})
    # Another order: the very same one, still in flight, would be that report again, whatever its key.
    other = api.post(
        "/api/reports", json={"period": "day", "layout": "by-language"}, headers={"Idempotency-Key": str(uuid.uuid4())}
    )
    reused = api.post("/api/reports", json={"period": "month"}, headers={"Idempotency-Key": key})

    assert first.status_code == retried.status_code == other.status_code == 202
    assert retried.json() == first.json()
    report_id = first.json()["report_id"]
    assert other.json()["report_id"] != report_id
    assert reused.status_code == 422
    assert reused.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]

    listener.catch_up()
    assert len(listener.of("report.requested", report_id)) == 1
    assert len(listener.of("report.requested", other.json()["report_id"])) == 1
    assert len(listener.of("report.requested")) == 2
    history = api.get("/api/reports", params={"limit": 10}).json()["items"]
    assert [item["report_id"] for item in history].count(report_id) == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"period": "year"}, "period"),
        ({}, "period"),
        ({"period": "week", "ref_date": "2026-02-30"}, "ref_date"),
        ({"period": "week", "ref_date": "22/11/2026"}, "ref_date"),
        ({"period": "week", "ref_date": 0}, "ref_date"),
        ({"period": "week", "ref_date": "2026-11-20T10:00:00"}, "ref_date"),
        ({"period": "week", "ref_date": (TODAY + dt.timedelta(days=1)).isoformat()}, "ref_date"),
        ({"period": "week", "notify": "not-an-address"}, "notify"),
        ({"period": "week", "notify": "a@b@example.com"}, "notify"),
        ({"period": "week", "layout": "pie-chart"}, "layout"),
        ({"period": "week", "locale": "fr_FR<script>"}, "locale"),
        ({"period": "week", "report_id": "mine"}, "report_id"),
    ],
)
def test_invalid_input_is_a_422_naming_the_field_and_publishes_nothing(
    pipeline: Pipeline, api: httpx.Client, listener: EventListener, body: dict[str, Any], field: str
) -> None:
    response = api.post("/api/reports", json=body)

    assert response.status_code == 422, response.text
    errors = response.json()["detail"]
    assert [error["loc"] for error in errors] == [["body", field]]
    assert errors[0]["msg"]
    listener.catch_up()
    assert listener.of("report.requested") == []


def test_other_client_errors(pipeline: Pipeline, api: httpx.Client, listener: EventListener) -> None:
    not_json = api.post("/api/reports", content=b"{period: week", headers={"Content-Type": "application/json"})
    assert not_json.status_code == 422 and not_json.json()["detail"][0]["type"] == "json_invalid"
    long_key = api.post("/api/reports", json={"period": "day"}, headers={"Idempotency-Key": "k" * 300})
    assert long_key.status_code == 422 and long_key.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]
    for bad in ({"limit": 0}, {"limit": 101}, {"offset": -1}, {"limit": "ten"}):
        assert api.get("/api/reports", params=bad).status_code == 422, bad
    for path in ("/api/reports/{}", "/api/reports/{}/events", "/api/reports/{}/download"):
        for report_id in ("no-such-report", "..", "bad%20id"):
            response = api.get(path.format(report_id))
            assert response.status_code == 404, (path, report_id)
    listener.catch_up()
    assert listener.of("report.requested") == []


def test_no_download_ever_leaves_the_reports_directory(pipeline: Pipeline, gateway: Gateway, api: httpx.Client) -> None:
    target = urlsplit(gateway.url)
    for raw_path in (
        "/api/reports/../../../../etc/passwd/download",
        "/api/reports/..%2F..%2F..%2F..%2Fetc%2Fpasswd/download",
        "/api/reports/%2e%2e/download",
        "/api/reports/%2Fetc%2Fpasswd/download",
        "/api/reports/..%5C..%5Cetc%5Cpasswd/download",
        "/api/reports/x%00/download",
    ):
        connection = http.client.HTTPConnection(target.hostname or "", target.port)
        connection.request("GET", raw_path)  # sent as written: no client-side normalisation
        response = connection.getresponse()
        body = response.read()
        connection.close()
        assert response.status == 404 and b"root:" not in body, raw_path

    # Events are input too: a report.exported may name any path. Only REPORTS_DIR's own files count.
    pipeline.reports_dir.mkdir(parents=True, exist_ok=True)
    outside = pipeline.root / "secret.csv"
    outside.write_text("top secret\r\n")
    (pipeline.reports_dir / "link-out.csv").symlink_to(outside)
    (pipeline.reports_dir / "fine.csv").write_text("language\r\n")
    paths = [
        "/etc/passwd",
        f"{pipeline.reports_dir}/../secret.csv",
        f"{pipeline.reports_dir}/link-out.csv",
        f"{pipeline.reports_dir}/..",
        f"/elsewhere/{pipeline.reports_dir.name}/fine.csv",
    ]
    cases = {f"{'control' if path.endswith('fine.csv') else 'poison'}-{uuid.uuid4().hex[:8]}": path for path in paths}
    for report_id, path in cases.items():
        publish_exported(pipeline, report_id, path)
    for report_id in cases:
        download_url = wait_for_state(api, report_id, "exported")["download_url"]
        response = api.get(download_url)
        if report_id.startswith("control-"):
            assert response.status_code == 200 and response.text == "language\r\n"
        else:
            assert response.status_code == 404, cases[report_id]
            assert "top secret" not in response.text and "root:" not in response.text


def test_an_unhandled_error_is_a_500_and_an_email_to_the_admins(api: httpx.Client, module_smtp_sink: SmtpSink) -> None:
    response = api.get("/api/_debug/fail")

    assert response.status_code == 500
    assert response.json() == {"detail": "internal server error; the admins were told"}
    mail = module_smtp_sink.wait_for(
        lambda m: ADMIN in str(m["To"]) and "forced failure from /api/_debug/fail" in m.get_content(), 60
    )[0]
    assert str(mail["Subject"]).strip().startswith("[hotrepos] ERROR in gateway: request.crashed")
    assert "GET" in mail.get_content() and "RuntimeError" in mail.get_content()


def test_while_the_broker_is_away_a_request_gets_503_then_its_retry_goes_through(
    pipeline: Pipeline, broker: Broker, listener: EventListener
) -> None:
    proxy = TcpProxy(broker.host, broker.port).start()
    proxied_url = Broker("127.0.0.1", proxy.port, broker.user, broker.password, "").amqp_url(pipeline.vhost)
    replica = pipeline.start_gateway("gateway-proxied", env={"AMQP_URL": proxied_url})
    try:
        with httpx.Client(base_url=replica.url, timeout=30) as client:
            proxy.cut()
            eventually(lambda: client.get("/readyz").status_code == 503, timeout=60, message="/readyz unready")
            unready = client.get("/readyz")
            assert unready.headers["retry-after"] == "5"
            assert unready.json()["checks"]["broker"] != "ok" and unready.json()["checks"]["redis"] == "ok"
            assert client.get("/healthz").status_code == 200

            key = str(uuid.uuid4())
            refused = client.post("/api/reports", json={"period": "day"}, headers={"Idempotency-Key": key})
            assert refused.status_code == 503, refused.text
            assert refused.headers["retry-after"] == "5"

            proxy.restore()
            eventually(replica.ready, timeout=60, message="/readyz ready again")
            accepted = client.post("/api/reports", json={"period": "day"}, headers={"Idempotency-Key": key})
            assert accepted.status_code == 202, accepted.text
            report_id = accepted.json()["report_id"]
            assert listener.wait_for_outcome(report_id)["type"] == "report.exported"
            listener.catch_up()
            assert len(listener.of("report.requested", report_id)) == 1
            assert len(listener.of("report.requested")) == 1
    finally:
        replica.process.stop()
        proxy.stop()


def test_the_history_is_newest_first_and_paginated(api: httpx.Client) -> None:
    ids = [api.post("/api/reports", json={"period": period}).json()["report_id"] for period in ("day", "week", "month")]

    newest = api.get("/api/reports", params={"limit": 3}).json()
    assert [item["report_id"] for item in newest["items"]] == ids[::-1]
    assert [item["period"] for item in newest["items"]] == ["month", "week", "day"]
    first = api.get("/api/reports", params={"limit": 2}).json()
    second = api.get("/api/reports", params={"limit": 2, "offset": first["next_offset"]}).json()
    assert first["next_offset"] == 2 and first["total"] == second["total"] >= 3
    assert [item["report_id"] for item in first["items"] + second["items"]][:3] == ids[::-1]


def test_health_the_page_and_the_api_docs(api: httpx.Client) -> None:
    assert api.get("/healthz").json() == {"status": "ok"}
    ready = api.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"broker": "ok", "redis": "ok", "projection": "ok"}
    page = api.get("/")
    assert page.status_code == 200 and 'id="generate"' in page.text
    assert api.get("/docs").status_code == 200
    paths = api.get("/openapi.json").json()["paths"]
    assert {
        "/api/reports",
        "/api/reports/{report_id}",
        "/api/reports/{report_id}/events",
        "/api/reports/{report_id}/download",
        "/healthz",
        "/readyz",
    } <= set(paths)


def test_delete_cancels_a_report_in_flight(api: httpx.Client, fake_github: FakeGitHub, pipeline: Pipeline) -> None:
    control = EventListener(pipeline.amqp_url, "", exchange="hotrepos.control")
    assert api.delete("/api/reports/no-such-report").status_code == 404
    fake_github.add_fault("retry_after", page=5, times=None, seconds=30)
    # A day of its own: a week of today that another test left in flight would be joined, not started.
    order = {"period": "week", "ref_date": (TODAY - dt.timedelta(days=3)).isoformat()}
    report_id = api.post("/api/reports", json=order).json()["report_id"]
    wait_for_state(api, report_id, "fetching")

    cancelled = api.delete(f"/api/reports/{report_id}")
    assert cancelled.status_code == 202, cancelled.text
    status = wait_for_state(api, report_id, "failed", "exported")
    assert status["state"] == "failed" and status["failure"]["stage"] == "cancelled"
    assert api.delete(f"/api/reports/{report_id}").status_code == 409
    command = control.wait_for(lambda e: e.get("type") == "report.cancel.requested", 10)
    assert command["data"]["report_id"] == report_id and command["source"] == "hotrepos/gateway"
    control.close()


def test_a_body_over_the_cap_is_a_413_on_the_wire_declared_or_streamed(
    api: httpx.Client, listener: EventListener
) -> None:
    declared = api.post(
        "/api/reports", content=b'{"period": "day"}' + b" " * 64 * 1024, headers={"Content-Type": "application/json"}
    )
    assert declared.status_code == 413 and declared.json()["limit_bytes"] == 64 * 1024

    def chunks() -> Iterator[bytes]:
        yield b'{"period": "day"'
        for _ in range(40):
            yield b" " * 4096
        yield b"}"

    streamed = api.post("/api/reports", content=chunks(), headers={"Content-Type": "application/json"})
    assert streamed.status_code == 413 and streamed.json()["limit_bytes"] == 64 * 1024
    for refused in (declared, streamed):
        assert refused.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    # The server drops the rest of a refused body, so the connection serves the next request.
    assert api.get("/healthz").status_code == 200
    listener.catch_up()
    assert listener.of("report.requested") == []


def test_the_security_headers_reach_the_client_through_the_server(api: httpx.Client) -> None:
    for path in ("/", "/docs", "/static/app.js", "/api/reports", "/api/reports/nope", "/openapi.json"):
        response = api.get(path)
        assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY, path
        assert response.headers["x-content-type-options"] == "nosniff", path
        assert response.headers["referrer-policy"] == "no-referrer", path
    assert "access-control-allow-origin" not in api.get("/api/reports", headers={"Origin": "https://x.example"}).headers
