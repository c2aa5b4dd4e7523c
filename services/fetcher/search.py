"""GitHub search as the fetcher's handlers see it: a page of results, or a failure classified for retrying."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Protocol

from shared.events import Repository


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


class SearchPages(Protocol):
    def search_page(self, since: dt.date, page: int) -> SearchPage: ...
