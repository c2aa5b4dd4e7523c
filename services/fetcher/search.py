"""GitHub search as the fetcher's handlers see it: a page of results, or a failure classified for retrying."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Protocol

from shared.events import Priority, Repository


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


class WaitForBudget(GitHubError):
    """The shared search budget is spent until this page's turn: not a failure, a place in line."""

    def __init__(
        self, message: str, wait_seconds: float, position: int, report_wait_seconds: float, first_of_report: bool
    ) -> None:
        super().__init__(message)
        self.wait_seconds = wait_seconds
        self.position = position
        self.report_wait_seconds = report_wait_seconds
        self.first_of_report = first_of_report


class PermanentGitHubError(GitHubError):
    """A 4xx other than a rate limit: retrying cannot help."""


@dataclass(frozen=True)
class SearchPage:
    items: list[Repository]
    total_count: int
    incomplete_results: bool


@dataclass(frozen=True)
class BudgetTicket:
    """A page's place in the line for GitHub's budget: its report's priority, then its report's arrival."""

    report_id: str
    page: int
    priority: Priority
    queued_at: dt.datetime

    @property
    def id(self) -> str:
        return ticket_id(self.report_id, self.page)


def ticket_id(report_id: str, page: int) -> str:
    return f"{report_id}:{page}"


class SearchPages(Protocol):
    def search_page(self, since: dt.date, page: int, ticket: BudgetTicket) -> SearchPage: ...
