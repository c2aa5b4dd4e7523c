"""Composition root of the exporter: `python -m services.exporter`."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from services.exporter.handlers import handle_report_aggregated
from shared.bootstrap import bootstrap
from shared.outcomes import RedisOutcomeLedger
from shared.pipeline import Route
from shared.settings import CommonSettings, load_settings
from shared.topology import EXPORTER_AGGREGATED


class ExporterSettings(CommonSettings):
    reports_dir: Path = Path("reports")


def main() -> None:
    settings = load_settings(ExporterSettings)
    service = bootstrap("exporter", settings)
    handler = partial(
        handle_report_aggregated,
        reports_dir=settings.reports_dir.resolve(),
        outcomes=RedisOutcomeLedger(service.redis),
    )
    service.run(
        {
            EXPORTER_AGGREGATED: {
                "report.aggregated": Route(handler, fails_report_as="export", stops_when_cancelled=True)
            }
        }
    )


if __name__ == "__main__":
    main()
