"""Composition root of the exporter: `python -m services.exporter`."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from services.exporter.handlers import handle_report_aggregated
from shared.messaging import Route
from shared.service import run_consumers, start_runtime
from shared.settings import CommonSettings, load_settings
from shared.topology import EXPORTER_AGGREGATED


class ExporterSettings(CommonSettings):
    reports_dir: Path = Path("reports")


def main() -> None:
    settings = load_settings(ExporterSettings)
    runtime = start_runtime("exporter", settings)
    handler = partial(
        handle_report_aggregated,
        reports_dir=settings.reports_dir.resolve(),
        cancellations=runtime.cancellations,
        outcomes=runtime.outcomes,
    )
    run_consumers(runtime, {EXPORTER_AGGREGATED: {"report.aggregated": Route(handler, fails_report_as="export")}})


if __name__ == "__main__":
    main()
