"""The gateway under load: locust, headless, against 1 and then 2 replicas over the real broker and Redis.

Every service runs, as in production, with the gateway in token mode. The streams follow scheduled
reports that wait in GitHub's line (the fake enforces a budget, the fetcher shares it), so that they
stay open for the whole run and reports keep completing under them; the people's report requests ask
for searches already cached, so that they finish at once whatever the budget. Locust times each
request; the bench's own broker listener stamps each `report.exported`, and the load's watchers stamp
the frame that told them, on the same monotonic clock.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
import requests

from bench import profile
from bench.fake_github import FakeGitHubProcess
from bench.processes import MachineCpu, cpu_seconds, peak_rss_mb, reset_peaks, runqueue_wait_since, runqueue_waits
from bench.scenarios import REPORT_TIMEOUT, percentile
from bench.systems import HotreposSystem
from shared.api_tokens import RedisApiTokens
from tests.support.broker import Broker

LOCUST = Path(sys.executable).parent / "locust"
LOAD_FILE = Path(__file__).resolve().parent / "gateway_load.py"
GITHUB_LATENCY_MS = 300
SPAWN_PER_SECOND = 100
STATUS = "GET /api/reports/{id}"
STREAM_TO_OUTCOME = "stream, open to the outcome"  # as bench/gateway_load.py names it
PERIODS = ("day", "week", "month")


@dataclass(frozen=True)
class GatewayLoad:
    watchers: int
    readers: int
    reads_per_second: float
    report_requests_per_second: int
    seconds: float
    scheduled: int
    identities: int
    replicas: tuple[int, ...]
    github_limit: int
    github_window_seconds: float

    @property
    def ramp_seconds(self) -> float:
        return (self.watchers + self.readers + self.report_requests_per_second) / SPAWN_PER_SECOND


def measure(
    load: GatewayLoad,
    broker: Broker,
    redis_url: str,
    github: FakeGitHubProcess,
    workdir: Path,
    *,
    replicas: int,
    profile_dir: Path | None = None,
) -> dict[str, Any]:
    """One run at `replicas` gateways, on a stack of its own: no report of an earlier run is left in line."""
    github.configure(
        latency_ms=GITHUB_LATENCY_MS,
        rate_limit_per_minute=load.github_limit,
        rate_limit_window_seconds=load.github_window_seconds,
    )
    github.reset()
    env = {
        "GITHUB_RATE_LIMIT_REQUESTS": str(load.github_limit),
        "GITHUB_RATE_LIMIT_WINDOW_SECONDS": str(load.github_window_seconds),
        # The people's orders are few and asked again and again: their pages stay cached for the run.
        "GITHUB_CACHE_SECONDS": "3600",
    }
    hot = HotreposSystem(broker, redis_url, github, workdir, fetchers=1, env=env)
    try:
        client = redis.Redis.from_url(redis_url)
        tokens = RedisApiTokens(client)
        suffix = uuid.uuid4().hex[:6]
        identities = [
            {"name": f"load-{suffix}-{index}", "token": tokens.create(f"load-{suffix}-{index}", admin=False)}
            for index in range(load.identities)
        ]
        client.close()
        urls = hot.start_gateways(replicas, {"GATEWAY_AUTH": "token"})
        orders = [{"period": period, "layout": "rows"} for period in PERIODS]
        reports = _warm_up(hot, urls[0], identities, orders)
        scheduled = _schedule(hot, load.scheduled, urls[0], identities[0]["token"])
        plan_path = workdir / f"gateway-load-{replicas}.json"
        streams_path = workdir / f"gateway-streams-{replicas}.json"
        plan_path.write_text(
            json.dumps(
                {
                    "gateways": urls,
                    "identities": identities,
                    "orders": orders,
                    "reports": reports,
                    "scheduled": scheduled,
                    "watchers": load.watchers,
                    "readers": load.readers,
                    "reads_per_second_per_reader": load.reads_per_second / load.readers,
                    "requesters": load.report_requests_per_second,
                    "streams_path": str(streams_path),
                }
            )
        )
        gateway_pids = [gateway.process.pid for gateway in hot.gateways if gateway.process is not None]
        reset_peaks(gateway_pids)
        csv_prefix = workdir / f"gateway-stats-{replicas}"
        recorders = profile.record(dict(zip([g.name for g in hot.gateways], gateway_pids, strict=True)), profile_dir)
        cpu_before, waited_before = cpu_seconds(gateway_pids), runqueue_waits(gateway_pids)
        started = time.perf_counter()
        with MachineCpu() as machine:
            locust = _run_locust(load, plan_path, csv_prefix, workdir / f"locust-{replicas}.log")
        elapsed = time.perf_counter() - started
        gateway_cpu = cpu_seconds(gateway_pids) - cpu_before
        gateway_waited = runqueue_wait_since(waited_before, gateway_pids)
        profile.stop(recorders)
        figures: dict[str, Any] = {
            "replicas": replicas,
            "load": {
                "streams": load.watchers,
                "reads_per_second": load.reads_per_second,
                "report_requests_per_second": load.report_requests_per_second,
                "seconds": load.seconds,
                "identities": load.identities,
                "scheduled_reports_in_line": load.scheduled,
            },
            "endpoints": _endpoints(Path(f"{csv_prefix}_stats.csv")),
            "streams_told": _streams_told(hot, scheduled, streams_path),
            "gateway": {
                "cpu_cores": round(gateway_cpu / elapsed, 2),
                # Ready to run, but every core busy with other processes: what the machine adds to answers.
                "runqueue_wait_per_cpu_second": round(gateway_waited / gateway_cpu, 2) if gateway_cpu else None,
                "peak_rss_mb": {
                    gateway.name: peak_rss_mb(pid) for gateway, pid in zip(hot.gateways, gateway_pids, strict=True)
                },
            },
            "locust_cpu_cores": round(locust["cpu_seconds"] / elapsed, 2),
            "machine_busy": round(machine.busy, 2),
        }
        # Counted from the first request, the ramp's included; a stream's outcome is not a request of its own.
        written = json.loads(streams_path.read_text()) if streams_path.exists() else {}
        made = sum(count for name, count in written.get("requests", {}).items() if name != STREAM_TO_OUTCOME)
        if not made:
            raise RuntimeError(f"locust made no request:\n{(workdir / f'locust-{replicas}.log').read_text()[-3000:]}")
        figures["errors"] = sum(written.get("failures", {}).values())
        figures["error_rate"] = round(figures["errors"] / made, 5)
        figures["errors_by_endpoint"] = written.get("failures", {})
        if profile_dir is not None:
            figures["profile"] = {name: profile.summarise(profile_dir / f"{name}.folded") for name in recorders}
        return figures
    finally:
        hot.stop()


def _warm_up(
    hot: HotreposSystem, url: str, identities: list[dict[str, str]], orders: list[dict[str, str]]
) -> list[tuple[str, str]]:
    """Each order fetched once, so later ones come from the cache; then one report per identity."""
    session = requests.Session()

    def order(token: str, body: dict[str, str]) -> str:
        response = session.post(f"{url}/api/reports", json=body, headers={"Authorization": f"Bearer {token}"})
        response.raise_for_status()
        report_id = str(response.json()["report_id"])
        hot.listener.expect(report_id)
        return report_id

    first = [order(identities[0]["token"], body) for body in orders]
    for report_id in first:
        hot.listener.wait(report_id, REPORT_TIMEOUT)
    reports = [(report_id, identities[0]["token"]) for report_id in first]
    for index, identity in enumerate(identities[1:], start=1):
        reports.append((order(identity["token"], orders[index % len(orders)]), identity["token"]))
    for report_id, _ in reports:
        hot.listener.wait(report_id, REPORT_TIMEOUT)
    return reports


def _schedule(hot: HotreposSystem, count: int, url: str, token: str) -> list[str]:
    """The team's scheduled reports, each of its own dates: more than the budget serves in the run."""
    report_ids = [f"scheduled-load-{uuid.uuid4().hex[:12]}" for _ in range(count)]
    for index, report_id in enumerate(report_ids, start=1):
        hot.listener.expect(report_id)
        hot.request(report_id, hot.today - dt.timedelta(days=index), "scheduled")
    deadline = time.monotonic() + 60
    headers = {"Authorization": f"Bearer {token}"}
    while requests.get(f"{url}/api/reports/{report_ids[-1]}", headers=headers, timeout=5).status_code != 200:
        if time.monotonic() > deadline:
            raise RuntimeError("the gateway did not hear of the scheduled reports")
        time.sleep(0.1)
    return report_ids


def _run_locust(load: GatewayLoad, plan: Path, csv_prefix: Path, log_path: Path) -> dict[str, float]:
    users = load.watchers + load.readers + load.report_requests_per_second
    command = [
        str(LOCUST),
        "--locustfile",
        str(LOAD_FILE),
        "--headless",
        "--users",
        str(users),
        "--spawn-rate",
        str(SPAWN_PER_SECOND),
        "--run-time",
        f"{round(load.ramp_seconds + load.seconds)}s",
        # The figures cover the held load, not the ramp.
        "--reset-stats",
        "--csv",
        str(csv_prefix),
        "--only-summary",
        "--stop-timeout",
        "5",
        "--exit-code-on-error",
        "0",
    ]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            env={**os.environ, "HOTREPOS_LOAD_PLAN": str(plan)},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        used = 0.0
        try:
            while process.poll() is None:
                used = max(used, cpu_seconds([process.pid]))
                time.sleep(0.5)
        except BaseException:
            process.send_signal(signal.SIGINT)
            process.wait(30)
            raise
    if process.returncode != 0:
        raise RuntimeError(f"locust exited {process.returncode}:\n{log_path.read_text()[-3000:]}")
    return {"cpu_seconds": used}


def _endpoints(stats_csv: Path) -> dict[str, dict[str, Any]]:
    """Locust's own figures per endpoint: requests, failures, requests a second, p50 and p99 in ms."""
    endpoints: dict[str, dict[str, Any]] = {}
    with stats_csv.open(newline="") as file:
        for row in csv.DictReader(file):
            if row["Name"] == "Aggregated":
                continue  # it mixes answers of milliseconds with streams held for a minute
            name = row["Name"]
            endpoints[name] = {
                "requests": int(row["Request Count"]),
                "failures": int(row["Failure Count"]),
                "per_second": round(float(row["Requests/s"]), 1),
                "p50_ms": _number(row["50%"]),
                "p99_ms": _number(row["99%"]),
                "max_ms": _number(row["Max Response Time"]),
            }
    return endpoints


def _number(text: str) -> float | None:
    return None if text in ("", "N/A") else round(float(text), 1)


def _streams_told(hot: HotreposSystem, scheduled: list[str], streams_path: Path) -> dict[str, Any]:
    """From `report.exported`'s publication to the frame that told each stream open at that moment.

    A stream open when its report's outcome was published and never told it (it broke, or was still
    waiting when the run stopped a second or more later) counts as not told.
    """
    written = json.loads(streams_path.read_text()) if streams_path.exists() else {}
    streams, stopped_at = written.get("streams", []), written.get("stopped_at", 0.0)
    open_streams = written.get("open_streams", [])
    outcomes = {report_id: hot.listener.arrived(report_id) for report_id in scheduled}
    published = {
        report_id: outcome.published
        for report_id, outcome in outcomes.items()
        if outcome is not None and outcome.published is not None and outcome.published <= stopped_at
    }
    delays, not_told = [], 0
    for report_id, opened, ended, told_at in streams:
        at = published.get(report_id)
        if at is None or opened >= at:
            continue  # its report had not finished in the run, or it opened after the outcome
        if told_at is not None:
            delays.append((told_at - at) * 1000)
        elif ended > at and at < stopped_at - 1.0:
            not_told += 1
    return {
        # Sampled each second of the held load: streams open at once, between a report's end and the
        # watcher's next stream.
        "open_streams": {
            "mean": round(sum(open_streams) / len(open_streams)) if open_streams else None,
            "min": min(open_streams, default=None),
        },
        "reports_finished": len(published),
        "streams_told": len(delays),
        "streams_not_told": not_told,
        "p50_ms": round(percentile(delays, 0.5), 1) if delays else None,
        "p99_ms": round(percentile(delays, 0.99), 1) if delays else None,
        "max_ms": round(max(delays), 1) if delays else None,
        "min_ms": round(min(delays), 1) if delays else None,
    }
