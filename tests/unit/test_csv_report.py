import csv
import datetime as dt
import io
from pathlib import Path

import pytest

from services.exporter.csv_report import file_name, neutralise, render, write_atomically
from shared.events import LanguageGroup, ReportAggregated, ReportSpec, Repository


def report(layout: str = "rows") -> ReportAggregated:
    def repo(id: int, name: str, stars: int, description: str | None) -> Repository:
        return Repository(
            id=id,
            full_name=name,
            html_url=f"https://github.com/{name}",
            description=description,
            language=None,
            stargazers_count=stars,
            forks_count=id,
            created_at="2026-11-20T01:02:03Z",
        )

    return ReportAggregated(
        report_id="r1",
        spec=ReportSpec(period="week", since=dt.date(2026, 11, 15), layout=layout),  # type: ignore[arg-type]
        total=3,
        languages=[
            LanguageGroup(language="Go", repositories=[repo(1, "a/x", 9, '=HYPERLINK("http://evil")')]),
            LanguageGroup(
                language="Unknown", repositories=[repo(2, "b/y", 5, 'comma, "quote"\nnewline'), repo(3, "c/z", 1, None)]
            ),
        ],
    )


@pytest.mark.parametrize("cell", ["=1+1", "+1", "-2", "@SUM(A1)", "\tx", "\rx"])
def test_formula_cells_are_neutralised(cell: str) -> None:
    assert neutralise(cell) == "'" + cell


def test_plain_cells_are_untouched() -> None:
    assert neutralise("hello =x") == "hello =x"


def test_rows_layout_exact_bytes() -> None:
    content, rows = render(report())
    assert rows == 3
    assert content == (
        b"language,full_name,stars,forks,created_at,html_url,description\r\n"
        b'Go,a/x,9,1,2026-11-20T01:02:03Z,https://github.com/a/x,"\'=HYPERLINK(""http://evil"")"\r\n'
        b'Unknown,b/y,5,2,2026-11-20T01:02:03Z,https://github.com/b/y,"comma, ""quote""\nnewline"\r\n'
        b"Unknown,c/z,1,3,2026-11-20T01:02:03Z,https://github.com/c/z,\r\n"
    )
    parsed = list(csv.reader(io.StringIO(content.decode())))
    assert parsed[2][6] == 'comma, "quote"\nnewline'


def test_by_language_layout() -> None:
    content, rows = render(report("by-language"))
    assert rows == 2
    assert content == b"Go,a/x\r\nUnknown,b/y,c/z\r\n"


def test_file_name_holds_period_since_and_id() -> None:
    assert file_name("r1", report().spec) == "hotrepos-week-2026-11-15-r1.csv"


def test_write_is_atomic_and_stays_inside_the_directory(tmp_path: Path) -> None:
    path = write_atomically(tmp_path, "a.csv", b"x")
    assert path.read_bytes() == b"x" and [p.name for p in tmp_path.iterdir()] == ["a.csv"]
    with pytest.raises(ValueError):
        write_atomically(tmp_path, "../escape.csv", b"x")
    assert not (tmp_path.parent / "escape.csv").exists()
