"""The aggregator's, the exporter's and the cancel handlers, called directly with in-memory fakes."""

from __future__ import annotations

import datetime as dt
import errno
import os
from pathlib import Path

import pytest

from services.aggregator.fan_in import PageArrival
from services.aggregator.handlers import handle_report_page_fetched
from services.exporter.handlers import handle_report_aggregated
from shared.control import CANCELLED_STAGE, handle_report_cancel_requested
from shared.events import (
    LanguageGroup,
    ReportAggregated,
    ReportCancelRequested,
    ReportPageFetched,
    ReportSpec,
    Repository,
    derived_event_id,
)
from shared.handling import RetryLater
from tests.support.fakes import InMemoryCancellations, InMemoryOutcomes, meta_of

SPEC = ReportSpec(period="day", since=dt.date(2026, 11, 21))


def repo(number: int, language: str | None = "Python") -> Repository:
    return Repository(
        id=number,
        full_name=f"o/r{number}",
        html_url=f"https://github.com/o/r{number}",
        language=language,
        stargazers_count=number,
        forks_count=0,
        created_at="2026-11-21T00:00:00Z",
    )


class Pages:
    """A fan-in in a dict: complete once every page of the report is in."""

    def __init__(self) -> None:
        self.pages: dict[str, dict[int, list[Repository]]] = {}
        self.incomplete: dict[str, set[int]] = {}

    def add_page(
        self, report_id: str, page: int, pages: int, items: list[Repository], *, incomplete: bool = False
    ) -> PageArrival:
        stored = self.pages.setdefault(report_id, {})
        newly = page not in stored
        stored.setdefault(page, items)
        flagged = self.incomplete.setdefault(report_id, set())
        if newly and incomplete:
            flagged.add(page)
        complete = len(stored) >= pages
        return PageArrival(
            newly, len(stored), dict(stored) if complete else None, tuple(sorted(flagged)) if complete else ()
        )


def page_event(page: int, items: list[Repository]) -> ReportPageFetched:
    return ReportPageFetched(report_id="r-1", page=page, pages=2, spec=SPEC, items=items)


def test_pages_fan_in_to_one_aggregation_deduplicated_and_grouped() -> None:
    pages = Pages()
    first = page_event(1, [repo(3), repo(2, None)])
    assert handle_report_page_fetched(first, meta_of(first), pages=pages) == []
    second = page_event(2, [repo(2, None), repo(1, "Go")])
    [outgoing] = handle_report_page_fetched(second, meta_of(second), pages=pages)
    aggregated = outgoing.data
    assert isinstance(aggregated, ReportAggregated)
    assert outgoing.event_id == derived_event_id("r-1", "aggregated")
    assert aggregated.total == 3
    assert [(g.language, [r.id for r in g.repositories]) for g in aggregated.languages] == [
        ("Go", [1]),
        ("Python", [3]),
        ("Unknown", [2]),
    ]
    # A page delivered again after completion republishes the same event, which downstream dedupes.
    [again] = handle_report_page_fetched(second, meta_of(second), pages=pages)
    assert again == outgoing


def test_pages_github_served_in_part_make_the_aggregation_say_so() -> None:
    pages = Pages()
    first = page_event(1, [repo(1)]).model_copy(update={"incomplete_results": True})
    handle_report_page_fetched(first, meta_of(first), pages=pages)
    second = page_event(2, [repo(2)])
    [outgoing] = handle_report_page_fetched(second, meta_of(second), pages=pages)
    assert isinstance(outgoing.data, ReportAggregated) and outgoing.data.incomplete_pages == [1]


def aggregated(report_id: str = "r-1", incomplete_pages: list[int] | None = None) -> ReportAggregated:
    groups = [LanguageGroup(language="Python", repositories=[repo(2), repo(1)])]
    return ReportAggregated(
        report_id=report_id, spec=SPEC, total=2, languages=groups, incomplete_pages=incomplete_pages or []
    )


def test_the_exporter_writes_the_csv_and_claims_the_report_exported(tmp_path: Path) -> None:
    outcomes = InMemoryOutcomes()
    event = aggregated()
    [exported] = handle_report_aggregated(event, meta_of(event), reports_dir=tmp_path, outcomes=outcomes)
    path = Path(exported.path)
    assert path.parent == tmp_path and path.read_text().startswith("language,full_name")
    assert (exported.rows, exported.repositories, exported.layout) == (2, 2, "rows")
    assert [(c.language, c.count) for c in exported.top_languages] == [("Python", 2)]
    assert exported.incomplete_pages == []
    assert outcomes.decided == {"r-1": "exported"}


def test_a_partial_report_is_exported_as_partial(tmp_path: Path) -> None:
    event = aggregated("r-9", incomplete_pages=[3])
    [exported] = handle_report_aggregated(event, meta_of(event), reports_dir=tmp_path, outcomes=InMemoryOutcomes())
    assert exported.incomplete_pages == [3]


def test_the_exporter_removes_its_csv_when_the_report_already_ended_otherwise(tmp_path: Path) -> None:
    outcomes = InMemoryOutcomes()
    outcomes.claim("r-1", "failed")
    event = aggregated()
    assert handle_report_aggregated(event, meta_of(event), reports_dir=tmp_path, outcomes=outcomes) == []
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("code", "retried"), [(errno.ENOSPC, True), (errno.EROFS, True), (errno.ENAMETOOLONG, False)])
def test_a_full_disk_is_retried_later_and_another_write_error_is_not_hidden(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, retried: bool
) -> None:
    def refuse(directory: Path, name: str, content: bytes) -> Path:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr("services.exporter.handlers.write_atomically", refuse)
    event = aggregated()
    outcomes = InMemoryOutcomes()
    with pytest.raises(RetryLater if retried else OSError):
        handle_report_aggregated(event, meta_of(event), reports_dir=tmp_path, outcomes=outcomes)
    assert outcomes.decided == {}  # nothing written, nothing claimed


def test_a_cancel_is_remembered_and_fails_the_report_where_the_service_may() -> None:
    cancellations = InMemoryCancellations()
    event = ReportCancelRequested(report_id="r-1", reason="changed my mind")
    [failed] = handle_report_cancel_requested(event, meta_of(event), cancellations=cancellations, may_fail_reports=True)
    assert (failed.report_id, failed.stage, failed.reason) == ("r-1", CANCELLED_STAGE, "changed my mind")
    assert cancellations.is_cancelled("r-1")


def test_a_service_that_never_ends_reports_only_stops_its_own_work() -> None:
    cancellations = InMemoryCancellations()
    event = ReportCancelRequested(report_id="r-2")
    assert (
        handle_report_cancel_requested(event, meta_of(event), cancellations=cancellations, may_fail_reports=False) == []
    )
    assert cancellations.is_cancelled("r-2")
