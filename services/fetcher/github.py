"""GitHub search adapter: one page of repositories over HTTP, sharing the budget and the page cache."""

from __future__ import annotations

import datetime as dt
import email.utils
import json
import os
import time
import uuid
from collections.abc import Mapping
from typing import Any, NamedTuple

import certifi
import requests.utils
import structlog
import urllib3
from pydantic import BaseModel, ValidationError

from services.fetcher.github_cache import RedisPageCache, github_scope
from services.fetcher.rate_budget import RedisRequestBudget
from services.fetcher.search import (
    BudgetTicket,
    IncompleteResults,
    PermanentGitHubError,
    RateLimited,
    RetryableGitHubError,
    SearchPage,
    WaitForBudget,
)
from shared import metrics, tracing
from shared.events import ITEMS_PER_PAGE, Repository

log = structlog.get_logger("hotrepos.fetcher")

CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 30.0
# A page waits this long for the shared budget in its thread; a longer wait goes back to the broker.
MAX_BUDGET_WAIT_IN_THREAD = 2.0
LEAD_ATTEMPTS = 3
# Connections kept open to GitHub: one per page a fetcher process may have in flight (first attempts
# and Celery's retries); more at once are opened and closed.
CONNECTIONS_KEPT = 16
# A failed request is the page's to retry, with its backoff and its budget; a redirect is GitHub's
# answer as it came.
NO_RETRIES = urllib3.Retry(total=False)


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


class _SearchBody(BaseModel):
    total_count: int = 0
    incomplete_results: bool = False
    items: list[Repository]


def parse_search_body(content: bytes) -> SearchPage:
    """Parse and trim in one pass: GitHub's other fields are skipped while parsing, never built."""
    try:
        body = _SearchBody.model_validate_json(content, extra="ignore")
    except ValidationError:
        # Items without a field trim() defaults (stars, forks, creation time) take the lenient path.
        raw = json.loads(content)
        return SearchPage(
            items=[trim(item) for item in raw["items"]],
            total_count=int(raw.get("total_count", 0)),
            incomplete_results=bool(raw.get("incomplete_results", False)),
        )
    return SearchPage(body.items, body.total_count, body.incomplete_results)


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


class Answer(NamedTuple):
    """GitHub's answer to one search request, its body read whole."""

    status_code: int
    headers: Mapping[str, str]
    body: bytes


def connections_to(url: str) -> urllib3.PoolManager:
    """Keep-alive connections to GitHub, through the proxy the environment names for it, if any.

    urllib3 itself, not requests: requests' own work on each request (merging the environment's
    settings, cookies, hooks) cost more than reading the half-megabyte page (docs/performance.md).
    What requests read from the environment on every request is read here once, with its own
    helpers: the proxy (HTTPS_PROXY, ALL_PROXY, NO_PROXY, in either case), its credentials, and a
    CA bundle in place of certifi's.
    """
    options: dict[str, Any] = {"maxsize": CONNECTIONS_KEPT, "retries": NO_RETRIES, **_trusted_roots()}
    proxy = requests.utils.select_proxy(url, requests.utils.get_environ_proxies(url))
    if not proxy:
        return urllib3.PoolManager(**options)
    proxy = requests.utils.prepend_scheme_if_needed(proxy, "http")
    username, password = requests.utils.get_auth_from_url(proxy)
    credentials = urllib3.make_headers(proxy_basic_auth=f"{username}:{password}") if username else None
    return urllib3.ProxyManager(proxy, proxy_headers=credentials, **options)


def _trusted_roots() -> dict[str, str]:
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or certifi.where()
    return {"ca_cert_dir": bundle} if os.path.isdir(bundle) else {"ca_certs": bundle}


class GitHubClient:
    def __init__(
        self,
        api_url: str,
        token: str | None,
        *,
        cache: RedisPageCache | None = None,
        budget: RedisRequestBudget | None = None,
        read_timeout: float = READ_TIMEOUT,
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self.read_timeout = read_timeout
        self.cache = cache
        self.budget = budget
        self._scope = github_scope(self.api_url, token)
        self._search_url = f"{self.api_url}/search/repositories"
        self._http = connections_to(self.api_url)
        self._timeout = urllib3.Timeout(connect=CONNECT_TIMEOUT, read=read_timeout)
        self._headers = {
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": "2022-11-28",
            "User-Agent": "hotrepos",
            **urllib3.util.make_headers(accept_encoding=True),
        }
        if token:
            self._headers["Authorization"] = f"Bearer {token}"

    def search_page(
        self, since: dt.date, page: int, ticket: BudgetTicket | None = None, per_page: int = ITEMS_PER_PAGE
    ) -> SearchPage:
        if ticket is None:
            ticket = BudgetTicket(uuid.uuid4().hex, page, "interactive", dt.datetime.now(dt.UTC))
        with tracing.span("fetch report page", attributes={"hotrepos.page": page}):
            return self._search_page(since, page, per_page, ticket)

    def _search_page(self, since: dt.date, page: int, per_page: int, ticket: BudgetTicket) -> SearchPage:
        params = {
            "q": f"created:>={since.isoformat()}",
            "sort": "stars",
            "order": "desc",
            "per_page": str(per_page),
            "page": str(page),
        }
        if self.cache is None:
            return self._parse(self._request(params, page, None, ticket), page)
        return self._search_shared(self.cache, params, page, ticket)

    def _search_shared(
        self, cache: RedisPageCache, params: dict[str, str], page: int, ticket: BudgetTicket
    ) -> SearchPage:
        """Identical searches from any replica cost one request: served fresh, awaited, or revalidated."""
        key = cache.key(self._scope, params)
        lead = cached = None
        for _ in range(LEAD_ATTEMPTS):
            cached = cache.get(key)
            if cached is not None and cached.fresh:
                return self._from_cache(cached.items, cached.total_count, ticket)
            lead = cache.lead(key)
            if lead is not None:
                break
            awaited = cache.wait(key)
            if awaited is not None:
                return self._from_cache(awaited.items, awaited.total_count, ticket)
        try:
            answer = self._request(params, page, cached.etag if cached else None, ticket)
            if answer.status_code == 304 and cached is not None:
                cache.refresh(key)
                return SearchPage(cached.items, cached.total_count, incomplete_results=False)
            result = self._parse(answer, page)
            cache.put(key, result.items, result.total_count, answer.headers.get("ETag"))
            return result
        finally:
            if lead is not None:
                cache.release(key, lead)

    def _from_cache(self, items: list[Repository], total_count: int, ticket: BudgetTicket) -> SearchPage:
        # A page that waited in line for budget, then found its search answered by another report's
        # page, gives its place up.
        if self.budget is not None:
            self.budget.withdraw([ticket.id])
        return SearchPage(items, total_count, incomplete_results=False)

    def _take_budget(self, page: int, ticket: BudgetTicket) -> str | None:
        if self.budget is None:
            return None
        deadline = time.monotonic() + MAX_BUDGET_WAIT_IN_THREAD
        while True:
            grant = self.budget.take(ticket)
            metrics.GITHUB_BUDGET_WAITING.set(grant.pages_waiting)
            if grant.slot is not None:
                return grant.slot
            if time.monotonic() + grant.wait_seconds > deadline:
                raise WaitForBudget(
                    f"waiting for the GitHub search budget ({self.budget.limit} per {self.budget.window_seconds:g}s):"
                    f" page {page} is due in {grant.wait_seconds:.1f}s, {grant.position} reports ahead",
                    grant.wait_seconds,
                    grant.position,
                    grant.report_wait_seconds,
                    grant.first_of_report,
                )
            time.sleep(grant.wait_seconds)

    def _request(self, params: dict[str, str], page: int, etag: str | None, ticket: BudgetTicket) -> Answer:
        slot = self._take_budget(page, ticket)
        counted = True
        try:
            # The body in one read: a half-megabyte page read in small chunks is a trip back for
            # the GIL each.
            response = self._http.request(
                "GET",
                self._search_url,
                fields=params,
                headers={**self._headers, "If-None-Match": etag} if etag else self._headers,
                timeout=self._timeout,
            )
            counted = response.status != 304  # GitHub does not count a 304 against the limit
            answer = Answer(response.status, response.headers, response.data)
        except urllib3.exceptions.HTTPError as exc:
            # urllib3 counts a refused connection and a failed name lookup as connect timeouts.
            timed_out = isinstance(exc, urllib3.exceptions.TimeoutError) and not isinstance(
                exc, urllib3.exceptions.NewConnectionError
            )
            metrics.GITHUB_REQUESTS.labels(status="timeout" if timed_out else "connection-error").inc()
            what = "timed out" if timed_out else "unreachable"
            raise RetryableGitHubError(f"GitHub {what} on page {page}: {exc}") from exc
        finally:
            if slot is not None and self.budget is not None:
                try:
                    self.budget.finish(slot, counted=counted)
                except Exception as exc:
                    # The answer (or the error) is what matters; the slot's record expires on its own.
                    log.warning("budget.finish_failed", error=str(exc))
        metrics.GITHUB_REQUESTS.labels(status=str(answer.status_code)).inc()
        remaining = answer.headers.get("X-RateLimit-Remaining")
        if remaining and remaining.isdigit():
            metrics.GITHUB_RATE_LIMIT_REMAINING.set(int(remaining))
        return answer

    def _parse(self, answer: Answer, page: int) -> SearchPage:
        status = answer.status_code
        if status in (403, 429):
            wait = _wait_from_headers(answer.headers, time.time())
            if wait is not None:
                if self.budget is not None:
                    self.budget.block_for(wait)
                raise RateLimited(f"GitHub rate limit on page {page} ({status}); wait {wait:.0f}s", wait)
        if status >= 500:
            raise RetryableGitHubError(f"GitHub answered {status} on page {page}")
        if status >= 400:
            raise PermanentGitHubError(f"GitHub answered {status} on page {page}: {_message(answer)}")
        if status >= 300:
            # Not followed: the token would go to wherever it points, or be dropped on the way.
            where = str(answer.headers.get("Location", ""))[:300]
            raise PermanentGitHubError(
                f"GitHub answered {status} on page {page}, a redirect to {where or 'nowhere'}:"
                " GITHUB_API_URL should name the API itself"
            )
        try:
            result = parse_search_body(answer.body)
        except (ValueError, KeyError, TypeError, ValidationError) as exc:
            raise RetryableGitHubError(f"GitHub sent a malformed body on page {page}: {exc}") from exc
        if result.incomplete_results:
            raise IncompleteResults(f"GitHub served incomplete results on page {page}", result)
        return result


def _message(answer: Answer) -> str:
    try:
        return str(json.loads(answer.body).get("message", ""))[:300]
    except (ValueError, AttributeError):
        return answer.body[:300].decode(errors="replace")
