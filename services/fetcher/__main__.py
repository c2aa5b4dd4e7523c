"""Composition root of the fetcher: `python -m services.fetcher` (worker) or `... beat` (scheduler)."""

from __future__ import annotations

import argparse
import datetime as dt
import random
from functools import partial

from pydantic import AliasChoices, EmailStr, Field

from services.fetcher.beat import parse_schedule, run_beat
from services.fetcher.github import GitHubClient
from services.fetcher.github_cache import RedisPageCache, github_scope
from services.fetcher.handlers import FETCH_PAGE, FetchPage, RetryPolicy, fetch_page, handle_report_requested
from services.fetcher.ledger import RedisRequestLedger
from services.fetcher.rate_budget import CancellationsLeavingTheLine, RedisRequestBudget
from services.fetcher.topology import TASK_DEAD_LETTER_QUEUE, TASK_QUEUE
from services.fetcher.worker import (
    EVENT_PREFETCH,
    PagesFetchedHere,
    PageTasks,
    SettledInThreads,
    consumer_step,
    create_celery_app,
    register_fetch_page_task,
)
from shared.amqp import declare_when_reachable
from shared.bootstrap import Service, bootstrap
from shared.events import utc_today
from shared.pipeline import Route
from shared.settings import CommonSettings, load_settings
from shared.topology import FETCHER_REQUESTED


class FetcherSettings(CommonSettings):
    github_api_url: str = "https://api.github.com"
    github_token: str | None = None
    fetcher_concurrency: int = Field(default=8, ge=1, le=64)
    fetch_max_attempts: int = Field(default=5, ge=1, le=20)
    fetch_retry_base_seconds: float = Field(default=1.0, gt=0)
    github_rate_limit_requests: int = Field(
        default=30,
        ge=0,
        validation_alias=AliasChoices("github_rate_limit_requests", "github_rate_limit_per_minute"),
        description="At most this many search requests in any window; 0: no shared budget",
    )
    github_rate_limit_window_seconds: float = Field(default=60.0, gt=0, le=3600)
    github_cache_seconds: float = Field(default=60.0, ge=0, description="0: no shared page cache")
    github_read_timeout_seconds: float = Field(default=30.0, gt=0)
    report_schedule: str = "day=0 0 * * *"
    schedule_notify: EmailStr | None = None
    beat_lock_seconds: int = Field(default=25, ge=5, le=600, description="how soon a standby beat takes over")
    today: dt.date | None = Field(default=None, description="Pin 'today' (demos and tests only)")


def github_client(service: Service, settings: FetcherSettings) -> GitHubClient:
    """GitHub, with the page cache and the search budget every replica shares through Redis."""
    scope = github_scope(settings.github_api_url.rstrip("/"), settings.github_token)
    return GitHubClient(
        settings.github_api_url,
        settings.github_token,
        cache=RedisPageCache(service.redis, settings.github_cache_seconds)
        if settings.github_cache_seconds > 0
        else None,
        budget=RedisRequestBudget(
            service.redis,
            settings.github_rate_limit_requests,
            scope,
            window_seconds=settings.github_rate_limit_window_seconds,
            # A request that never says it finished stops holding lower priorities back after this.
            hold_seconds=settings.github_read_timeout_seconds + 10,
        )
        if settings.github_rate_limit_requests > 0
        else None,
        read_timeout=settings.github_read_timeout_seconds,
    )


def run_worker(service: Service, settings: FetcherSettings) -> None:
    """A Celery worker whose consumer step takes the requests, each of which tries its pages at once in
    threads of its own; Celery's pool runs the page tasks that carry a page's retries."""
    app = create_celery_app(settings)
    github = github_client(service, settings)
    fetch = partial(
        fetch_page,
        github=github,
        policy=RetryPolicy(max_attempts=settings.fetch_max_attempts, base_delay=settings.fetch_retry_base_seconds),
        rng=random.Random(),
    )
    tasks = {FETCH_PAGE: Route(fetch, model=FetchPage, fails_report_as="fetch", stops_when_cancelled=True)}
    pages = service.pipeline(TASK_QUEUE.name, tasks)
    register_fetch_page_task(app, pages)
    first_attempts = PagesFetchedHere(pages, PageTasks(app), threads=settings.fetcher_concurrency)

    pinned_today = settings.today
    request = partial(
        handle_report_requested,
        today=(lambda: pinned_today) if pinned_today else utc_today,
        now=lambda: dt.datetime.now(dt.UTC),
        fetches=first_attempts,
        # As long as the page cache's and the budget's holds: a fetcher that dies holding a request
        # delays it no longer than they do. A holder slower than that costs a second fetch of the same
        # pages, which their ids deduplicate.
        ledger=RedisRequestLedger(service.redis, claim_seconds=settings.github_read_timeout_seconds + 10),
        line=github.budget,
    )
    routes = {
        FETCHER_REQUESTED: {"report.requested": Route(request, fails_report_as="request", stops_when_cancelled=True)}
    }
    budget = github.budget
    queues = service.queue_consumers(
        routes, cancellations=CancellationsLeavingTheLine(service.cancellations, budget) if budget else None
    )
    # Declared here first, so that a queue left classic by an older release stops the start with what
    # to do, instead of a Celery error.
    declare_when_reachable(service.connection, (), extra=(TASK_QUEUE, TASK_DEAD_LETTER_QUEUE))
    # A request waits for its pages in a thread of its own, as many as the queue's prefetch lets in.
    consumed = [
        SettledInThreads(queue, threads=EVENT_PREFETCH) if queue.subscription == FETCHER_REQUESTED else queue
        for queue in queues
    ]
    app.steps["consumer"].add(consumer_step(consumed))
    try:
        # app.start, not worker_main, which drops the worker's exit code: a worker that stops on an
        # unrecoverable error must exit non-zero, so that every restart policy restarts it.
        exit_code = app.start(
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
        first_attempts.close()
        service.close()
    if exit_code:
        raise SystemExit(exit_code)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m services.fetcher")
    parser.add_argument("role", nargs="?", choices=["worker", "beat"], default="worker")
    role = parser.parse_args().role
    settings = load_settings(FetcherSettings)
    try:
        parse_schedule(settings.report_schedule)
    except ValueError as exc:
        raise SystemExit(f"hotrepos: invalid setting REPORT_SCHEDULE: {exc}") from None
    if role == "beat":
        service = bootstrap("fetcher-beat", settings)
        try:
            run_beat(create_celery_app(settings), service.publisher, settings)
        finally:
            service.close()
        return
    run_worker(bootstrap("fetcher", settings), settings)


if __name__ == "__main__":
    main()
