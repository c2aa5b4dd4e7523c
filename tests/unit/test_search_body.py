"""The one-pass search body parser keeps exactly what trim() keeps, and trim()'s tolerance."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from services.fetcher.github import parse_search_body, trim
from tests.fake_github.search import SearchQuery, render_page
from tests.fake_github.state import FakeState


@pytest.fixture(scope="module")
def body() -> bytes:
    state = FakeState(seed=7, today=dt.date(2026, 11, 22))
    return state.index.page(SearchQuery(dt.date(2026, 10, 23), True, 1, 100, ())).body


def test_full_items_give_the_same_repositories_as_trim(body: bytes) -> None:
    raw = json.loads(body)
    page = parse_search_body(body)
    assert page.items == [trim(item) for item in raw["items"]]
    assert (page.total_count, page.incomplete_results) == (raw["total_count"], False)


def test_items_missing_fields_that_trim_defaults_are_still_accepted(body: bytes) -> None:
    items = json.loads(body)["items"][:3]
    for item in items:
        del item["stargazers_count"], item["forks_count"], item["created_at"], item["language"]
    page = parse_search_body(render_page(3, items, incomplete=True).body)
    assert page.items == [trim(item) for item in items]
    assert page.items[0].stargazers_count == 0 and page.incomplete_results


def test_a_truncated_body_is_an_error(body: bytes) -> None:
    with pytest.raises(ValueError):
        parse_search_body(body[: len(body) // 2])
