"""`hotrepos logs REPORT_ID`: one report's lines from every file under LOG_DIR, merged in time order."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hotrepos_cli.__main__ import main


def line(timestamp: str, event: str, **fields: str) -> str:
    return json.dumps({"timestamp": timestamp, "event": event, **fields})


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    (tmp_path / "nested").mkdir()
    fetched = line("2026-11-22T10:00:02.000001Z", "fetch.done", report_id="r-1", service="fetcher")
    (tmp_path / "fetcher.fetch_page.log").write_text(
        "\n".join(
            [
                line("2026-11-22T10:00:01.500000Z", "fetch.retry", report_id="r-1", service="fetcher"),
                fetched,
                line("2026-11-22T10:00:01.700000Z", "fetch.done", report_id="r-10", service="fetcher"),
            ]
        )
        + "\n"
    )
    (tmp_path / "aggregator.handle_report_page_fetched.log").write_text(
        "\n".join(
            [
                line("2026-11-22T10:00:03Z", "event.handled", correlation_id="r-1", service="aggregator"),
                "a line about r-1 that is not JSON",
                line("2026-11-22T10:00:00.100000+00:00", "event.handled", report_id="r-2", service="aggregator"),
            ]
        )
        + "\n"
    )
    # A captured stdout repeats a record of a handler's file: it must be printed once.
    (tmp_path / "nested" / "fetcher.stdout.log").write_text(
        fetched + "\n" + line("2026-11-22T10:00:00.900000Z", "event.handled", report_id="r-1", service="fetcher") + "\n"
    )
    (tmp_path / "notes.txt").write_text(line("2026-11-22T09:00:00Z", "not a log file", report_id="r-1"))
    return tmp_path


def test_prints_only_the_reports_lines_in_time_order_once_each(
    log_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["logs", "r-1", "--log-dir", str(log_dir)]) == 0
    records = [json.loads(text) for text in capsys.readouterr().out.splitlines()]
    assert [(r["timestamp"], r["event"]) for r in records] == [
        ("2026-11-22T10:00:00.900000Z", "event.handled"),
        ("2026-11-22T10:00:01.500000Z", "fetch.retry"),
        ("2026-11-22T10:00:02.000001Z", "fetch.done"),
        ("2026-11-22T10:00:03Z", "event.handled"),
    ]


def test_time_order_holds_across_utc_offsets_and_precisions(log_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (log_dir / "exporter.log").write_text(
        line("2026-11-22T11:00:00.5+01:00", "early, written in another offset", report_id="r-2") + "\n"
    )
    assert main(["logs", "r-2", "--log-dir", str(log_dir)]) == 0
    events = [json.loads(text)["event"] for text in capsys.readouterr().out.splitlines()]
    assert events == ["event.handled", "early, written in another offset"]


def test_takes_log_dir_from_the_environment(
    log_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOG_DIR", str(log_dir))
    assert main(["logs", "r-10"]) == 0
    assert json.loads(capsys.readouterr().out)["event"] == "fetch.done"


def test_says_so_when_nothing_is_about_the_report(log_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["logs", "r-404", "--log-dir", str(log_dir)]) == 1
    assert "no line about r-404" in capsys.readouterr().err
    assert main(["logs", "r-1", "--log-dir", str(log_dir / "missing")]) == 2
