"""Exporter handlers: pure functions of (event, dependencies) that return what to publish."""

from __future__ import annotations

import errno
from pathlib import Path

from services.exporter.csv_report import file_name, render, sha256_hex, write_atomically
from shared.events import LanguageCount, ReportAggregated, ReportExported
from shared.handling import Claim, EventMeta, OutcomeLedger, RetryLater

TOP_LANGUAGES = 5


def handle_report_aggregated(
    event: ReportAggregated, meta: EventMeta, *, reports_dir: Path, outcomes: OutcomeLedger
) -> list[ReportExported]:
    content, rows = render(event)
    try:
        path = write_atomically(reports_dir, file_name(event.report_id, event.spec), content)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS):
            raise RetryLater(f"cannot write into {reports_dir}: {exc.strerror}") from exc
        raise
    # Claimed once the file exists, so that a report whose CSV cannot be written is not marked exported;
    # claimed here and not only on publishing, so that a CSV nobody will hear of is removed.
    if outcomes.claim(event.report_id, "exported") is Claim.OTHER:
        path.unlink(missing_ok=True)  # failed or cancelled meanwhile: one outcome, and no CSV
        return []
    by_size = sorted(event.languages, key=lambda g: (-len(g.repositories), g.language.casefold()))
    exported = ReportExported(
        report_id=event.report_id,
        path=str(path),
        rows=rows,
        sha256=sha256_hex(content),
        layout=event.spec.layout,
        spec=event.spec,
        repositories=event.total,
        top_languages=[LanguageCount(language=g.language, count=len(g.repositories)) for g in by_size[:TOP_LANGUAGES]],
        incomplete_pages=event.incomplete_pages,
    )
    return [exported]
