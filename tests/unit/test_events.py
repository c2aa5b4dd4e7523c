import datetime as dt

import pytest
from pydantic import ValidationError

from shared.events import ReportRequested, since_date


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
