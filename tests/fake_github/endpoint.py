"""Answers GitHub API requests: search pages, errors, faults, rate limits, 304s."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .faults import ERROR_KINDS, FaultRule
from .ratelimit import RateDecision
from .responses import error_body, rate_limit_body, secondary_rate_limit_body, status_error_body
from .search import (
    MAX_RESULTS,
    RenderedPage,
    SearchError,
    SearchQuery,
    link_header,
    parse_search_query,
    render_page,
    without_optional_fields,
)
from .state import FakeState

SEARCH_PATH = "/search/repositories"
JSON_CONTENT_TYPE = "application/json; charset=utf-8"
# Sent with rate-limit faults when no real limit is configured: GitHub's
# search budget for authenticated clients.
GITHUB_SEARCH_LIMIT = 30
GITHUB_HEADERS = {
    "Cache-Control": "private, max-age=60, s-maxage=60",
    "Vary": "Accept, Authorization, Cookie, X-GitHub-OTP",
    "X-GitHub-Media-Type": "github.v3; format=json",
    "X-GitHub-Api-Version-Selected": "2022-11-28",
    "X-Content-Type-Options": "nosniff",
}


@dataclass(frozen=True)
class Reply:
    """A complete HTTP answer: status, headers and body bytes."""

    status: int
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    rate_limited: bool = False


@dataclass(frozen=True)
class ApiRequest:
    """The parts of an HTTP request that the GitHub endpoint looks at."""

    path: str
    params: tuple[tuple[str, str], ...]
    client_ip: str
    base_url: str
    token: str | None = None
    if_none_match: str | None = None

    @property
    def rate_key(self) -> str:
        """Whose budget the request spends: its token, else its IP address."""
        return f"token:{self.token}" if self.token else f"ip:{self.client_ip}"


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer X` or `token X` header."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() in ("bearer", "token") and token.strip():
        return token.strip()
    return None


def page_param(params: tuple[tuple[str, str], ...]) -> int:
    """The requested page number as GitHub would read it (garbage means 1)."""
    raw = dict(params).get("page", "1")
    return max(int(raw), 1) if raw.isdigit() else 1


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """Weak ETag comparison as HTTP defines it for If-None-Match."""
    if not if_none_match:
        return False
    wanted = etag.removeprefix("W/")
    candidates = (tag.strip().removeprefix("W/") for tag in if_none_match.split(","))
    return any(tag in ("*", wanted) for tag in candidates)


def json_reply(
    status: int, payload: Any, headers: Mapping[str, str] | None = None, rate_limited: bool = False
) -> Reply:
    """A reply whose body is the payload as UTF-8 JSON."""
    body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
    return Reply(status, body, {"Content-Type": JSON_CONTENT_TYPE, **(headers or {})}, rate_limited)


def _base_headers(state: FakeState, decision: RateDecision) -> dict[str, str]:
    return {**GITHUB_HEADERS, **decision.headers(), "X-GitHub-Request-Id": state.next_request_id()}


def _rate_limited_reply(state: FakeState, request: ApiRequest, limit: int, reset_epoch: int) -> Reply:
    exhausted = RateDecision(False, limit, 0, limit, reset_epoch)
    body = rate_limit_body(request.token, request.client_ip)
    return json_reply(403, body, _base_headers(state, exhausted), rate_limited=True)


def _fault_error_reply(state: FakeState, request: ApiRequest, fault: FaultRule) -> Reply:
    if fault.kind == "rate_limit":
        limit = state.limiter.limit or GITHUB_SEARCH_LIMIT
        return _rate_limited_reply(state, request, limit, math.ceil(time.time() + fault.reset_in))
    headers = _base_headers(state, state.limiter.take(request.rate_key, consume=False))
    if fault.kind == "retry_after":
        retry_after = math.ceil(fault.wait_seconds)
        body = secondary_rate_limit_body(headers["X-GitHub-Request-Id"])
        return json_reply(429, body, {**headers, "Retry-After": str(retry_after)}, rate_limited=True)
    if isinstance(fault.body, str):
        text_headers = {**headers, "Content-Type": "text/html; charset=utf-8"}
        return Reply(fault.status, fault.body.encode("utf-8"), text_headers)
    payload = fault.body if fault.body is not None else status_error_body(fault.status)
    return json_reply(fault.status, payload, headers)


def _page_with_fault(state: FakeState, query: SearchQuery, fault: FaultRule | None) -> RenderedPage:
    index = state.index
    kind = fault.kind if fault else None
    if kind not in ("incomplete", "shift", "missing_fields"):
        return index.page(query)
    items = index.page_items(query)
    if kind == "shift":
        previous = index.previous_item(query)
        if previous is not None:
            room = min(query.per_page, MAX_RESULTS - query.start)
            items = [previous, *items][:room]
    if kind == "missing_fields":
        items = without_optional_fields(items)
    return render_page(index.total_count(query), items, incomplete=kind == "incomplete")


def answer_search(state: FakeState, request: ApiRequest) -> Reply | None:
    """Answer `GET /search/repositories`; None means drop the connection unanswered."""
    try:
        query = parse_search_query(request.params)
    except SearchError as error:
        decision = state.limiter.take(request.rate_key)
        if not decision.allowed:
            return _rate_limited_reply(state, request, decision.limit, decision.reset_epoch)
        return json_reply(error.status, error.body, _base_headers(state, decision))

    fault = state.faults.take(query.page)
    if fault is not None:
        state.stats.record_fault(fault.kind)
        if fault.kind in ERROR_KINDS:
            return _fault_error_reply(state, request, fault)
        if fault.kind == "timeout" and not state.pause(fault.wait_seconds):
            return None

    page = _page_with_fault(state, query, fault)
    not_modified = etag_matches(request.if_none_match, page.etag)
    # A 304 costs nothing, as on GitHub, so only full answers spend budget.
    decision = state.limiter.take(request.rate_key, consume=not not_modified)
    if not decision.allowed:
        return _rate_limited_reply(state, request, decision.limit, decision.reset_epoch)

    headers = {**_base_headers(state, decision), "ETag": page.etag}
    link = link_header(request.base_url, query, page.total_count)
    if link:
        headers["Link"] = link
    if not_modified:
        return Reply(304, b"", headers)
    body = page.body
    if fault is not None and fault.kind == "truncated":
        body = body[: len(body) // 2]
    return Reply(200, body, {"Content-Type": JSON_CONTENT_TYPE, **headers})


def answer_api_request(state: FakeState, request: ApiRequest) -> Reply | None:
    """Answer any non-control request after the configured latency."""
    is_search = request.path == SEARCH_PATH
    state.stats.record_request(request.token, page_param(request.params) if is_search else None)
    if not state.pause(state.latency_ms / 1000):
        return None
    if not is_search:
        return json_reply(404, error_body("Not Found", 404))
    return answer_search(state, request)
