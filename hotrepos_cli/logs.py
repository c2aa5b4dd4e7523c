"""`hotrepos logs REPORT_ID`: every log line about one report, from every file under LOG_DIR, in time order."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO

ID_FIELDS = ("report_id", "correlation_id")
# Lines without a readable timestamp sort last rather than vanish.
_NO_TIME = dt.datetime.max.replace(tzinfo=dt.UTC)


def _timestamp(record: dict[str, Any]) -> dt.datetime:
    value = record.get("timestamp")
    if not isinstance(value, str):
        return _NO_TIME
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        return _NO_TIME
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def lines_about(report_id: str, files: Iterable[Path]) -> Iterator[str]:
    """The JSON lines whose report or correlation id is report_id, merged in time order."""
    found: list[tuple[dt.datetime, int, str]] = []
    seen: set[str] = set()
    for path in files:
        with path.open(encoding="utf-8", errors="replace") as handle:
            for line in handle:
                line = line.rstrip("\n")
                # The cheap test first: most lines are about other reports.
                if report_id not in line or line in seen:
                    continue
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(record, dict) or report_id not in (record.get(f) for f in ID_FIELDS):
                    continue
                # One record can be in two files (a handler's file and a captured stdout): print it once.
                seen.add(line)
                found.append((_timestamp(record), len(found), line))
    found.sort()
    return (line for _, _, line in found)


def log_files(directory: Path) -> list[Path]:
    return sorted(path for path in directory.rglob("*.log") if path.is_file())


def print_report_logs(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    directory: Path | None = args.log_dir
    if directory is None:
        print("hotrepos logs: set LOG_DIR or pass --log-dir", file=sys.stderr)
        return 2
    if not directory.is_dir():
        print(f"hotrepos logs: {directory} is not a directory", file=sys.stderr)
        return 2
    count = 0
    for line in lines_about(args.report_id, log_files(directory)):
        out.write(line + "\n")
        count += 1
    if count == 0:
        print(f"hotrepos logs: no line about {args.report_id} under {directory}", file=sys.stderr)
        return 1
    return 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("logs", help="print every log line about one report, in time order")
    parser.add_argument("report_id")
    default = os.environ.get("LOG_DIR")
    parser.add_argument("--log-dir", type=Path, default=Path(default) if default else None, help="default: LOG_DIR")
    parser.set_defaults(handler=print_report_logs)
