"""The gateway's status projection: a pure fold of a report's events, whatever their order."""

from __future__ import annotations

import datetime as dt
import uuid

from hypothesis import given, settings
from hypothesis import strategies as st

from shared.events import (
    EventData,
    LanguageCount,
    LanguageGroup,
    ReportAggregated,
    ReportCancelRequested,
    ReportExported,
    ReportFailed,
    ReportPageFetched,
    ReportQueued,
    ReportRequested,
    ReportSpec,
    Repository,
    event_type_of,
)
from shared.handling import EventMeta
from shared.progress import STATE_RANK, ReportStatus, apply_event

REPORT = "r-1"
SPEC = ReportSpec(period="week", since=dt.date(2026, 11, 15), layout="rows")
T0 = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.UTC)


def meta(data: EventData, *, seconds: int = 0, event_id: str | None = None, locale: str | None = None) -> EventMeta:
    return EventMeta(
        id=event_id or str(uuid.uuid4()),
        type=event_type_of(data),
        time=T0 + dt.timedelta(seconds=seconds),
        locale=locale,
    )


def repo(number: int, language: str | None) -> Repository:
    return Repository(
        id=number,
        full_name=f"o/r{number}",
        html_url=f"https://github.com/o/r{number}",
        language=language,
        stargazers_count=number,
        forks_count=0,
        created_at="2026-11-20T00:00:00Z",
    )


def lifecycle() -> list[tuple[EventData, EventMeta]]:
    """The events of one successful report, in the order the pipeline publishes them."""
    events: list[EventData] = [ReportRequested(report_id=REPORT, period="week", ref_date=dt.date(2026, 11, 22))]
    events += [ReportPageFetched(report_id=REPORT, page=page, pages=5, spec=SPEC, items=[]) for page in range(1, 6)]
    events.append(
        ReportAggregated(
            report_id=REPORT,
            spec=SPEC,
            total=3,
            languages=[
                LanguageGroup(language="Go", repositories=[repo(1, "Go")]),
                LanguageGroup(language="Unknown", repositories=[repo(2, None), repo(3, None)]),
            ],
        )
    )
    events.append(
        ReportExported(
            report_id=REPORT,
            path="/srv/reports/hotrepos-week-2026-11-15-r-1.csv",
            rows=3,
            sha256="a" * 64,
            layout="rows",
            spec=SPEC,
            repositories=3,
            top_languages=[LanguageCount(language="Unknown", count=2), LanguageCount(language="Go", count=1)],
        )
    )
    return [(data, meta(data, seconds=index, locale="fr")) for index, data in enumerate(events)]


def fold(events: list[tuple[EventData, EventMeta]]) -> ReportStatus | None:
    status: ReportStatus | None = None
    for data, event in events:
        status = apply_event(status, data, event, received_at=T0)
    return status


def test_a_report_in_order_goes_through_every_stage_with_one_step_per_page() -> None:
    status = fold(lifecycle())

    assert status is not None
    assert [(s.seq, s.state, s.pages_fetched) for s in status.progress] == [
        (1, "requested", 0),
        (2, "fetching", 1),
        (3, "fetching", 2),
        (4, "fetching", 3),
        (5, "fetching", 4),
        (6, "fetching", 5),
        (7, "aggregated", 5),
        (8, "exported", 5),
    ]
    assert status.state == "exported"
    assert (status.rows, status.sha256, status.repositories) == (3, "a" * 64, 3)
    assert status.file_name == "hotrepos-week-2026-11-15-r-1.csv"
    assert status.languages == (LanguageCount(language="Go", count=1), LanguageCount(language="Unknown", count=2))
    assert (status.period, status.since, status.locale) == ("week", dt.date(2026, 11, 15), "fr")
    assert status.first_seen == T0 and status.updated_at == T0 + dt.timedelta(seconds=7)


def queued(position: int, eta: float) -> ReportQueued:
    return ReportQueued(report_id=REPORT, priority="scheduled", position=position, eta_seconds=eta)


def test_a_report_waiting_for_budget_shows_its_latest_place_until_a_page_arrives() -> None:
    request = ReportRequested(report_id=REPORT, period="week", priority="scheduled")
    page = ReportPageFetched(report_id=REPORT, page=1, pages=5, spec=SPEC, items=[])
    status = fold(
        [
            (request, meta(request)),
            (queued(7, 70), meta(queued(7, 70), seconds=1)),
            (queued(4, 41), meta(queued(4, 41), seconds=20)),
            (queued(2, 12), meta(queued(2, 12), seconds=40)),
        ]
    )
    assert status is not None and status.priority == "scheduled"
    assert status.queue is not None and (status.queue.position, status.queue.eta_seconds) == (2, 12)
    assert status.describe() == "waiting for GitHub: 2 ahead, about 12 s"
    # One step per wait, replaced as the place changes: a long wait does not grow the stream's history.
    assert [(s.seq, s.queue.position if s.queue else None) for s in status.progress] == [(1, None), (4, 2)]
    status = apply_event(status, page, meta(page, seconds=50), received_at=T0)
    assert status is not None and status.queue is None and status.progress[-1].queue is None
    # A place told before the page arrived is old news.
    late = apply_event(status, queued(1, 5), meta(queued(1, 5), seconds=45), received_at=T0)
    assert late is not None and late.queue is None


def test_an_outcome_ends_the_wait() -> None:
    request = ReportRequested(report_id=REPORT, period="week")
    failed = ReportFailed(report_id=REPORT, stage="cancelled", reason="cancelled by request")
    status = fold([(request, meta(request)), (queued(3, 30), meta(queued(3, 30), seconds=1))])
    status = apply_event(status, failed, meta(failed, seconds=2), received_at=T0)
    assert status is not None and status.state == "failed" and status.queue is None


def test_a_redelivered_event_changes_nothing() -> None:
    events = lifecycle()
    for cut in range(1, len(events) + 1):
        before = fold(events[:cut])
        data, event = events[cut - 1]
        assert apply_event(before, data, event, received_at=T0) == before


def test_a_failure_is_final_and_keeps_its_stage_and_reason() -> None:
    events = lifecycle()[:3]
    failed = ReportFailed(report_id=REPORT, stage="fetch", reason="HTTP 422 from GitHub", spec=SPEC)
    status = fold([*events, (failed, meta(failed, seconds=10))])
    assert status is not None
    assert (status.state, status.failed_stage, status.failure_reason) == ("failed", "fetch", "HTTP 422 from GitHub")
    assert status.progress[-1].state == "failed" and status.progress[-1].pages_fetched == 2

    late = lifecycle()[-1]
    after = apply_event(status, *late, received_at=T0)
    assert after is not None and after.state == "failed" and after.progress == status.progress


def test_late_events_never_move_a_report_back() -> None:
    events = lifecycle()
    shuffled = [events[-1], events[0], *events[1:-1]]
    status = fold(shuffled)
    assert status is not None
    assert status.state == "exported"
    assert [s.state for s in status.progress] == ["exported"]
    assert status.period == "week" and status.ref_date == dt.date(2026, 11, 22)


def test_a_request_without_report_id_is_known_by_its_event_id() -> None:
    data = ReportRequested(period="day")
    status = apply_event(None, data, meta(data, event_id="evt-42"), received_at=T0)
    assert status is not None and status.report_id == "evt-42" and status.state == "requested"


def test_only_the_file_name_of_the_exported_path_is_kept() -> None:
    exported = ReportExported(
        report_id=REPORT,
        path="/srv/reports/../../etc/passwd",
        rows=0,
        sha256="b" * 64,
        layout="rows",
        spec=SPEC,
        repositories=0,
        top_languages=[],
    )
    status = apply_event(None, exported, meta(exported), received_at=T0)
    assert status is not None and status.file_name == "passwd"


def test_events_that_are_not_progress_are_ignored() -> None:
    cancel = ReportCancelRequested(report_id=REPORT)
    assert apply_event(None, cancel, meta(cancel), received_at=T0) is None


@settings(max_examples=60, deadline=None)
@given(st.permutations(range(8)), st.lists(st.integers(min_value=0, max_value=7), max_size=4))
def test_any_order_with_redeliveries_ends_exported_with_steps_that_only_go_forward(
    order: list[int], redelivered: list[int]
) -> None:
    events = lifecycle()
    status = fold([events[i] for i in [*order, *redelivered]])

    assert status is not None
    assert status.state == "exported" and status.pages_fetched == 5
    assert status.file_name == "hotrepos-week-2026-11-15-r-1.csv" and status.period == "week"
    assert [s.seq for s in status.progress] == list(range(1, len(status.progress) + 1))
    ranks = [STATE_RANK[s.state] for s in status.progress]
    assert ranks == sorted(ranks)
    assert status.progress[-1].state == "exported"
    fetching = [s.pages_fetched for s in status.progress if s.state == "fetching"]
    assert fetching == sorted(set(fetching))
