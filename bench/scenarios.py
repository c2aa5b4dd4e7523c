"""The measurements: latency, throughput, scale-out, GitHub budget. Each returns JSON-ready figures."""

from __future__ import annotations

import datetime as dt
import math
import statistics
import time
import uuid
from collections.abc import Sequence
from typing import Any

import requests

from bench.completions import Completion, CompletionListener
from bench.fake_github import FakeGitHubProcess
from bench.processes import MachineCpu, MemorySampler, cpu_seconds, with_children
from bench.systems import HOTREPOS_TOKEN, PERIOD, HotreposSystem, System

REPORT_TIMEOUT = 300.0


def percentile(values: Sequence[float], fraction: float) -> float:
    """Linear interpolation between closest ranks."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * fraction
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def new_report_id(tag: str) -> str:
    return f"bench-{tag}-{uuid.uuid4().hex[:12]}"


def one_report(system: System, tag: str, ref_date: dt.date | None = None) -> tuple[float, Completion]:
    """Publish one request and wait for its end; seconds from publish to arrival."""
    report_id = new_report_id(tag)
    system.listener.expect(report_id)
    started = time.perf_counter()
    system.request(report_id, ref_date)
    completion = system.listener.wait(report_id, REPORT_TIMEOUT)
    if not completion.ok:
        raise RuntimeError(f"{system.name} failed report {report_id}: {completion.body}")
    return completion.arrived - started, completion


def github_round_trip_ms(github: FakeGitHubProcess, samples: int = 7) -> float:
    """One full search page from the fake, as a client sees it: the floor of a report's latency."""
    since = (github.today - dt.timedelta(days=30)).isoformat()
    session = requests.Session()
    durations = []
    for _ in range(samples):
        started = time.perf_counter()
        response = session.get(
            f"{github.url}/search/repositories",
            params={"q": f"created:>={since}", "sort": "stars", "order": "desc", "per_page": "100", "page": "1"},
            headers={"Authorization": "Bearer bench-floor"},
            timeout=30,
        )
        response.raise_for_status()
        durations.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(durations), 1)


def latency(
    systems: Sequence[System], github: FakeGitHubProcess, latency_ms: int, runs: int, warmup: int = 2
) -> dict[str, object]:
    """Single reports one at a time, the designs interleaved A B A B, so drift hits both alike."""
    github.configure(latency_ms=latency_ms, rate_limit_per_minute=None)
    for system in systems:
        for _ in range(warmup):
            one_report(system, "warmup")
    samples: dict[str, list[float]] = {system.name: [] for system in systems}
    for _ in range(runs):
        for system in systems:
            seconds, _ = one_report(system, f"lat{latency_ms}")
            samples[system.name].append(seconds * 1000)
    figures: dict[str, object] = {
        name: {
            "p50_ms": round(percentile(values, 0.5), 1),
            "p95_ms": round(percentile(values, 0.95), 1),
            "runs": len(values),
        }
        for name, values in samples.items()
    }
    hot, base = samples["hotrepos"], samples["baseline"]
    figures["ratio_p50"] = round(percentile(hot, 0.5) / percentile(base, 0.5), 3)
    figures["ratio_p95"] = round(percentile(hot, 0.95) / percentile(base, 0.95), 3)
    floor = github_round_trip_ms(github)
    figures["github_round_trip_ms"] = floor
    figures["hotrepos_p50_over_round_trip"] = round(percentile(hot, 0.5) / floor, 3) if floor else None
    return figures


def burst(system: System, reports: int, tag: str) -> dict[str, Any]:
    """Request `reports` distinct reports at once: reports per second from first publish to last answer,
    the design's own CPU per report, and how busy the whole machine was meanwhile."""
    report_ids = [new_report_id(tag) for _ in range(reports)]
    for report_id in report_ids:
        system.listener.expect(report_id)
    processes = {name: with_children([pid]) for name, pid in system.processes().items()}
    pids = [pid for family in processes.values() for pid in family]
    cpu_before = cpu_seconds(pids)
    cpu_before_by_process = {name: cpu_seconds(family) for name, family in processes.items()}
    with MachineCpu() as machine:
        started = time.perf_counter()
        for report_id in report_ids:
            system.request(report_id)
        last = started
        for report_id in report_ids:
            completion = system.listener.wait(report_id, REPORT_TIMEOUT)
            if not completion.ok:
                raise RuntimeError(f"{system.name} failed report {report_id}: {completion.body}")
            last = max(last, completion.arrived)
    by_process = {
        name: (cpu_seconds(family) - cpu_before_by_process[name]) * 1000 / reports for name, family in processes.items()
    }
    return {
        "reports_per_second": reports / (last - started),
        "cpu_ms_per_report": (cpu_seconds(pids) - cpu_before) * 1000 / reports,
        "machine_busy": machine.busy,
        "cpu_ms_per_report_by_process": by_process,
    }


def throughput(
    systems: Sequence[System], github: FakeGitHubProcess, reports: int, rounds: int, warmup: int
) -> tuple[dict[str, object], dict[str, object]]:
    """Bursts at 0 ms, interleaved per round; memory is sampled during each design's bursts."""
    github.configure(latency_ms=0, rate_limit_per_minute=None)
    for system in systems:
        burst(system, warmup, "warmup")  # a first burst grows every process's heap: not measured
    runs: dict[str, list[dict[str, Any]]] = {system.name: [] for system in systems}
    samplers = {system.name: MemorySampler(system.processes) for system in systems}
    for _ in range(rounds):
        for system in systems:
            with samplers[system.name]:
                runs[system.name].append(burst(system, reports, "tput"))
    memory: dict[str, object] = {name: sampler.report() for name, sampler in samplers.items()}
    figures: dict[str, object] = {
        name: {
            "reports_per_second": round(statistics.median(r["reports_per_second"] for r in results), 2),
            "rounds": [round(r["reports_per_second"], 2) for r in results],
            "cpu_ms_per_report": round(statistics.median(r["cpu_ms_per_report"] for r in results), 1),
            # Where that CPU goes: each process's median over the rounds.
            "cpu_ms_per_report_by_process": {
                process: round(statistics.median(r["cpu_ms_per_report_by_process"][process] for r in results), 1)
                for process in results[0]["cpu_ms_per_report_by_process"]
            },
            "machine_busy": round(statistics.median(r["machine_busy"] for r in results), 2),
        }
        for name, results in runs.items()
    }
    hot = statistics.median(r["reports_per_second"] for r in runs["hotrepos"])
    base = statistics.median(r["reports_per_second"] for r in runs["baseline"])
    figures["reports"] = reports
    figures["ratio"] = round(hot / base, 2)
    return figures, memory


def budget(
    system: System,
    github: FakeGitHubProcess,
    *,
    requests_count: int,
    spread_seconds: float,
    distinct: bool,
    latency_ms: int,
) -> dict[str, object]:
    """Many requests within a minute against a fake that enforces GitHub's search limit."""
    started = time.perf_counter()
    report_ids = [new_report_id("budget") for _ in range(requests_count)]
    for report_id in report_ids:
        system.listener.expect(report_id)
    for index, report_id in enumerate(report_ids):
        # Distinct requests differ by their reference date, hence by their search query.
        ref_date = github.today - dt.timedelta(days=index) if distinct else github.today
        system.request(report_id, ref_date)
        if spread_seconds and index < len(report_ids) - 1:
            time.sleep(spread_seconds / max(1, requests_count - 1))
    answered = 0
    for report_id in report_ids:
        if system.listener.wait(report_id, REPORT_TIMEOUT).ok:
            answered += 1
    elapsed = time.perf_counter() - started
    stats = github.stats()
    calls = int(stats["by_token"].get(HOTREPOS_TOKEN, 0))
    not_modified = int(stats["not_modified"])
    return {
        "requests": requests_count,
        "distinct_queries": requests_count if distinct else 1,
        "period": PERIOD,
        "latency_ms": latency_ms,
        "upstream_calls": calls,
        "full_answers": int(stats["by_status"].get("200", 0)),
        "not_modified": not_modified,
        "rate_limited": int(stats["rate_limited"]),
        "answered": answered,
        "seconds": round(elapsed, 1),
    }


def backlog(
    hot: HotreposSystem,
    github: FakeGitHubProcess,
    *,
    scheduled: int,
    interactive: int,
    interactive_after_seconds: float,
    limit: int,
    window_seconds: float,
    first_ref_date: dt.date,
) -> dict[str, object]:
    """More distinct reports than GitHub's budget: scheduled ones first, then a few people's.

    Every report's first page and outcome are stamped as they arrive on the broker. Budget use is the
    calls made over the calls GitHub allowed from the first call to the last: the limit times the
    windows that span covers.
    """
    pages = CompletionListener(hot.amqp_url, bindings=(("hotrepos.events", "report.page.fetched"),))
    try:
        requested: dict[str, tuple[str, float]] = {}

        def ask(priority: str, index: int) -> None:
            report_id = new_report_id(f"backlog-{priority}")
            hot.listener.expect(report_id)
            pages.expect(report_id)
            requested[report_id] = (priority, time.perf_counter())
            hot.request(report_id, first_ref_date - dt.timedelta(days=index), priority)

        for index in range(scheduled):
            ask("scheduled", index)
        time.sleep(interactive_after_seconds)
        for index in range(scheduled, scheduled + interactive):
            ask("interactive", index)
        done = {report_id: hot.listener.wait(report_id, 4 * REPORT_TIMEOUT) for report_id in requested}
        first_page = {report_id: pages.wait(report_id, REPORT_TIMEOUT).arrived for report_id, c in done.items() if c.ok}
    finally:
        pages.close()
    stats = github.stats()
    calls = int(stats["by_token"].get(HOTREPOS_TOKEN, 0))
    span = float(stats["last_request_at"] or 0) - float(stats["first_request_at"] or 0)
    allowed = limit * (math.floor(span / window_seconds) + 1)
    people = [r for r, (priority, _) in requested.items() if priority == "interactive"]
    schedules = [r for r, (priority, _) in requested.items() if priority == "scheduled"]
    # A person's report must finish before every scheduled report that had not started fetching when
    # the person asked.
    overtaken = [
        (person, report_id)
        for person in people
        for report_id in schedules
        if first_page.get(report_id, math.inf) > requested[person][1] and done[report_id].arrived < done[person].arrived
    ]
    passed_by = {s for person in people for s in schedules if first_page.get(s, math.inf) > requested[person][1]}

    def median_seconds(report_ids: list[str], until: dict[str, float]) -> float | None:
        waits = [until[r] - requested[r][1] for r in report_ids if r in until]
        return round(statistics.median(waits), 2) if waits else None

    finished = {r: c.arrived for r, c in done.items()}
    return {
        "requests": {"scheduled": scheduled, "interactive": interactive},
        "budget": {"limit": limit, "window_seconds": window_seconds},
        "exported": sum(1 for c in done.values() if c.ok),
        "failed": sum(1 for c in done.values() if not c.ok),
        "github_calls": calls,
        "rate_limited": int(stats["rate_limited"]),
        "calls_allowed": allowed,
        "budget_use": round(calls / allowed, 3) if allowed else None,
        "span_seconds": round(span, 1),
        "median_wait_to_first_page_seconds": {
            "interactive": median_seconds(people, first_page),
            "scheduled": median_seconds(schedules, first_page),
        },
        "median_time_to_outcome_seconds": {
            "interactive": median_seconds(people, finished),
            "scheduled": median_seconds(schedules, finished),
        },
        "scheduled_not_started_when_people_asked": len(passed_by),
        "finished_before_a_person": len(overtaken),
    }
