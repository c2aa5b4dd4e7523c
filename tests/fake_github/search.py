"""The repository search itself: query parsing, filtering, sorting, pages."""

from __future__ import annotations

import hashlib
import json
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any
from urllib.parse import urlencode

from .responses import SEARCH_DOCS, error_body

MAX_RESULTS = 1000
MAX_PER_PAGE = 100
DEFAULT_PER_PAGE = 30
PAGE_CACHE_LIMIT = 4096
OPTIONAL_FIELDS = ("description", "language", "license", "homepage")


class SearchError(Exception):
    """A request GitHub would refuse; carries the status and JSON body to send."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(body.get("message", ""))
        self.status = status
        self.body = body


@dataclass(frozen=True)
class SearchQuery:
    """A parsed `GET /search/repositories` request."""

    created_since: date
    descending: bool
    page: int
    per_page: int
    params: tuple[tuple[str, str], ...]

    @property
    def start(self) -> int:
        """Index of the page's first result in the full ordering."""
        return (self.page - 1) * self.per_page


@dataclass(frozen=True)
class RenderedPage:
    """A page's exact response body with its ETag."""

    body: bytes
    etag: str
    total_count: int


def _validation_failed(field: str, code: str, message: str | None = None) -> SearchError:
    error: dict[str, Any] = {"resource": "Search", "field": field, "code": code}
    if message:
        error["message"] = message
    body = error_body("Validation Failed", 422, SEARCH_DOCS)
    body["errors"] = [error]
    return SearchError(422, body)


def _lenient_int(raw: str | None, default: int) -> int:
    # GitHub silently falls back to defaults for garbage paging values.
    try:
        return int(raw) if raw is not None else default
    except ValueError:
        return default


def parse_created_since(q: str) -> date:
    """The earliest creation date a `created:>=D` or `created:>D` query admits."""
    terms = q.split()
    if not terms:
        raise _validation_failed("q", "missing")
    since: date | None = None
    for term in terms:
        qualifier, _, value = term.partition(":")
        if qualifier != "created" or not value.startswith(">"):
            raise _validation_failed("q", "invalid", f"the fake only understands created:>=YYYY-MM-DD, not {term!r}")
        exclusive = not value.startswith(">=")
        try:
            day = date.fromisoformat(value.lstrip(">="))
        except ValueError:
            raise _validation_failed("q", "invalid", f"bad date in {term!r}") from None
        since = day + timedelta(days=1) if exclusive else day
    assert since is not None
    return since


def parse_search_query(params: Sequence[tuple[str, str]]) -> SearchQuery:
    """Validate query parameters like GitHub does; raises SearchError (422)."""
    values = dict(params)
    q = values.get("q")
    if q is None or not q.strip():
        raise _validation_failed("q", "missing")
    since = parse_created_since(q)
    sort = values.get("sort", "stars")
    if sort != "stars":
        raise _validation_failed("sort", "invalid", "the fake only supports sort=stars")
    order = values.get("order", "desc")
    if order not in ("asc", "desc"):
        raise _validation_failed("order", "invalid")
    per_page = min(max(_lenient_int(values.get("per_page"), DEFAULT_PER_PAGE), 1), MAX_PER_PAGE)
    page = max(_lenient_int(values.get("page"), 1), 1)
    query = SearchQuery(since, order == "desc", page, per_page, tuple(params))
    if query.start >= MAX_RESULTS:
        raise SearchError(422, error_body("Only the first 1000 search results are available", 422, SEARCH_DOCS))
    return query


def render_page(total_count: int, items: Sequence[dict[str, Any]], incomplete: bool = False) -> RenderedPage:
    """Serialize a search response body exactly as clients will receive it."""
    body = json.dumps(
        {"total_count": total_count, "incomplete_results": incomplete, "items": list(items)},
        ensure_ascii=False,
        separators=(",", ":"),
    ).encode("utf-8")
    return RenderedPage(body, f'W/"{hashlib.sha256(body).hexdigest()}"', total_count)


def link_header(base_url: str, query: SearchQuery, total_count: int) -> str | None:
    """GitHub's pagination `Link` header, or None when everything fits one page."""
    last = math.ceil(min(total_count, MAX_RESULTS) / query.per_page)
    if last <= 1 and query.page <= 1:
        return None

    def url_for(page: int) -> str:
        params = [(k, v) for k, v in query.params if k != "page"] + [("page", str(page))]
        return f"{base_url}/search/repositories?{urlencode(params)}"

    links: list[tuple[int, str]] = []
    if query.page > 1:
        links.append((query.page - 1, "prev"))
    if query.page < last:
        links += [(query.page + 1, "next"), (last, "last")]
    if query.page > 1:
        links.append((1, "first"))
    return ", ".join(f'<{url_for(page)}>; rel="{rel}"' for page, rel in links)


class SearchIndex:
    """Sorted, filtered views of a dataset with per-page serialized bytes cached."""

    def __init__(self, repositories: Sequence[dict[str, Any]]) -> None:
        self._by_stars = sorted(repositories, key=lambda r: (-r["stargazers_count"], r["id"]))
        self._lock = threading.Lock()
        self._matches: dict[tuple[date, bool], list[dict[str, Any]]] = {}
        self._pages: dict[tuple[date, bool, int, int], RenderedPage] = {}

    def matches(self, created_since: date, descending: bool = True) -> list[dict[str, Any]]:
        """Every repository created on or after the date, in search order."""
        key = (created_since, descending)
        with self._lock:
            cached = self._matches.get(key)
            if cached is None:
                floor = created_since.isoformat()
                # ISO timestamps compare correctly as strings against a date prefix.
                cached = [r for r in self._by_stars if r["created_at"] >= floor]
                if not descending:
                    # Ascending by stars still breaks ties by ascending id, like GitHub.
                    cached.sort(key=lambda r: (r["stargazers_count"], r["id"]))
                self._matches[key] = cached
            return cached

    def page_items(self, query: SearchQuery) -> list[dict[str, Any]]:
        """The items on the query's page, honouring the 1000-result cap."""
        matches = self.matches(query.created_since, query.descending)
        end = min(query.start + query.per_page, MAX_RESULTS)
        return matches[query.start : end]

    def previous_item(self, query: SearchQuery) -> dict[str, Any] | None:
        """The last item of the preceding page, if any."""
        matches = self.matches(query.created_since, query.descending)
        if query.start == 0 or query.start > len(matches):
            return None
        return matches[query.start - 1]

    def total_count(self, query: SearchQuery) -> int:
        """How many repositories match, uncapped, as GitHub reports it."""
        return len(self.matches(query.created_since, query.descending))

    def page(self, query: SearchQuery) -> RenderedPage:
        """The honest response for the query, serialized once and reused."""
        key = (query.created_since, query.descending, query.page, query.per_page)
        with self._lock:
            cached = self._pages.get(key)
        if cached is not None:
            return cached
        rendered = render_page(self.total_count(query), self.page_items(query))
        with self._lock:
            if len(self._pages) >= PAGE_CACHE_LIMIT:
                self._pages.clear()
            return self._pages.setdefault(key, rendered)


def without_optional_fields(items: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Copies of the items with optional keys absent, as sparse API answers have."""
    return [{k: v for k, v in item.items() if k not in OPTIONAL_FIELDS} for item in items]
