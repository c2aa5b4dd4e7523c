import datetime as dt
import json

import pytest
from pydantic import ValidationError

from shared.context import EventContext
from shared.events import CloudEvent, ReportPageFetched, ReportRequested, ReportSpec, Repository, since_date
from shared.publisher import build_event, encode_event


@pytest.mark.parametrize(
    ("period", "expected"),
    [("day", dt.date(2026, 11, 21)), ("week", dt.date(2026, 11, 15)), ("month", dt.date(2026, 10, 23))],
)
def test_date_windows(period: str, expected: dt.date) -> None:
    assert since_date(period, dt.date(2026, 11, 22)) == expected


@pytest.mark.parametrize("report_id", ["../etc/passwd", "a/b", "", "x" * 65, "a..b", ".hidden"])
def test_report_ids_that_could_escape_a_directory_are_refused(report_id: str) -> None:
    with pytest.raises(ValidationError):
        ReportRequested(report_id=report_id, period="day")


@pytest.mark.parametrize(
    "data",
    [
        {"period": "year"},
        {"period": "day", "layout": "pdf"},
        {"period": "day", "notify": "not-an-email"},
        {"period": "day", "ref_date": "2026-13-01"},
        {"period": "day", "unexpected": 1},
    ],
)
def test_invalid_requests_fail_their_schema(data: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        ReportRequested.model_validate(data)


@pytest.mark.parametrize(
    "context",
    [EventContext("r-1", "de-DE", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"), EventContext(None, None)],
)
def test_an_event_is_encoded_in_one_pass_to_the_bytes_its_data_as_a_dict_gives(context: EventContext) -> None:
    # A forwarder (the webhooks service) re-encodes an event it parsed: the bytes must not change.
    repository = Repository(
        id=7,
        full_name="o/r",
        html_url="https://github.com/o/r",
        description=None,
        language="Go",
        stargazers_count=3,
        forks_count=1,
        created_at="2026-11-20T00:00:00Z",
    )
    spec = ReportSpec(period="week", since=dt.date(2026, 11, 15), requested_at=dt.datetime(2026, 11, 22, tzinfo=dt.UTC))
    page = ReportPageFetched(report_id="r-1", page=2, pages=5, spec=spec, items=[repository])
    event = build_event(page, source="hotrepos/fetcher", context=context)
    as_parsed = event.model_copy(update={"data": json.loads(page.model_dump_json())})
    assert encode_event(event) == as_parsed.model_dump_json(exclude_none=True).encode()
    assert CloudEvent.model_validate_json(encode_event(event)).data_as(ReportPageFetched) == page
