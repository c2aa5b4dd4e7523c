"""GitHub search adapter: one page of repositories, with every failure classified for retrying."""

from __future__ import annotations

import datetime as dt
import email.utils
import time
from dataclasses import dataclass
from typing import Any

import requests
from pydantic import ValidationError

from shared import metrics
from shared.events import ITEMS_PER_PAGE, Repository

CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 30.0


class GitHubError(Exception):
    """A search request failed."""


class RetryableGitHubError(GitHubError):
    """5xx, a timeout, a dropped connection or a malformed body: worth another try."""


class RateLimited(RetryableGitHubError):
    """GitHub said when to come back."""

    def __init__(self, message: str, wait_seconds: float) -> None:
        super().__init__(message)
        self.wait_seconds = wait_seconds


class IncompleteResults(RetryableGitHubError):
    """GitHub's search timed out and served part of the results."""

    def __init__(self, message: str, page: SearchPage) -> None:
        super().__init__(message)
        self.page = page


class PermanentGitHubError(GitHubError):
    """A 4xx other than a rate limit: retrying cannot help."""


@dataclass(frozen=True)
class SearchPage:
    items: list[Repository]
    total_count: int
    incomplete_results: bool


def trim(item: dict[str, Any]) -> Repository:
    """Keep only what the report uses, once, so nothing downstream carries the full payload."""
    return Repository(
        id=item["id"],
        full_name=item["full_name"],
        html_url=item["html_url"],
        description=item.get("description"),
        language=item.get("language"),
        stargazers_count=item.get("stargazers_count", 0),
        forks_count=item.get("forks_count", 0),
        created_at=item.get("created_at", ""),
    )


def _wait_from_headers(headers: Any, now: float) -> float | None:
    retry_after = headers.get("Retry-After")
    if retry_after:
        if retry_after.strip().isdigit():
            return float(retry_after)
        parsed = email.utils.parsedate_to_datetime(retry_after)
        return max(0.0, parsed.timestamp() - now)
    if headers.get("X-RateLimit-Remaining") == "0" and headers.get("X-RateLimit-Reset", "").isdigit():
        return max(0.0, float(headers["X-RateLimit-Reset"]) - now)
    return None


class GitHubClient:
    def __init__(self, api_url: str, token: str | None, session: requests.Session | None = None) -> None:
        self.api_url = api_url.rstrip("/")
        self.session = session or requests.Session()
        self.session.headers.update(
            {
                "Accept": "application/vnd.github+json",
                "X-GitHub-Api-Version": "2022-11-28",
                "User-Agent": "hotrepos",
            }
        )
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def search_page(self, since: dt.date, page: int, per_page: int = ITEMS_PER_PAGE) -> SearchPage:
        params = {
            "q": f"created:>={since.isoformat()}",
            "sort": "stars",
            "order": "desc",
            "per_page": str(per_page),
            "page": str(page),
        }
        try:
            response = self.session.get(
                f"{self.api_url}/search/repositories", params=params, timeout=(CONNECT_TIMEOUT, READ_TIMEOUT)
            )
        except requests.Timeout as exc:
            metrics.GITHUB_REQUESTS.labels(status="timeout").inc()
            raise RetryableGitHubError(f"GitHub timed out on page {page}: {exc}") from exc
        except requests.RequestException as exc:
            metrics.GITHUB_REQUESTS.labels(status="connection-error").inc()
            raise RetryableGitHubError(f"GitHub unreachable on page {page}: {exc}") from exc
        metrics.GITHUB_REQUESTS.labels(status=str(response.status_code)).inc()
        remaining = response.headers.get("X-RateLimit-Remaining")
        if remaining and remaining.isdigit():
            metrics.GITHUB_RATE_LIMIT_REMAINING.set(int(remaining))
        return self._parse(response, page)

    def _parse(self, response: requests.Response, page: int) -> SearchPage:
        status = response.status_code
        if status in (403, 429):
            wait = _wait_from_headers(response.headers, time.time())
            if wait is not None:
                raise RateLimited(f"GitHub rate limit on page {page} ({status}); wait {wait:.0f}s", wait)
        if status >= 500:
            raise RetryableGitHubError(f"GitHub answered {status} on page {page}")
        if status >= 400:
            raise PermanentGitHubError(f"GitHub answered {status} on page {page}: {_message(response)}")
        try:
            body = response.json()
            result = SearchPage(
                items=[trim(item) for item in body["items"]],
                total_count=int(body.get("total_count", 0)),
                incomplete_results=bool(body.get("incomplete_results", False)),
            )
        except (ValueError, KeyError, TypeError, ValidationError) as exc:
            raise RetryableGitHubError(f"GitHub sent a malformed body on page {page}: {exc}") from exc
        if result.incomplete_results:
            raise IncompleteResults(f"GitHub served incomplete results on page {page}", result)
        return result


def _message(response: requests.Response) -> str:
    try:
        return str(response.json().get("message", ""))[:300]
    except ValueError:
        return response.text[:300]
