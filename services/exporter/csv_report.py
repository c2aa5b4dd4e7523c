"""The CSV report, in either layout: RFC 4180 quoting, cells neutralised against formula injection."""

from __future__ import annotations

import csv
import hashlib
import io
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from shared.events import ReportAggregated, ReportSpec

ROWS_HEADER = ("language", "full_name", "stars", "forks", "created_at", "html_url", "description")
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def neutralise(cell: str) -> str:
    """A leading quote makes spreadsheets show the cell as text instead of running it as a formula."""
    return "'" + cell if cell.startswith(FORMULA_PREFIXES) else cell


def _write(rows: Iterable[Iterable[object]]) -> tuple[bytes, int]:
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL)
    count = 0
    for row in rows:
        writer.writerow([neutralise(c) if isinstance(c, str) else c for c in row])
        count += 1
    return buffer.getvalue().encode("utf-8"), count


def render_rows(report: ReportAggregated) -> tuple[bytes, int]:
    """One row per repository, under a header; returns the bytes and the number of data rows."""
    body, count = _write(
        (
            group.language,
            repo.full_name,
            repo.stargazers_count,
            repo.forks_count,
            repo.created_at,
            repo.html_url,
            repo.description or "",
        )
        for group in report.languages
        for repo in group.repositories
    )
    header, _ = _write([ROWS_HEADER])
    return header + body, count


def render_by_language(report: ReportAggregated) -> tuple[bytes, int]:
    """The original layout: one row per language, then its repositories' full names by stars."""
    return _write([group.language, *(repo.full_name for repo in group.repositories)] for group in report.languages)


def render(report: ReportAggregated) -> tuple[bytes, int]:
    if report.spec.layout == "by-language":
        return render_by_language(report)
    return render_rows(report)


def file_name(report_id: str, spec: ReportSpec) -> str:
    return f"hotrepos-{spec.period}-{spec.since.isoformat()}-{report_id}.csv"


def sha256_hex(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def write_atomically(directory: Path, name: str, content: bytes) -> Path:
    """Readers see the whole file or none: write a temporary file beside it, then rename."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / name
    if target.resolve().parent != directory.resolve():
        raise ValueError(f"refusing to write outside {directory}: {name!r}")
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".csv")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return target
