"""Composition root of the aggregator: `python -m services.aggregator`."""

from __future__ import annotations

from functools import partial

from services.aggregator.fan_in import RedisPageStore
from services.aggregator.handlers import handle_report_page_fetched
from shared.messaging import Route
from shared.service import run_consumers, start_runtime
from shared.settings import CommonSettings, load_settings
from shared.topology import AGGREGATOR_PAGE_FETCHED


def main() -> None:
    runtime = start_runtime("aggregator", load_settings(CommonSettings))
    pages = RedisPageStore(runtime.redis)
    run_consumers(
        runtime,
        {
            AGGREGATOR_PAGE_FETCHED: {
                "report.page.fetched": Route(
                    partial(handle_report_page_fetched, pages=pages, cancellations=runtime.cancellations),
                    fails_report_as="aggregate",
                )
            }
        },
    )


if __name__ == "__main__":
    main()
