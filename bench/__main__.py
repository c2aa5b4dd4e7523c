"""`python -m bench [--quick]`: hotrepos against the classic Celery chord, on this machine, in one run.

Everything runs on the local RabbitMQ (a throwaway vhost per design and stack) and Redis (databases 12
for hotrepos and 13 for the chord's results, cleaned after use), against the bundled fake GitHub in a
process of its own. Prints one JSON object and writes it under bench/results/.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from bench import floor, gateway, profile, scenarios, stages
from bench.fake_github import FakeGitHubProcess
from bench.gateway import GatewayLoad
from bench.systems import BaselineSystem, HotreposSystem
from tests.support.broker import Broker, test_broker

RESULTS_DIR = Path(__file__).resolve().parent / "results"
GITHUB_RATE_LIMIT = 30
# Speed runs: every report pays its five fetches, as in the chord, so the page cache is off; the
# shared budget stays on (its Redis round trip is part of the cost) with a limit that never binds.
SPEED_ENV = {"GITHUB_CACHE_SECONDS": "0", "GITHUB_RATE_LIMIT_REQUESTS": "1000000"}
# Budget runs use the shipped defaults for the cache and the budget.
BUDGET_ENV: dict[str, str] = {}
FIGURES = ("speed", "scale_out", "budget", "backlog", "gateway")
# Run only when asked for: py-spy, which slows what it watches, on every service or on the gateway.
ON_DEMAND = ("profile", "gateway_profile")


@dataclass(frozen=True)
class Plan:
    latency_runs: int
    throughput_reports: int
    throughput_rounds: int
    throughput_warmup: int
    scale_out_reports: int
    # Out, back and out again in the full run, so that a drift in the machine's load hits each count
    # alike; each count's figure is the median of its runs, so one run that shared the cores with
    # other work does not decide it.
    scale_out_fetchers: tuple[int, ...]
    budget_requests: int
    budget_spread_seconds: float
    budget_fetchers: tuple[int, ...]
    overflow_requests: int
    # The backlog: scheduled reports past the budget, then a few people's, against GitHub's limit
    # compressed into a short window (the fake enforces it, the fetchers share it).
    backlog_scheduled: int
    backlog_interactive: int
    backlog_interactive_after_seconds: float
    backlog_limit: int
    backlog_window_seconds: float
    backlog_fetchers: tuple[int, ...]
    gateway: GatewayLoad


FULL = Plan(
    latency_runs=30,
    throughput_reports=100,
    throughput_rounds=4,
    throughput_warmup=10,
    scale_out_reports=100,
    scale_out_fetchers=(1, 2, 4, 4, 2, 1, 1, 2, 4),
    budget_requests=20,
    budget_spread_seconds=10.0,
    budget_fetchers=(1, 4),
    overflow_requests=8,
    backlog_scheduled=30,
    backlog_interactive=5,
    backlog_interactive_after_seconds=3.0,
    backlog_limit=10,
    backlog_window_seconds=10.0,
    backlog_fetchers=(1, 4),
    gateway=GatewayLoad(
        watchers=1000,
        readers=40,
        reads_per_second=200,
        report_requests_per_second=5,
        seconds=60,
        scheduled=100,
        identities=50,
        replicas=(1, 2),
        github_limit=10,
        github_window_seconds=2.0,
    ),
)
QUICK = Plan(
    latency_runs=3,
    throughput_reports=5,
    throughput_rounds=1,
    throughput_warmup=1,
    scale_out_reports=6,
    scale_out_fetchers=(1, 2, 4),
    budget_requests=4,
    budget_spread_seconds=1.0,
    budget_fetchers=(1, 4),
    overflow_requests=2,
    backlog_scheduled=6,
    backlog_interactive=2,
    backlog_interactive_after_seconds=1.0,
    backlog_limit=10,
    backlog_window_seconds=2.0,
    backlog_fetchers=(1, 4),
    gateway=GatewayLoad(
        watchers=40,
        readers=2,
        reads_per_second=10,
        report_requests_per_second=1,
        seconds=6,
        scheduled=10,
        identities=4,
        replicas=(1, 2),
        github_limit=10,
        github_window_seconds=2.0,
    ),
)


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


@contextmanager
def hotrepos(
    broker: Broker, redis_url: str, github: FakeGitHubProcess, workdir: Path, *, fetchers: int, env: dict[str, str]
) -> Iterator[HotreposSystem]:
    system = HotreposSystem(broker, redis_url, github, workdir, fetchers=fetchers, env=env)
    try:
        yield system
    finally:
        system.stop()


def forget_github_state(redis_url: str) -> None:
    """Each budget run starts with no cached page and an unspent budget."""
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter("hotrepos:github:*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


def forget_pipeline_state(redis_url: str) -> None:
    """Fan-in pages, dedup marks and cached pages of the benchmark's own reports."""
    client = redis.Redis.from_url(redis_url)
    for pattern in ("hotrepos:*",):
        keys = list(client.scan_iter(pattern, count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
    client.close()


def machine(broker: Broker, redis_url: str) -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = redis.Redis.from_url(redis_url).info("server")
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3, 1),
        "python": platform.python_version(),
        "rabbitmq": broker.api("GET", "/overview").json().get("rabbitmq_version"),
        "redis": info.get("redis_version"),
    }


def targets(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    def check(measured: float | None, target: str, met: bool) -> dict[str, Any]:
        return {"measured": measured, "target": target, "met": met}

    checks: dict[str, dict[str, Any]] = {}
    if "latency" in results:
        latency0 = results["latency"]["0ms"]
        latency300 = results["latency"]["300ms"]
        stack_peak = results["memory"]["hotrepos"]["stack_peak_rss_mb"]
        throughput = results["throughput"]
        checks["latency_0ms_p50_ratio"] = check(latency0["ratio_p50"], "<= 0.25", latency0["ratio_p50"] <= 0.25)
        checks["latency_300ms_p50_over_round_trip"] = check(
            latency300["hotrepos_p50_over_round_trip"], "<= 1.15", latency300["hotrepos_p50_over_round_trip"] <= 1.15
        )
        checks["throughput_ratio"] = check(throughput["ratio"], ">= 5", throughput["ratio"] >= 5)
        cpu_ratio = round(throughput["hotrepos"]["cpu_ms_per_report"] / throughput["baseline"]["cpu_ms_per_report"], 3)
        checks["cpu_per_report_ratio"] = check(cpu_ratio, "<= 0.15", cpu_ratio <= 0.15)
        checks["memory_stack_peak_mb"] = check(stack_peak, "< 500", stack_peak < 500)
    if "scale_out" in results:
        scale = results["scale_out"]
        last = str(max(int(n) for n in scale["fetchers"]))
        efficiency = scale["fetchers"][last]["efficiency"]
        checks["scale_out_efficiency"] = check(efficiency, ">= 0.85", efficiency >= 0.85)
    if "github_budget" in results:
        budget = results["github_budget"]
        identical = [budget[f"identical_{n}_fetchers"] for n in results["plan"]["budget_fetchers"]]
        runs = [*identical, budget["distinct_overflow"]]
        most_calls = max(run["upstream_calls"] for run in identical)
        checks["budget_upstream_calls_identical"] = check(most_calls, "<= 5", most_calls <= 5)
        rate_limited = sum(run["rate_limited"] for run in runs)
        checks["budget_rate_limit_errors"] = check(rate_limited, "== 0", rate_limited == 0)
        checks["budget_every_request_answered"] = check(
            sum(run["answered"] for run in runs),
            f"== {sum(run['requests'] for run in runs)}",
            all(run["answered"] == run["requests"] for run in runs),
        )
    if "backlog" in results:
        backlog_runs = [run for key, run in results["backlog"].items() if key.endswith("_fetchers")]
        wanted = sum(run["requests"]["scheduled"] + run["requests"]["interactive"] for run in backlog_runs)
        exported = sum(run["exported"] for run in backlog_runs)
        checks["backlog_exported"] = check(exported, f"== {wanted}", exported == wanted)
        failed = sum(run["failed"] for run in backlog_runs)
        checks["backlog_failed"] = check(failed, "== 0", failed == 0)
        refused = sum(run["rate_limited"] for run in backlog_runs)
        checks["backlog_rate_limit_answers"] = check(refused, "== 0", refused == 0)
        use = min(run["budget_use"] or 0 for run in backlog_runs)
        checks["backlog_budget_use"] = check(use, ">= 0.9", use >= 0.9)
        overtaken = sum(run["finished_before_a_person"] for run in backlog_runs)
        checks["backlog_people_first"] = check(overtaken, "== 0", overtaken == 0)
    for key, run in results.get("gateway", {}).items():
        if not key.endswith("_replicas"):
            continue
        replicas = key.removesuffix("_replicas")
        checks[f"gateway_{replicas}_errors"] = check(run["errors"], "== 0", run["errors"] == 0)
        status_p99 = run["endpoints"].get(gateway.STATUS, {}).get("p99_ms")
        checks[f"gateway_{replicas}_status_p99_ms"] = check(
            status_p99, "< 50", status_p99 is not None and status_p99 < 50
        )
        told = run["streams_told"]
        checks[f"gateway_{replicas}_every_stream_told_ms"] = check(
            told["max_ms"],
            "<= 1000, none untold",
            told["max_ms"] is not None and told["max_ms"] <= 1000 and told["streams_not_told"] == 0,
        )
    return checks


def run(
    plan: Plan,
    mode: str,
    redis_base: str,
    workdir: Path,
    figures: tuple[str, ...] = FIGURES,
    profiles_dir: Path = RESULTS_DIR / "profiles",
) -> dict[str, Any]:
    hot_redis, base_redis = f"{redis_base}/12", f"{redis_base}/13"
    today = dt.datetime.now(dt.UTC).date()
    results: dict[str, Any] = {"mode": mode, "date": today.isoformat(), "plan": dataclasses.asdict(plan)}
    if figures != FIGURES:
        results["figures"] = list(figures)
    started = time.monotonic()
    github = FakeGitHubProcess(today, workdir / "fake-github.log").start()
    try:
        with test_broker() as broker:
            results["machine"] = machine(broker, hot_redis)
            # Other work on the machine shares its cores: said, since it moves every figure.
            results["machine"]["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
            forget_pipeline_state(hot_redis)
            log("starting hotrepos (4 services, beat, 1 fetcher)")
            with hotrepos(broker, hot_redis, github, workdir, fetchers=1, env=SPEED_ENV) as hot:
                if "speed" in figures:
                    log("starting the Celery chord (prefork worker)")
                    base = BaselineSystem(broker, base_redis, github, workdir)
                    try:
                        measure_speed(plan, results, hot, base, github)
                    finally:
                        base.stop()
                if "scale_out" in figures:
                    measure_scale_out(plan, results, hot, github)
                if "budget" in figures:
                    measure_budget(plan, results, hot, github, hot_redis)
                if "backlog" in figures:
                    measure_backlog(plan, results, hot, github, hot_redis)
                if "profile" in figures:
                    log(f"profile: py-spy on every service, {plan.throughput_rounds} bursts")
                    results["profile"] = profile.profile(
                        hot,
                        github,
                        reports=plan.throughput_reports,
                        rounds=plan.throughput_rounds,
                        out_dir=profiles_dir,
                    )
            if "gateway" in figures:
                measure_gateway(plan.gateway, results, broker, hot_redis, github, workdir)
            if "gateway_profile" in figures:
                log("gateway profile: py-spy on 1 gateway under the gateway load")
                forget_pipeline_state(hot_redis)
                results["gateway_profile"] = gateway.measure(
                    plan.gateway, broker, hot_redis, github, workdir, replicas=1, profile_dir=profiles_dir / "gateway"
                )
            forget_pipeline_state(hot_redis)
    finally:
        github.stop()
    results["targets"] = targets(results)
    results["elapsed_seconds"] = round(time.monotonic() - started, 1)
    results["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return results


def measure_speed(
    plan: Plan, results: dict[str, Any], hot: HotreposSystem, base: BaselineSystem, github: FakeGitHubProcess
) -> None:
    systems = (hot, base)
    results["latency"] = {}
    for latency_ms in (0, 300):
        log(f"latency at {latency_ms} ms: {plan.latency_runs} single reports each, interleaved")
        results["latency"][f"{latency_ms}ms"] = scenarios.latency(systems, github, latency_ms, plan.latency_runs)
        log(f"where the time goes at {latency_ms} ms: {plan.latency_runs} more hotrepos reports, every event heard")
        results["latency"][f"{latency_ms}ms"]["hotrepos_stages_p50_ms"] = stages.measure(
            hot, github, latency_ms, plan.latency_runs
        )
    log(f"the broker's floor: {plan.latency_runs} messages through {len(floor.HOP_BYTES)} confirmed hops, no work")
    results["broker_floor"] = floor.measure(hot.broker, plan.latency_runs)
    log(f"throughput at 0 ms: {plan.throughput_reports} reports at once, {plan.throughput_rounds} round(s) each")
    results["throughput"], results["memory"] = scenarios.throughput(
        systems, github, plan.throughput_reports, plan.throughput_rounds, plan.throughput_warmup
    )


def measure_scale_out(plan: Plan, results: dict[str, Any], hot: HotreposSystem, github: FakeGitHubProcess) -> None:
    github.configure(latency_ms=300, rate_limit_per_minute=None)
    rates: dict[int, list[float]] = {}
    busy: dict[int, list[float]] = {}
    for fetchers in plan.scale_out_fetchers:
        hot.set_fetchers(fetchers, SPEED_ENV)
        scenarios.one_report(hot, "warmup")
        run = scenarios.burst(hot, plan.scale_out_reports, f"scale{fetchers}")
        rates.setdefault(fetchers, []).append(run["reports_per_second"])
        busy.setdefault(fetchers, []).append(run["machine_busy"])
        log(
            f"scale-out at 300 ms: {fetchers} fetcher(s), {plan.scale_out_reports} reports:"
            f" {run['reports_per_second']:.2f} reports/s, machine {run['machine_busy']:.0%} busy"
        )
    one = statistics.median(rates[1])
    results["scale_out"] = {
        "latency_ms": 300,
        "reports": plan.scale_out_reports,
        "fetcher_concurrency": 8,
        "fetchers": {
            str(fetchers): {
                "reports_per_second": round(statistics.median(runs), 2),
                "runs": [round(rate, 2) for rate in runs],
                "speedup": round(statistics.median(runs) / one, 2),
                "efficiency": round(statistics.median(runs) / one / fetchers, 2),
                "machine_busy": [round(share, 2) for share in busy[fetchers]],
            }
            for fetchers, runs in sorted(rates.items())
        },
    }


def measure_budget(
    plan: Plan, results: dict[str, Any], hot: HotreposSystem, github: FakeGitHubProcess, hot_redis: str
) -> None:
    github.configure(latency_ms=300, rate_limit_per_minute=GITHUB_RATE_LIMIT)
    budget: dict[str, Any] = {"rate_limit_per_minute": GITHUB_RATE_LIMIT}
    for fetchers in plan.budget_fetchers:
        hot.set_fetchers(fetchers, BUDGET_ENV)
        forget_github_state(hot_redis)
        github.reset()
        run = scenarios.budget(
            hot,
            github,
            requests_count=plan.budget_requests,
            spread_seconds=plan.budget_spread_seconds,
            distinct=False,
            latency_ms=300,
        )
        budget[f"identical_{fetchers}_fetchers"] = run
        log(f"budget: {plan.budget_requests} identical requests, {fetchers} fetcher(s): {run}")
    fetchers = max(plan.budget_fetchers)
    forget_github_state(hot_redis)
    github.reset()
    overflow = scenarios.budget(
        hot, github, requests_count=plan.overflow_requests, spread_seconds=0, distinct=True, latency_ms=300
    )
    budget["distinct_overflow"] = {"fetchers": fetchers, **overflow}
    log(
        f"budget: {plan.overflow_requests} distinct requests ({plan.overflow_requests * 5} calls),"
        f" {fetchers} fetchers: {overflow}"
    )
    results["github_budget"] = budget
    forget_github_state(hot_redis)


def measure_backlog(
    plan: Plan, results: dict[str, Any], hot: HotreposSystem, github: FakeGitHubProcess, hot_redis: str
) -> None:
    limit, window = plan.backlog_limit, plan.backlog_window_seconds
    github.configure(latency_ms=300, rate_limit_per_minute=limit, rate_limit_window_seconds=window)
    # Every report searches its own dates, so the cache saves nothing: off, to count calls plainly.
    env = {
        "GITHUB_CACHE_SECONDS": "0",
        "GITHUB_RATE_LIMIT_REQUESTS": str(limit),
        "GITHUB_RATE_LIMIT_WINDOW_SECONDS": str(window),
    }
    figures: dict[str, Any] = {"latency_ms": 300}
    try:
        for fetchers in plan.backlog_fetchers:
            hot.set_fetchers(fetchers, env)
            forget_github_state(hot_redis)
            github.reset()
            run = scenarios.backlog(
                hot,
                github,
                scheduled=plan.backlog_scheduled,
                interactive=plan.backlog_interactive,
                interactive_after_seconds=plan.backlog_interactive_after_seconds,
                limit=limit,
                window_seconds=window,
                first_ref_date=github.today,
            )
            figures[f"{fetchers}_fetchers"] = run
            log(f"backlog: {fetchers} fetcher(s): {run}")
    finally:
        github.configure(latency_ms=0, rate_limit_per_minute=None, rate_limit_window_seconds=60.0)
        forget_github_state(hot_redis)
    results["backlog"] = figures


def measure_gateway(
    load: GatewayLoad, results: dict[str, Any], broker: Broker, hot_redis: str, github: FakeGitHubProcess, workdir: Path
) -> None:
    figures: dict[str, Any] = {}
    try:
        for replicas in load.replicas:
            forget_pipeline_state(hot_redis)
            log(
                f"gateway: {replicas} replica(s), {load.watchers} streams, {load.reads_per_second:g} reads/s,"
                f" {load.report_requests_per_second} report requests/s for {load.seconds:g} s"
            )
            run = gateway.measure(load, broker, hot_redis, github, workdir, replicas=replicas)
            figures[f"{replicas}_replicas"] = run
            log(f"gateway: {replicas} replica(s): {json.dumps(run)}")
    finally:
        github.configure(latency_ms=0, rate_limit_per_minute=None, rate_limit_window_seconds=60.0)
    results["gateway"] = figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a few reports per figure: proves the command works")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="where to write the JSON")
    parser.add_argument(
        "--redis",
        default=os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379"),
        help="Redis server; the benchmark uses its databases 12 and 13",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=FIGURES + ON_DEMAND,
        help="measure only this figure (repeatable); the results file is named after it. `profile` (py-spy "
        "on every service under the throughput run) runs only when asked for",
    )
    args = parser.parse_args(argv)
    mode = "quick" if args.quick else "full"
    figures = tuple(f for f in FIGURES + ON_DEMAND if f in args.only) if args.only else FIGURES
    today = dt.datetime.now(dt.UTC).date().isoformat()
    with tempfile.TemporaryDirectory(prefix="hotrepos-bench-") as temporary:
        results = run(
            QUICK if args.quick else FULL,
            mode,
            args.redis.rstrip("/"),
            Path(temporary),
            figures,
            profiles_dir=args.out / "profiles" / f"{today}-{mode}",
        )
    text = json.dumps(results, indent=2)
    args.out.mkdir(parents=True, exist_ok=True)
    only = "" if figures == FIGURES else "-" + "-".join(figures)
    path = args.out / f"{results['date']}-{mode}{only}.json"
    path.write_text(text + "\n")
    print(text)
    log(f"written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
