"""The gateway's guards in FastAPI's TestClient: security headers on every answer, /docs offline, the body cap, CORS."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path

import anyio
import httpx
import pytest
from starlette.types import Message, Scope
from structlog.testing import capture_logs

from services.gateway.hardening import CONTENT_SECURITY_POLICY, BodyLimit, cors_origin
from services.gateway.routes import create_app
from shared.events import ReportRequested
from tests.support.fakes import meta_of
from tests.unit.test_gateway_app import Gateway, TestClient, fold_lifecycle, gateway_over

EXPECTED_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}
APP_ORIGIN = "https://app.example.com"
URL = re.compile(r"""(?:https?:)?//[^\s"'<>)]+""", re.IGNORECASE)


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    made = gateway_over(tmp_path, debug=True)
    fold_lifecycle(made, "r-done")
    (tmp_path / "hot.csv").write_text("language,full_name\r\n")
    running = ReportRequested(report_id="r-running", period="day")
    made.statuses.apply(running, meta_of(running))
    with made.client:
        yield made


def client_with(gateway: Gateway, **changes: object) -> TestClient:
    return TestClient(create_app(replace(gateway.deps, **changes)))  # type: ignore[arg-type]


Ask = Callable[[TestClient], httpx.Response]

EVERY_KIND_OF_ANSWER: dict[str, tuple[Ask, int]] = {
    "page": (lambda c: c.get("/"), 200),
    "page script": (lambda c: c.get("/static/app.js"), 200),
    "page stylesheet": (lambda c: c.get("/static/app.css"), 200),
    "api docs": (lambda c: c.get("/docs"), 200),
    "api docs script": (lambda c: c.get("/static/docs.js"), 200),
    "swagger ui asset": (lambda c: c.get("/docs/assets/swagger-ui-bundle.js"), 200),
    "openapi document": (lambda c: c.get("/openapi.json"), 200),
    "json": (lambda c: c.get("/api/reports"), 200),
    "accepted": (lambda c: c.post("/api/reports", json={"period": "day"}), 202),
    "webhooks json": (lambda c: c.get("/api/webhooks"), 200),
    "event stream": (lambda c: c.get("/api/reports/r-done/events"), 200),
    "event stream over": (lambda c: c.get("/api/reports/r-done/events", headers={"Last-Event-ID": "4"}), 204),
    "download": (lambda c: c.get("/api/reports/r-done/download"), 200),
    "unknown report": (lambda c: c.get("/api/reports/nope"), 404),
    "unknown path": (lambda c: c.get("/nowhere"), 404),
    "unknown static file": (lambda c: c.get("/static/nowhere.js"), 404),
    "wrong method": (lambda c: c.put("/api/reports"), 405),
    "conflict": (lambda c: c.delete("/api/reports/r-done"), 409),
    "invalid": (lambda c: c.get("/api/reports", params={"limit": 0}), 422),
    "body too large": (lambda c: c.post("/api/reports", content=b" " * (64 * 1024 + 1)), 413),
    "crash": (lambda c: c.get("/api/_debug/fail"), 500),
}


@pytest.mark.parametrize("kind", EVERY_KIND_OF_ANSWER)
def test_every_kind_of_answer_carries_the_security_headers_once(gateway: Gateway, kind: str) -> None:
    ask, status = EVERY_KIND_OF_ANSWER[kind]
    answer = ask(gateway.client)
    assert answer.status_code == status, answer.text[:200]
    for name, value in EXPECTED_HEADERS.items():
        assert answer.headers.get_list(name) == [value], name


def test_a_running_reports_stream_carries_them_from_its_first_byte(gateway: Gateway) -> None:
    with gateway.client.stream("GET", "/api/reports/r-running/events") as stream:
        assert stream.status_code == 200 and stream.headers["content-type"].startswith("text/event-stream")
        assert {name: stream.headers[name] for name in EXPECTED_HEADERS} == EXPECTED_HEADERS


def test_the_policy_allows_nothing_inline_no_other_site_and_no_framing() -> None:
    directives = dict(part.strip().split(" ", 1) for part in CONTENT_SECURITY_POLICY.split(";"))
    assert directives["default-src"] == "'none'" and directives["frame-ancestors"] == "'none'"
    assert directives["script-src"] == "'self'" and directives["style-src"] == "'self'"
    sources = {source for value in directives.values() for source in value.split()}
    assert sources <= {"'self'", "'none'", "data:"}, sources


class PageParts(HTMLParser):
    """What an HTML page loads, and what it would run or style inline."""

    def __init__(self) -> None:
        super().__init__()
        self.loaded: list[str] = []
        self.inline: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        for name in attributes:
            if name == "style" or name.startswith("on"):
                self.inline.append(f"<{tag} {name}>")
        if tag == "style":
            self.inline.append("<style>")
        if tag == "script":
            self._in_script = "src" not in attributes
        for name in ("src", "href"):
            if attributes.get(name) and tag != "a":  # a link is followed by a click, not loaded
                self.loaded.append(str(attributes[name]))

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline.append("<script> with a body")


@pytest.mark.parametrize(("path", "scripts"), [("/", ["/static/app.js"]), ("/docs", ["/static/docs.js"])])
def test_the_pages_run_and_style_nothing_inline_and_load_only_the_gateways_files(
    gateway: Gateway, path: str, scripts: list[str]
) -> None:
    page = gateway.client.get(path)
    parts = PageParts()
    parts.feed(page.text)
    assert parts.inline == []
    assert set(scripts) <= set(parts.loaded)
    for url in parts.loaded:
        if url.startswith("data:"):
            continue
        assert url.startswith("/") and not url.startswith("//"), url
        asset = gateway.client.get(url)
        assert asset.status_code == 200, url
        # nosniff: a browser runs a script, or applies a stylesheet, only under its own type.
        expected = {".js": "text/javascript", ".css": "text/css", ".png": "image/png"}[Path(url).suffix]
        assert asset.headers["content-type"].split(";")[0] == expected, url
        assert asset.headers["cache-control"] == "no-cache", url


def test_the_api_docs_name_no_other_host(gateway: Gateway) -> None:
    page = gateway.client.get("/docs").text
    init = gateway.client.get("/static/docs.js").text
    assert URL.findall(page) == [] and URL.findall(init) == []
    assert "validatorUrl: null" in init  # else Swagger UI would send the API's description to its validator
    assert '"/openapi.json"' in init and gateway.client.get("/openapi.json").status_code == 200


def test_the_page_names_no_other_host_but_the_svg_namespace(gateway: Gateway) -> None:
    found = URL.findall(gateway.client.get("/").text) + URL.findall(gateway.client.get("/static/app.js").text)
    # An XML namespace is a name, never fetched: createElementNS needs it for the chart.
    assert set(found) <= {"http://www.w3.org/2000/svg"}, found


def test_fastapis_cdn_pages_are_gone(gateway: Gateway) -> None:
    for path in ("/redoc", "/docs/oauth2-redirect"):
        assert gateway.client.get(path).status_code == 404, path
    assert "cdn.jsdelivr.net" not in gateway.client.get("/docs").text


def test_a_body_over_the_cap_is_refused_from_its_length_and_nothing_is_done(gateway: Gateway) -> None:
    small = client_with(gateway, max_body_bytes=1024)
    with capture_logs() as logs:
        refused = small.post(
            "/api/reports?token=in-the-query",
            content=b'{"period": "day"}' + b" " * 1024,
            headers={"Content-Type": "application/json", "Authorization": "Bearer s3cret-token"},
        )
    assert refused.status_code == 413
    assert refused.json() == {"detail": "request body too large: the limit is 1024 bytes", "limit_bytes": 1024}
    assert gateway.publisher.events == []
    [refusal] = [entry for entry in logs if entry["event"] == "request.refused"]
    assert (refusal["status"], refusal["path"], refusal["limit_bytes"]) == (413, "/api/reports", 1024)
    assert "Content-Length 1041" in refusal["reason"]
    assert "s3cret-token" not in repr(logs) and "in-the-query" not in repr(logs)


def test_a_body_at_the_cap_goes_through(gateway: Gateway) -> None:
    order = b'{"period": "day"}'
    exactly = order + b" " * (1024 - len(order))
    answer = client_with(gateway, max_body_bytes=1024).post(
        "/api/reports", content=exactly, headers={"Content-Type": "application/json"}
    )
    assert answer.status_code == 202, answer.text
    assert len(gateway.publisher.events) == 1


def test_a_body_without_a_length_is_refused_as_it_grows(gateway: Gateway) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"period": "day", "notify": "'
        yield b"a" * 2048
        yield b'@example.com"}'

    small = client_with(gateway, max_body_bytes=1024)
    with capture_logs() as logs:
        refused = small.post("/api/reports", content=chunks(), headers={"Content-Type": "application/json"})
    assert refused.status_code == 413 and refused.json()["limit_bytes"] == 1024
    assert gateway.publisher.events == []
    [refusal] = [entry for entry in logs if entry["event"] == "request.refused"]
    assert refusal["reason"].startswith("body over the limit after")


def http_scope(headers: list[tuple[bytes, bytes]]) -> Scope:
    return {"type": "http", "method": "POST", "path": "/api/reports", "headers": headers, "client": ("10.1.2.3", 5)}


async def run_limited(scope: Scope, chunks: list[bytes], max_bytes: int) -> tuple[list[Message], int, list[bytes]]:
    """BodyLimit over a body sent in chunks: what it answered, how many chunks it read, what the app got."""
    pending = [
        {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1} for i, chunk in enumerate(chunks)
    ]
    taken = 0
    answered: list[Message] = []
    got: list[bytes] = []

    async def receive() -> Message:
        nonlocal taken
        taken += 1
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        answered.append(message)

    async def app(_: Scope, app_receive: Callable[[], object], app_send: Callable[[Message], object]) -> None:
        while True:
            message = await app_receive()  # type: ignore[misc]
            got.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        await app_send({"type": "http.response.start", "status": 200, "headers": []})
        await app_send({"type": "http.response.body", "body": b"ok"})

    await BodyLimit(app, max_bytes=max_bytes)(scope, receive, send)
    return answered, taken, got


def test_a_streamed_body_is_cut_off_at_the_chunk_that_crosses_the_cap() -> None:
    chunks = [b"x" * 400] * 10
    answered, taken, got = anyio.run(run_limited, http_scope([(b"transfer-encoding", b"chunked")]), chunks, 1000)
    assert answered[0]["status"] == 413 and json.loads(answered[1]["body"])["limit_bytes"] == 1000
    assert taken == 3 and got == []  # the third chunk crossed 1000 bytes: no more read, the app never ran


def test_a_streamed_body_within_the_cap_reaches_the_app_unchanged() -> None:
    chunks = [b"x" * 400, b"y" * 400, b"z" * 200]
    answered, _, got = anyio.run(run_limited, http_scope([(b"transfer-encoding", b"chunked")]), chunks, 1000)
    assert answered[0]["status"] == 200 and b"".join(got) == b"".join(chunks)


def test_a_declared_length_over_the_cap_is_refused_before_any_of_the_body_is_read() -> None:
    answered, taken, got = anyio.run(run_limited, http_scope([(b"content-length", b"5000")]), [b"x" * 5000], 1000)
    assert answered[0]["status"] == 413 and taken == 0 and got == []


def test_cors_is_off_by_default(gateway: Gateway) -> None:
    simple = gateway.client.get("/api/reports", headers={"Origin": APP_ORIGIN})
    assert simple.status_code == 200 and "access-control-allow-origin" not in simple.headers
    preflight = gateway.client.options(
        "/api/reports", headers={"Origin": APP_ORIGIN, "Access-Control-Request-Method": "POST"}
    )
    assert preflight.status_code == 405
    assert not any(name.startswith("access-control-") for name in preflight.headers)


def test_cors_answers_a_configured_origin_only(gateway: Gateway) -> None:
    client = client_with(gateway, cors_origins=(APP_ORIGIN,))
    allowed = client.get("/api/reports", headers={"Origin": APP_ORIGIN})
    assert allowed.headers["access-control-allow-origin"] == APP_ORIGIN
    assert "access-control-allow-credentials" not in allowed.headers
    other = client.get("/api/reports", headers={"Origin": "https://evil.example.com"})
    assert "access-control-allow-origin" not in other.headers

    preflight = client.options(
        "/api/reports",
        headers={
            "Origin": APP_ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, idempotency-key",
        },
    )
    assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] == APP_ORIGIN
    assert preflight.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    with capture_logs() as logs:
        refused = client.options(
            "/api/reports", headers={"Origin": "https://evil.example.com", "Access-Control-Request-Method": "POST"}
        )
    assert refused.status_code == 400 and "access-control-allow-origin" not in refused.headers
    assert refused.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    [refusal] = [entry for entry in logs if entry["event"] == "request.refused"]
    assert refusal["origin"] == "https://evil.example.com" and "origin" in refusal["reason"]
    assert refusal["path"] == "/api/reports"


def test_a_413_is_readable_by_a_configured_origins_page(gateway: Gateway) -> None:
    client = client_with(gateway, cors_origins=(APP_ORIGIN,), max_body_bytes=1024)
    refused = client.post("/api/reports", content=b" " * 2048, headers={"Origin": APP_ORIGIN})
    assert refused.status_code == 413 and refused.headers["access-control-allow-origin"] == APP_ORIGIN


@pytest.mark.parametrize(
    ("written", "origin"),
    [
        ("https://app.example.com", "https://app.example.com"),
        (" HTTPS://App.Example.com/ ", "https://app.example.com"),
        ("https://app.example.com:443", "https://app.example.com"),
        ("http://localhost:3000", "http://localhost:3000"),
        ("http://[::1]:8080", "http://[::1]:8080"),
    ],
)
def test_an_origin_is_kept_as_browsers_send_it(written: str, origin: str) -> None:
    assert cors_origin(written) == origin


@pytest.mark.parametrize(
    "written",
    [
        "*",
        "https://*.example.com",
        "app.example.com",
        "ftp://app.example.com",
        "https://app.example.com/path",
        "https://app.example.com?x=1",
        "https://user:pw@app.example.com",
        "https://app.example.com:99999",
        "https://app example.com",
        "https://",
    ],
)
def test_anything_but_an_origin_is_refused(written: str) -> None:
    with pytest.raises(ValueError, match=r"not an origin|not allowed"):
        cors_origin(written)
