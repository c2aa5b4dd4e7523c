"""Composition root of the aggregator: `python -m services.aggregator`."""

from __future__ import annotations

from functools import partial

from services.aggregator.fan_in import RedisPageStore
from services.aggregator.handlers import handle_report_page_fetched
from shared.bootstrap import bootstrap
from shared.pipeline import Route
from shared.settings import CommonSettings, load_settings
from shared.topology import AGGREGATOR_PAGE_FETCHED


def main() -> None:
    service = bootstrap("aggregator", load_settings(CommonSettings))
    pages = RedisPageStore(service.redis)
    service.run(
        {
            AGGREGATOR_PAGE_FETCHED: {
                "report.page.fetched": Route(
                    partial(handle_report_page_fetched, pages=pages),
                    fails_report_as="aggregate",
                    stops_when_cancelled=True,
                )
            }
        }
    )


if __name__ == "__main__":
    main()
