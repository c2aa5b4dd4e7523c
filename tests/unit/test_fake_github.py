"""The bundled fake GitHub behaves like the real search API, faults included."""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Iterator
from datetime import date, timedelta
from typing import Any

import pytest
import requests

from tests.fake_github import FakeGitHub
from tests.fake_github.dataset import PROBE_DESCRIPTIONS, generate_repositories
from tests.support.waiting import eventually

pytestmark = pytest.mark.unit

TODAY = date(2026, 11, 22)
WHOLE_SPAN = TODAY - timedelta(days=45)
LAST_WEEK = TODAY - timedelta(days=7)
SEARCH = "/search/repositories"
ITEM_KEYS = {
    "id",
    "node_id",
    "name",
    "full_name",
    "private",
    "owner",
    "html_url",
    "description",
    "fork",
    "url",
    "forks_url",
    "keys_url",
    "collaborators_url",
    "teams_url",
    "hooks_url",
    "issue_events_url",
    "events_url",
    "assignees_url",
    "branches_url",
    "tags_url",
    "blobs_url",
    "git_tags_url",
    "git_refs_url",
    "trees_url",
    "statuses_url",
    "languages_url",
    "stargazers_url",
    "contributors_url",
    "subscribers_url",
    "subscription_url",
    "commits_url",
    "git_commits_url",
    "comments_url",
    "issue_comment_url",
    "contents_url",
    "compare_url",
    "merges_url",
    "archive_url",
    "downloads_url",
    "issues_url",
    "pulls_url",
    "milestones_url",
    "notifications_url",
    "labels_url",
    "releases_url",
    "deployments_url",
    "created_at",
    "updated_at",
    "pushed_at",
    "git_url",
    "ssh_url",
    "clone_url",
    "svn_url",
    "homepage",
    "size",
    "stargazers_count",
    "watchers_count",
    "language",
    "has_issues",
    "has_projects",
    "has_downloads",
    "has_wiki",
    "has_pages",
    "has_discussions",
    "forks_count",
    "mirror_url",
    "archived",
    "disabled",
    "open_issues_count",
    "license",
    "allow_forking",
    "is_template",
    "web_commit_signoff_required",
    "topics",
    "visibility",
    "forks",
    "open_issues",
    "watchers",
    "default_branch",
    "score",
}
OWNER_KEYS = {
    "login",
    "id",
    "node_id",
    "avatar_url",
    "gravatar_id",
    "url",
    "html_url",
    "followers_url",
    "following_url",
    "gists_url",
    "starred_url",
    "subscriptions_url",
    "organizations_url",
    "repos_url",
    "events_url",
    "received_events_url",
    "type",
    "site_admin",
}


@pytest.fixture(scope="module")
def shared_fake() -> Iterator[FakeGitHub]:
    with FakeGitHub(port=0, seed=7, today=TODAY) as fake:
        yield fake


@pytest.fixture()
def gh(shared_fake: FakeGitHub) -> Iterator[FakeGitHub]:
    shared_fake.reset()
    yield shared_fake
    shared_fake.reset()
    shared_fake.set_latency(0)
    shared_fake.set_rate_limit(None)
    shared_fake.set_today(TODAY)


@pytest.fixture()
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


def search(
    http: requests.Session,
    gh: FakeGitHub,
    since: date = WHOLE_SPAN,
    page: int = 1,
    per_page: int | None = 100,
    headers: dict[str, str] | None = None,
    timeout: float = 5,
    op: str = ">=",
) -> requests.Response:
    params: dict[str, Any] = {"q": f"created:{op}{since.isoformat()}", "sort": "stars", "order": "desc", "page": page}
    if per_page is not None:
        params["per_page"] = per_page
    return http.get(gh.url + SEARCH, params=params, headers=headers, timeout=timeout)


def parse_link(header: str) -> dict[str, str]:
    links = {}
    for part in header.split(", "):
        url, rel = part.split("; ")
        links[rel.removeprefix('rel="').rstrip('"')] = url.strip("<>")
    return links


def control(http: requests.Session, gh: FakeGitHub, method: str, name: str, payload: Any = None) -> requests.Response:
    return http.request(method, f"{gh.url}/_fake/{name}", json=payload, timeout=5)


# --- search semantics -------------------------------------------------------


def test_pages_are_sorted_filtered_and_disjoint(gh: FakeGitHub, http: requests.Session) -> None:
    since = TODAY - timedelta(days=20)
    items: list[dict[str, Any]] = []
    for page in range(1, 20):
        body = search(http, gh, since, page).json()
        if not body["items"]:
            break
        assert body["incomplete_results"] is False
        items += body["items"]
    assert len(items) == body["total_count"] < 1000
    assert all(item["created_at"] >= since.isoformat() for item in items)
    assert [i["id"] for i in items] == [i["id"] for i in sorted(items, key=lambda i: (-i["stargazers_count"], i["id"]))]
    assert len({i["id"] for i in items}) == len(items)
    every = generate_repositories(7, 1200, TODAY)
    assert body["total_count"] == sum(r["created_at"] >= since.isoformat() for r in every)


def test_ties_on_stars_are_broken_by_ascending_id(gh: FakeGitHub) -> None:
    items = gh.expected_items(WHOLE_SPAN, pages=10)
    stars = [i["stargazers_count"] for i in items]
    assert len(set(stars)) < len(stars)
    for before, after in itertools.pairwise(items):
        if before["stargazers_count"] == after["stargazers_count"]:
            assert before["id"] < after["id"]


def test_strict_created_qualifier_excludes_the_day_itself(gh: FakeGitHub, http: requests.Session) -> None:
    day = TODAY - timedelta(days=10)
    inclusive = search(http, gh, day, op=">=").json()["total_count"]
    exclusive = search(http, gh, day, op=">").json()["total_count"]
    next_day = search(http, gh, day + timedelta(days=1)).json()["total_count"]
    assert inclusive > exclusive == next_day


def test_per_page_defaults_to_30_and_caps_at_100(gh: FakeGitHub, http: requests.Session) -> None:
    assert len(search(http, gh, per_page=None).json()["items"]) == 30
    assert len(search(http, gh, per_page=500).json()["items"]) == 100


def test_pages_past_the_end_are_empty(gh: FakeGitHub, http: requests.Session) -> None:
    response = search(http, gh, TODAY - timedelta(days=2), page=5)
    assert response.status_code == 200
    assert response.json()["items"] == []
    assert response.json()["total_count"] > 0


def test_only_the_first_1000_results_are_served(gh: FakeGitHub, http: requests.Session) -> None:
    assert search(http, gh, WHOLE_SPAN, page=1).json()["total_count"] == 1200
    assert len(search(http, gh, WHOLE_SPAN, page=10).json()["items"]) == 100
    response = search(http, gh, WHOLE_SPAN, page=11)
    assert response.status_code == 422
    assert response.json()["message"] == "Only the first 1000 search results are available"
    assert "documentation_url" in response.json()
    assert len(search(http, gh, WHOLE_SPAN, page=34, per_page=30).json()["items"]) == 10


def test_a_query_without_q_is_a_validation_error(gh: FakeGitHub, http: requests.Session) -> None:
    response = http.get(gh.url + SEARCH, timeout=5)
    assert response.status_code == 422
    assert response.json()["message"] == "Validation Failed"


def test_expected_items_match_what_a_client_fetches(gh: FakeGitHub, http: requests.Session) -> None:
    fetched = [item for page in (1, 2, 3) for item in search(http, gh, LAST_WEEK, page).json()["items"]]
    assert gh.expected_items(LAST_WEEK, pages=3, per_page=100) == fetched


def test_changing_today_moves_the_dataset(gh: FakeGitHub, http: requests.Session) -> None:
    gh.set_today(TODAY + timedelta(days=30))
    assert search(http, gh, TODAY).json()["total_count"] > 500
    control(http, gh, "POST", "config", {"today": TODAY.isoformat()})
    assert search(http, gh, TODAY).json()["total_count"] == 0


# --- items --------------------------------------------------------------------


def test_items_have_every_github_field_and_weigh_about_5kb(gh: FakeGitHub, http: requests.Session) -> None:
    response = search(http, gh, WHOLE_SPAN)
    items = response.json()["items"]
    assert 400_000 < len(response.content) < 700_000
    for item in items:
        assert set(item) >= ITEM_KEYS
        assert set(item["owner"]) >= OWNER_KEYS
        assert 4_000 < len(json.dumps(item).encode()) < 7_500
        assert item["created_at"].endswith("Z") and len(item["created_at"]) == 20
        assert item["full_name"] == f"{item['owner']['login']}/{item['name']}"
        if item["license"] is not None:
            assert set(item["license"]) == {"key", "name", "spdx_id", "url", "node_id"}


def test_dataset_has_the_awkward_values_reports_must_survive() -> None:
    repositories = generate_repositories(7, 1200, TODAY)
    null_languages = sum(r["language"] is None for r in repositories)
    assert 0.06 < null_languages / len(repositories) < 0.14
    assert any(r["description"] is None for r in repositories)
    assert {"C++", "C#", "Jupyter Notebook"} <= {r["language"] for r in repositories}


def test_probe_descriptions_appear_on_the_first_page_of_a_recent_window(gh: FakeGitHub) -> None:
    descriptions = {item["description"] for item in gh.expected_items(LAST_WEEK, pages=1)}
    assert set(PROBE_DESCRIPTIONS) <= descriptions
    assert any(d.startswith("=HYPERLINK(") for d in PROBE_DESCRIPTIONS)
    assert {d[0] for d in PROBE_DESCRIPTIONS} >= {"=", "+", "-", "@"}


def test_dataset_is_deterministic_per_seed() -> None:
    assert generate_repositories(7, 50, TODAY) == generate_repositories(7, 50, TODAY)
    assert generate_repositories(7, 50, TODAY) != generate_repositories(8, 50, TODAY)


# --- headers ------------------------------------------------------------------


def test_link_header_follows_github_format(gh: FakeGitHub, http: requests.Session) -> None:
    first = search(http, gh, WHOLE_SPAN, page=1)
    links = parse_link(first.headers["Link"])
    assert set(links) == {"next", "last"}
    assert links["last"].endswith("page=10")
    assert "q=created%3A%3E%3D" in links["next"]

    middle = parse_link(search(http, gh, WHOLE_SPAN, page=4).headers["Link"])
    assert list(middle) == ["prev", "next", "last", "first"]
    assert middle["prev"].endswith("page=3") and middle["first"].endswith("page=1")

    followed = http.get(middle["next"], timeout=5).json()
    assert followed == search(http, gh, WHOLE_SPAN, page=5).json()

    last = parse_link(search(http, gh, WHOLE_SPAN, page=10).headers["Link"])
    assert set(last) == {"prev", "first"}


def test_single_page_results_have_no_link_header(gh: FakeGitHub, http: requests.Session) -> None:
    assert "Link" not in search(http, gh, TODAY - timedelta(days=1)).headers


def test_github_headers_are_present(gh: FakeGitHub, http: requests.Session) -> None:
    headers = search(http, gh).headers
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    assert headers["X-RateLimit-Resource"] == "search"
    assert int(headers["X-RateLimit-Reset"]) > time.time()
    for name in ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Used"):
        assert headers[name].isdigit()
    assert headers["ETag"].startswith('W/"')


def test_matching_etag_gives_304_without_spending_rate_limit(gh: FakeGitHub, http: requests.Session) -> None:
    gh.set_rate_limit(5)
    first = search(http, gh, page=2)
    again = search(http, gh, page=2, headers={"If-None-Match": first.headers["ETag"]})
    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["ETag"] == first.headers["ETag"]
    assert again.headers["X-RateLimit-Remaining"] == first.headers["X-RateLimit-Remaining"] == "4"
    other_page = search(http, gh, page=3, headers={"If-None-Match": first.headers["ETag"]})
    assert other_page.status_code == 200
    assert gh.stats()["not_modified"] == 1


# --- rate limiting ------------------------------------------------------------


def test_rate_limit_answers_403_like_github(gh: FakeGitHub, http: requests.Session) -> None:
    gh.set_rate_limit(3)
    auth = {"Authorization": "Bearer alpha"}
    remaining = [search(http, gh, headers=auth).headers["X-RateLimit-Remaining"] for _ in range(3)]
    assert remaining == ["2", "1", "0"]
    refused = search(http, gh, headers=auth)
    assert refused.status_code == 403
    assert refused.json()["message"].startswith("API rate limit exceeded for ")
    assert refused.json()["documentation_url"].startswith("https://docs.github.com/")
    assert refused.headers["X-RateLimit-Remaining"] == "0"
    assert time.time() < int(refused.headers["X-RateLimit-Reset"]) <= time.time() + 61

    assert search(http, gh, headers={"Authorization": "token beta"}).status_code == 200
    assert search(http, gh).status_code == 200
    stats = gh.stats()
    assert stats["rate_limited"] == 1
    assert stats["by_token"] == {"alpha": 4, "beta": 1, "anonymous": 1}


def test_reset_clears_rate_windows(gh: FakeGitHub, http: requests.Session) -> None:
    gh.set_rate_limit(1)
    assert search(http, gh).status_code == 200
    assert search(http, gh).status_code == 403
    gh.reset()
    assert search(http, gh).status_code == 200


# --- faults -------------------------------------------------------------------


def test_status_fault_hits_its_page_the_given_number_of_times(gh: FakeGitHub, http: requests.Session) -> None:
    gh.add_fault(page=3, kind="status", status=502, times=2)
    assert search(http, gh, page=2).status_code == 200
    failed = search(http, gh, page=3)
    assert failed.status_code == 502
    assert {"message", "documentation_url"} <= set(failed.json())
    assert search(http, gh, page=3).status_code == 502
    assert search(http, gh, page=3).status_code == 200
    assert gh.stats()["by_status"] == {"200": 2, "502": 2}


def test_status_fault_with_custom_body_and_forever(gh: FakeGitHub, http: requests.Session) -> None:
    gh.add_fault(kind="status", status=503, body={"message": "down"})
    for page in (1, 2, 7):
        response = search(http, gh, page=page)
        assert (response.status_code, response.json()) == (503, {"message": "down"})


def test_rate_limit_fault(gh: FakeGitHub, http: requests.Session) -> None:
    gh.add_fault(kind="rate_limit", times=1, reset_in=30)
    refused = search(http, gh)
    assert refused.status_code == 403
    assert refused.headers["X-RateLimit-Remaining"] == "0"
    assert int(refused.headers["X-RateLimit-Reset"]) >= time.time() + 29
    assert "rate limit exceeded" in refused.json()["message"]
    assert search(http, gh).status_code == 200
    assert gh.stats()["rate_limited"] == 1


def test_retry_after_fault(gh: FakeGitHub, http: requests.Session) -> None:
    gh.add_fault(page=1, kind="retry_after", seconds=7, times=1)
    refused = search(http, gh)
    assert refused.status_code == 429
    assert refused.headers["Retry-After"] == "7"
    assert "secondary rate limit" in refused.json()["message"]


def test_timeout_fault_outlasts_a_client_read_timeout(gh: FakeGitHub, http: requests.Session) -> None:
    gh.add_fault(page=2, kind="timeout", seconds=0.5, times=1)
    with pytest.raises(requests.ReadTimeout):
        search(http, gh, page=2, timeout=0.1)
    assert search(http, gh, page=2).status_code == 200

    # The fake still answers the abandoned request once its sleep ends: wait until that answer is
    # counted, or it would land in the next test's counters.
    def every_request_answered() -> dict[str, Any] | None:
        stats = gh.stats()
        return stats if sum(stats["by_status"].values()) == stats["requests"] else None

    assert eventually(every_request_answered, timeout=5, message="the abandoned request's answer")["requests"] == 2


def test_truncated_fault_cuts_the_body_in_half(gh: FakeGitHub, http: requests.Session) -> None:
    whole = search(http, gh).content
    gh.add_fault(kind="truncated", times=1)
    cut = search(http, gh)
    assert cut.status_code == 200
    assert cut.content == whole[: len(whole) // 2]
    with pytest.raises(ValueError):
        cut.json()


def test_incomplete_fault_flags_the_results(gh: FakeGitHub, http: requests.Session) -> None:
    gh.add_fault(kind="incomplete", page=1, times=1)
    assert search(http, gh).json()["incomplete_results"] is True
    assert search(http, gh).json()["incomplete_results"] is False


def test_shift_fault_repeats_the_previous_pages_last_item(gh: FakeGitHub, http: requests.Session) -> None:
    page_one = search(http, gh, page=1).json()["items"]
    honest_two = search(http, gh, page=2).json()["items"]
    gh.add_fault(kind="shift", page=2, times=1)
    shifted = search(http, gh, page=2).json()["items"]
    assert shifted[0] == page_one[-1]
    assert shifted[1:] == honest_two[:-1]


def test_missing_fields_fault_drops_optional_keys(gh: FakeGitHub, http: requests.Session) -> None:
    gh.add_fault(kind="missing_fields", times=1)
    items = search(http, gh).json()["items"]
    for item in items:
        assert not {"description", "language", "license", "homepage"} & set(item)
        assert "stargazers_count" in item


def test_faults_apply_in_order_and_expire(gh: FakeGitHub, http: requests.Session) -> None:
    gh.add_fault(kind="status", status=500, times=1)
    gh.add_fault(kind="status", status=404, times=1)
    assert [search(http, gh).status_code for _ in range(3)] == [500, 404, 200]


def test_faults_passed_to_the_constructor() -> None:
    rules = [{"page": 1, "kind": "status", "status": 503, "times": 1}]
    with FakeGitHub(port=0, today=TODAY, repos=50, faults=rules) as fake:
        url = f"{fake.url}{SEARCH}?q=created:>=2026-11-01"
        assert requests.get(url, timeout=5).status_code == 503
        assert requests.get(url, timeout=5).status_code == 200


def test_latency_delays_each_request(gh: FakeGitHub, http: requests.Session) -> None:
    gh.set_latency(150)
    started = time.monotonic()
    search(http, gh, TODAY - timedelta(days=1))
    assert time.monotonic() - started >= 0.15


# --- control API and lifecycle -------------------------------------------------


def test_control_api_over_http(gh: FakeGitHub, http: requests.Session) -> None:
    config = control(http, gh, "POST", "config", {"latency_ms": 0, "rate_limit_per_minute": 2})
    assert config.json()["rate_limit_per_minute"] == 2
    rules = [
        {"page": 2, "kind": "status", "status": 500, "times": 1},
        {"page": None, "kind": "incomplete", "times": None},
    ]
    assert len(control(http, gh, "POST", "faults", rules).json()) == 2
    assert search(http, gh, page=2).status_code == 500
    assert search(http, gh, page=1).json()["incomplete_results"] is True

    stats = control(http, gh, "GET", "stats").json()
    assert stats["requests"] == 2
    assert stats["by_status"] == {"200": 1, "500": 1}
    assert stats["by_page"] == {"1": 1, "2": 1}
    assert stats["not_modified"] == 0 and stats["rate_limited"] == 0

    assert control(http, gh, "POST", "reset").status_code == 200
    assert control(http, gh, "GET", "stats").json()["requests"] == 0
    assert control(http, gh, "GET", "faults").json() == []
    assert control(http, gh, "POST", "faults", [{"kind": "explode"}]).status_code == 400
    assert control(http, gh, "POST", "config", {"colour": "red"}).status_code == 400


def test_stop_returns_quickly_while_a_timeout_fault_sleeps() -> None:
    fake = FakeGitHub(port=0, today=TODAY, repos=50).start()
    fake.add_fault(kind="timeout")
    errors: list[BaseException] = []

    def hang() -> None:
        try:
            requests.get(f"{fake.url}{SEARCH}?q=created:>=2026-11-01", timeout=30)
        except requests.RequestException as error:
            errors.append(error)

    client = threading.Thread(target=hang)
    client.start()
    time.sleep(0.2)
    started = time.monotonic()
    fake.stop()
    assert time.monotonic() - started < 1.5
    client.join(5)
    assert not client.is_alive()
    assert errors, "the hung client should see its connection end"
