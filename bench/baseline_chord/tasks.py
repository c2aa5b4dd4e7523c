"""The original design's Celery app: `chord(group(fetch_page x 5))(build_csv)` with a Redis result backend.

Faithful to a typical setup of that design: page tasks return GitHub's items as they came (the whole
search item), the result backend carries them to the chord's callback, and the callback groups them by
language and writes the CSV in the original layout (one row per language, then its repositories' full
names by stars). Correct where the original was careless: no `.get()` inside a task, retries with
backoff on network errors and 5xx, and the same ordering and formula neutralising as hotrepos, so both
designs write byte-identical files.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import requests
from celery import Celery, chord
from kombu.entity import Queue

FETCH_PAGE = "baseline.fetch_page"
BUILD_CSV = "baseline.build_csv"
# Not part of the original design: it tells the benchmark when the CSV is written, the counterpart of
# hotrepos' report.exported.
DONE_QUEUE = "baseline.report.exported"
PAGES = 5
PER_PAGE = 100
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


class RetryableStatus(Exception):
    """GitHub answered 5xx or a rate limit: worth another try."""


def create_app(amqp_url: str, redis_url: str) -> Celery:
    app = Celery("baseline-chord", broker=amqp_url, backend=redis_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_expires=3600,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_enable_remote_control=False,
        enable_utc=True,
    )
    return app


def register_tasks(app: Celery, *, github_url: str, token: str | None, reports_dir: Path) -> None:
    headers = {"Accept": "application/vnd.github+json", "User-Agent": "hotrepos-baseline"}
    if token:
        headers["Authorization"] = f"Bearer {token}"

    @app.task(  # type: ignore[untyped-decorator]
        name=FETCH_PAGE,
        autoretry_for=(requests.RequestException, RetryableStatus),
        retry_backoff=True,
        max_retries=5,
    )
    def fetch_page(since: str, page: int) -> list[dict[str, Any]]:
        response = requests.get(
            f"{github_url}/search/repositories",
            params={
                "q": f"created:>={since}",
                "sort": "stars",
                "order": "desc",
                "per_page": str(PER_PAGE),
                "page": str(page),
            },
            headers=headers,
            timeout=(5, 30),
        )
        if response.status_code >= 500 or response.status_code in (403, 429):
            raise RetryableStatus(f"GitHub answered {response.status_code} on page {page}")
        response.raise_for_status()
        items: list[dict[str, Any]] = response.json()["items"]
        return items

    @app.task(name=BUILD_CSV)  # type: ignore[untyped-decorator]
    def build_csv(pages: list[list[dict[str, Any]]], report_id: str, period: str, since: str) -> str:
        content, rows = render_by_language(pages)
        reports_dir.mkdir(parents=True, exist_ok=True)
        path = reports_dir / f"baseline-{period}-{since}-{report_id}.csv"
        path.write_bytes(content)
        done = {"report_id": report_id, "path": str(path), "rows": rows, "sha256": hashlib.sha256(content).hexdigest()}
        with app.producer_or_acquire() as producer:
            producer.publish(
                json.dumps(done),
                exchange="",
                routing_key=DONE_QUEUE,
                content_type="application/json",
                declare=[Queue(DONE_QUEUE)],
            )
        return str(path)


def request_report(app: Celery, report_id: str, period: str, since: str) -> None:
    """What the original client did: fan out the pages, join them into the CSV task."""
    header = [app.signature(FETCH_PAGE, args=(since, page)) for page in range(1, PAGES + 1)]
    chord(header)(app.signature(BUILD_CSV, kwargs={"report_id": report_id, "period": period, "since": since}))


def render_by_language(pages: Iterable[Iterable[dict[str, Any]]]) -> tuple[bytes, int]:
    unique: dict[int, dict[str, Any]] = {}
    for page in pages:
        for item in page:
            unique.setdefault(item["id"], item)
    groups: dict[str, list[dict[str, Any]]] = {}
    for item in unique.values():
        groups.setdefault(item.get("language") or "Unknown", []).append(item)
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\r\n")
    languages = sorted(groups, key=lambda name: (name == "Unknown", name.casefold(), name))
    for language in languages:
        repositories = sorted(
            groups[language], key=lambda r: (-r["stargazers_count"], r["full_name"].casefold(), r["id"])
        )
        writer.writerow([_neutralise(language), *(_neutralise(r["full_name"]) for r in repositories)])
    return buffer.getvalue().encode("utf-8"), len(languages)


def _neutralise(cell: str) -> str:
    return "'" + cell if cell.startswith(FORMULA_PREFIXES) else cell
