"""Composition root of the fetcher: `python -m services.fetcher` (worker) or `... beat` (scheduler)."""

from __future__ import annotations

import argparse
import datetime as dt
from functools import partial

from pydantic import EmailStr, Field

from services.fetcher.beat import parse_schedule, run_beat
from services.fetcher.github import GitHubClient
from services.fetcher.github_cache import RedisPageCache, github_scope
from services.fetcher.handlers import RetryPolicy, handle_report_requested
from services.fetcher.ledger import RedisRequestLedger
from services.fetcher.rate_budget import RedisRequestBudget
from services.fetcher.tasks import (
    TASK_DEAD_LETTER_QUEUE,
    CeleryFetchScheduler,
    consumer_step,
    create_celery_app,
    register_tasks,
)
from shared.events import utc_today
from shared.messaging import Route
from shared.service import build_handlers, declare_when_reachable, start_runtime
from shared.settings import CommonSettings, load_settings
from shared.topology import FETCHER_REQUESTED


class FetcherSettings(CommonSettings):
    github_api_url: str = "https://api.github.com"
    github_token: str | None = None
    fetcher_concurrency: int = Field(default=8, ge=1, le=64)
    fetch_max_attempts: int = Field(default=5, ge=1, le=20)
    fetch_retry_base_seconds: float = Field(default=1.0, gt=0)
    github_rate_limit_per_minute: int = Field(default=30, ge=0, description="0: no shared budget")
    github_cache_seconds: float = Field(default=60.0, ge=0, description="0: no shared page cache")
    github_read_timeout_seconds: float = Field(default=30.0, gt=0)
    report_schedule: str = "day=0 0 * * *"
    schedule_notify: EmailStr | None = None
    today: dt.date | None = Field(default=None, description="Pin 'today' (demos and tests only)")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m services.fetcher")
    parser.add_argument("role", nargs="?", choices=["worker", "beat"], default="worker")
    role = parser.parse_args().role
    settings = load_settings(FetcherSettings)
    try:
        parse_schedule(settings.report_schedule)
    except ValueError as exc:
        raise SystemExit(f"hotrepos: invalid setting REPORT_SCHEDULE: {exc}") from None
    runtime = start_runtime("fetcher-beat" if role == "beat" else "fetcher", settings)
    app = create_celery_app(settings)
    if role == "beat":
        run_beat(app, runtime.publisher, settings.report_schedule, settings.schedule_notify)
        return

    declare_when_reachable(runtime, (FETCHER_REQUESTED, *runtime.control_routes()))
    with runtime.connection.clone() as connection:
        TASK_DEAD_LETTER_QUEUE(connection.default_channel).declare()
    scope = github_scope(settings.github_api_url.rstrip("/"), settings.github_token)
    github = GitHubClient(
        settings.github_api_url,
        settings.github_token,
        cache=RedisPageCache(runtime.redis, settings.github_cache_seconds)
        if settings.github_cache_seconds > 0
        else None,
        budget=RedisRequestBudget(runtime.redis, settings.github_rate_limit_per_minute, scope)
        if settings.github_rate_limit_per_minute > 0
        else None,
        read_timeout=settings.github_read_timeout_seconds,
    )
    policy = RetryPolicy(max_attempts=settings.fetch_max_attempts, base_delay=settings.fetch_retry_base_seconds)
    register_tasks(
        app,
        github=github,
        publisher=runtime.publisher,
        policy=policy,
        cancellations=runtime.cancellations,
        outcomes=runtime.outcomes,
    )
    pinned_today = settings.today
    handler = partial(
        handle_report_requested,
        today=(lambda: pinned_today) if pinned_today else utc_today,
        fetches=CeleryFetchScheduler(app),
        ledger=RedisRequestLedger(runtime.redis),
        cancellations=runtime.cancellations,
    )
    routes = {
        FETCHER_REQUESTED: {"report.requested": Route(handler, fails_report_as="request")},
        **runtime.control_routes(),
    }
    app.steps["consumer"].add(consumer_step(build_handlers(runtime, routes)))
    try:
        app.worker_main(
            [
                "worker",
                "--pool=threads",
                f"--concurrency={settings.fetcher_concurrency}",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                f"--loglevel={settings.log_level}",
                f"--queues={app.conf.task_default_queue}",
            ]
        )
    finally:
        runtime.alerts.flush()
        runtime.publisher.close()


if __name__ == "__main__":
    main()
