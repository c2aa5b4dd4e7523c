"""The GitHub adapter against the fake GitHub: the request it sends, and how each failure is classified."""

from __future__ import annotations

import base64
import datetime as dt
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.fetcher.github import GitHubClient
from services.fetcher.handlers import FETCH_PAGE, FetchPage, RetryPolicy, fetch_page
from services.fetcher.search import IncompleteResults, PermanentGitHubError, RateLimited, RetryableGitHubError
from shared.events import EventData, ReportFailed, ReportPageFetched, ReportSpec
from shared.handling import EventMeta, Outgoing, RetryLater
from tests.fake_github import FakeGitHub
from tests.support.http_fronts import ForwardProxy, Redirect, TlsFront
from tests.support.metrics import sample
from tests.support.smtp import free_port

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


def test_a_refused_connection_is_retried_and_counted_as_unreachable_not_as_a_timeout() -> None:
    before = sample("hotrepos_github_requests_total", status="connection-error")
    with pytest.raises(RetryableGitHubError, match="unreachable on page 1"):
        GitHubClient(f"http://127.0.0.1:{free_port()}", "secret-token").search_page(SINCE, 1)
    assert sample("hotrepos_github_requests_total", status="connection-error") - before == 1


def test_a_redirect_is_not_followed_and_fails_the_page_for_good(github: FakeGitHub) -> None:
    with Redirect(github.url) as redirect, pytest.raises(PermanentGitHubError) as failed:
        GitHubClient(redirect.url, "secret-token").search_page(SINCE, 1)
    assert f"301 on page 1, a redirect to {github.url}/search/repositories?" in str(failed.value)
    assert "GITHUB_API_URL" in str(failed.value)
    assert len(redirect.asked) == 1 and github.stats()["requests"] == 0


@pytest.fixture
def proxy_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """The test's own environment for proxies and CA bundles, whatever the machine's."""
    for scheme in ("http", "https", "all", "no"):
        monkeypatch.delenv(f"{scheme}_proxy", raising=False)
        monkeypatch.delenv(f"{scheme.upper()}_PROXY", raising=False)
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def tls_front(github: FakeGitHub, tmp_path: Path) -> Iterator[TlsFront]:
    with TlsFront(github.url, tmp_path) as front:
        yield front


@pytest.mark.parametrize("written", ["http://127.0.0.1:{port}", "127.0.0.1:{port}"])
def test_the_environment_s_proxy_carries_the_search(
    github: FakeGitHub, proxy_env: pytest.MonkeyPatch, written: str
) -> None:
    with ForwardProxy() as proxy:
        proxy_env.setenv("http_proxy", written.format(port=proxy.server_address[1]))
        page = client(github).search_page(SINCE, 1)
    assert [r.id for r in page.items] == [item["id"] for item in github.expected_items(SINCE, pages=1)]
    [asked] = proxy.asked
    assert asked.startswith(f"{github.url}/search/repositories?q=created")
    assert github.stats()["by_token"] == {"secret-token": 1}


def test_an_address_in_no_proxy_is_reached_directly(github: FakeGitHub, proxy_env: pytest.MonkeyPatch) -> None:
    with ForwardProxy() as proxy:
        proxy_env.setenv("http_proxy", proxy.url)
        proxy_env.setenv("no_proxy", "127.0.0.0/8")
        assert len(client(github).search_page(SINCE, 1).items) == 100
    assert proxy.asked == [] and github.stats()["requests"] == 1


def test_github_over_tls_goes_through_the_proxy_s_tunnel_with_its_credentials(
    tls_front: TlsFront, proxy_env: pytest.MonkeyPatch
) -> None:
    with ForwardProxy() as proxy:
        proxy_env.setenv("HTTPS_PROXY", f"http://fetcher:p%40ss@127.0.0.1:{proxy.server_address[1]}")
        proxy_env.setenv("REQUESTS_CA_BUNDLE", str(tls_front.certificate))
        assert len(GitHubClient(tls_front.url, "secret-token").search_page(SINCE, 1).items) == 100
    assert proxy.asked == [f"CONNECT 127.0.0.1:{tls_front.server_address[1]}"]
    assert proxy.proxy_authorizations == ["Basic " + base64.b64encode(b"fetcher:p@ss").decode()]
    assert len(tls_front.asked) == 1


def test_github_over_tls_is_trusted_only_through_the_bundle_the_environment_names(
    tls_front: TlsFront, proxy_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with pytest.raises(RetryableGitHubError, match=r"unreachable on page 1.*CERTIFICATE_VERIFY_FAILED"):
        GitHubClient(tls_front.url, "secret-token").search_page(SINCE, 1)
    assert tls_front.asked == []
    proxy_env.setenv("REQUESTS_CA_BUNDLE", str(tls_front.certificate))
    assert len(GitHubClient(tls_front.url, "secret-token").search_page(SINCE, 1).items) == 100
    proxy_env.setenv("REQUESTS_CA_BUNDLE", str(tls_front.certificate_directory(tmp_path / "trusted")))
    assert len(GitHubClient(tls_front.url, "secret-token").search_page(SINCE, 1).items) == 100
    assert len(tls_front.asked) == 2


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
