"""The GitHub adapter against the fake GitHub: the request it sends, and how each failure is classified."""

from __future__ import annotations

import datetime as dt
import http.client
import random
import ssl
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from services.fetcher.github import GitHubClient
from services.fetcher.handlers import FETCH_PAGE, FetchPage, RetryPolicy, fetch_page
from services.fetcher.search import IncompleteResults, PermanentGitHubError, RateLimited, RetryableGitHubError
from shared.events import EventData, ReportFailed, ReportPageFetched, ReportSpec
from shared.handling import EventMeta, Outgoing, RetryLater
from tests.fake_github import FakeGitHub
from tests.support.metrics import sample

SINCE = dt.date(2026, 11, 15)


@pytest.fixture
def github() -> Iterator[FakeGitHub]:
    with FakeGitHub(port=0, seed=7, today=dt.date(2026, 11, 22)) as fake:
        yield fake


def client(github: FakeGitHub) -> GitHubClient:
    return GitHubClient(github.url, "secret-token")


def test_a_page_is_fetched_with_the_token_and_trimmed(github: FakeGitHub) -> None:
    page = client(github).search_page(SINCE, 1)
    expected = github.expected_items(SINCE, pages=1)
    assert [r.id for r in page.items] == [item["id"] for item in expected]
    assert page.items[0].model_dump().keys() == {
        "id",
        "full_name",
        "html_url",
        "description",
        "language",
        "stargazers_count",
        "forks_count",
        "created_at",
    }
    assert github.stats()["by_token"] == {"secret-token": 1}


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        ({"kind": "status", "status": 500}, RetryableGitHubError),
        ({"kind": "status", "status": 502}, RetryableGitHubError),
        ({"kind": "status", "status": 503}, RetryableGitHubError),
        ({"kind": "truncated"}, RetryableGitHubError),
        ({"kind": "status", "status": 422}, PermanentGitHubError),
        ({"kind": "status", "status": 404}, PermanentGitHubError),
        ({"kind": "incomplete"}, IncompleteResults),
    ],
)
def test_failures_are_classified(github: FakeGitHub, fault: dict[str, object], error: type[Exception]) -> None:
    github.add_faults([{**fault, "page": 1, "times": 1}])
    with pytest.raises(error):
        client(github).search_page(SINCE, 1)


def test_a_page_that_does_not_come_in_time_is_retried_and_counted_as_a_timeout(github: FakeGitHub) -> None:
    github.add_fault("timeout", page=1, times=1, seconds=3)
    before = sample("hotrepos_github_requests_total", status="timeout")
    with pytest.raises(RetryableGitHubError, match="timed out on page 1"):
        GitHubClient(github.url, "secret-token", read_timeout=0.5).search_page(SINCE, 1)
    assert sample("hotrepos_github_requests_total", status="timeout") - before == 1


def test_a_redirect_is_not_followed_and_fails_the_page_for_good(github: FakeGitHub) -> None:
    github.add_fault("status", page=1, times=1, status=301)
    with pytest.raises(PermanentGitHubError, match="301 on page 1, a redirect") as failed:
        client(github).search_page(SINCE, 1)
    assert "GITHUB_API_URL" in str(failed.value)
    assert github.stats()["requests"] == 1


class ForwardProxy(ThreadingHTTPServer):
    """An HTTP forward proxy: takes `GET http://host/path`, fetches it, and notes each URL asked for."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Forward)
        self.urls: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class TlsFront(ThreadingHTTPServer):
    """HTTPS in front of the fake GitHub, with a certificate of its own that no bundle trusts."""

    def __init__(self, upstream: str, directory: Path) -> None:
        super().__init__(("127.0.0.1", 0), _Forward)
        self.urls: list[str] = []
        self.upstream = upstream
        self.certificate = directory / "front.pem"
        key = directory / "front.key"
        request = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"]
        subject = ["-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(self.certificate)]
        subprocess.run([*request, *subject], check=True, capture_output=True)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.certificate, key)
        self.socket = context.wrap_socket(self.socket, server_side=True)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.server_address[1]}"


class _Forward(BaseHTTPRequestHandler):
    """Asks the fake GitHub for what it was asked, as a forward proxy (absolute URL) or a front (path)."""

    server: ForwardProxy | TlsFront

    def do_GET(self) -> None:
        self.server.urls.append(self.path)
        target = urlsplit(self.path if "://" in self.path else f"{getattr(self.server, 'upstream', '')}{self.path}")
        upstream = http.client.HTTPConnection(target.netloc, timeout=10)
        headers = {name: value for name, value in self.headers.items() if name.lower() != "proxy-connection"}
        upstream.request("GET", f"{target.path}?{target.query}", headers=headers)
        answer = upstream.getresponse()
        body = answer.read()
        self.send_response(answer.status)
        for name, value in answer.getheaders():
            if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        upstream.close()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def proxy(monkeypatch: pytest.MonkeyPatch) -> Iterator[ForwardProxy]:
    for name in ("http_proxy", "HTTP_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    server = ForwardProxy()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def test_the_environment_s_proxy_carries_the_search(
    github: FakeGitHub, proxy: ForwardProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("http_proxy", proxy.url)
    page = client(github).search_page(SINCE, 1)
    assert [r.id for r in page.items] == [item["id"] for item in github.expected_items(SINCE, pages=1)]
    [asked] = proxy.urls
    assert asked.startswith(f"{github.url}/search/repositories?q=created")
    assert github.stats()["by_token"] == {"secret-token": 1}


def test_an_address_in_no_proxy_is_reached_directly(
    github: FakeGitHub, proxy: ForwardProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("http_proxy", proxy.url)
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    assert len(client(github).search_page(SINCE, 1).items) == 100
    assert proxy.urls == [] and github.stats()["requests"] == 1


@pytest.fixture
def tls_front(github: FakeGitHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TlsFront]:
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
    server = TlsFront(github.url, tmp_path)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def test_github_over_tls_is_trusted_only_through_the_bundle_the_environment_names(
    tls_front: TlsFront, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(RetryableGitHubError, match=r"unreachable on page 1.*CERTIFICATE_VERIFY_FAILED"):
        GitHubClient(tls_front.url, "secret-token").search_page(SINCE, 1)
    assert tls_front.urls == []
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls_front.certificate))
    assert len(GitHubClient(tls_front.url, "secret-token").search_page(SINCE, 1).items) == 100
    assert len(tls_front.urls) == 1


def test_rate_limits_say_how_long_to_wait(github: FakeGitHub) -> None:
    github.add_fault("rate_limit", page=1, times=1, reset_in=3)
    with pytest.raises(RateLimited) as limited:
        client(github).search_page(SINCE, 1)
    assert 1 <= limited.value.wait_seconds <= 4
    github.add_fault("retry_after", page=1, times=1, seconds=7)
    with pytest.raises(RateLimited) as told:
        client(github).search_page(SINCE, 1)
    assert told.value.wait_seconds == 7


def test_missing_optional_fields_are_tolerated(github: FakeGitHub) -> None:
    github.add_fault("missing_fields", page=1, times=1)
    page = client(github).search_page(SINCE, 1)
    assert len(page.items) == 100 and all(r.description is None and r.language is None for r in page.items)


def decide(github: FakeGitHub, attempt: int) -> RetryLater | EventData:
    """What the fetch handler makes of page 2 on this attempt: a retry later, or the event it publishes."""
    spec = ReportSpec(period="week", since=SINCE)
    try:
        [outcome] = fetch_page(
            FetchPage(report_id="r", page=2, pages=5, spec=spec),
            EventMeta(id="fetch-r-2", type=FETCH_PAGE, attempt=attempt),
            github=client(github),
            policy=RetryPolicy(max_attempts=3, base_delay=0.5),
            rng=random.Random(1),
        )
    except RetryLater as retry:
        return retry
    return outcome.data if isinstance(outcome, Outgoing) else outcome


def test_retry_decisions(github: FakeGitHub) -> None:
    github.add_fault("status", page=2, status=503)
    first = decide(github, 0)
    assert isinstance(first, RetryLater) and first.delay is not None and 0 <= first.delay <= 0.5
    last = decide(github, 2)
    assert isinstance(last, ReportFailed) and "gave up after 3 attempts" in last.reason
    github.reset()
    github.add_fault("status", page=2, status=422)
    failed = decide(github, 0)
    assert isinstance(failed, ReportFailed) and "422" in failed.reason
    github.reset()
    github.add_fault("incomplete", page=2)
    assert isinstance(decide(github, 0), RetryLater)
    accepted = decide(github, 2)
    assert isinstance(accepted, ReportPageFetched) and accepted.incomplete_results
