"""The benchmark command still runs and reports every figure; what the figures are is not asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.services import ROOT

FIGURES: list[tuple[str, ...]] = [
    *(
        ("latency", latency, *figure)
        for latency in ("0ms", "300ms")
        for figure in (
            *((design, name) for design in ("hotrepos", "baseline") for name in ("p50_ms", "p95_ms")),
            ("ratio_p50",),
            ("ratio_p95",),
            ("github_round_trip_ms",),
            ("hotrepos_p50_over_round_trip",),
            *(
                ("hotrepos_stages_p50_ms", stage)
                for stage in (
                    "fetcher_to_first_page",
                    "fetcher_first_to_last_page",
                    "aggregator",
                    "exporter",
                    "request_to_outcome",
                )
            ),
        )
    ),
    *(("broker_floor", queue_type, name) for queue_type in ("quorum", "classic") for name in ("p50_ms", "p95_ms")),
    ("throughput", "hotrepos", "reports_per_second"),
    *(
        ("throughput", "hotrepos", "cpu_ms_per_report_by_process", process)
        for process in ("fetcher-1", "aggregator", "exporter", "notifier", "fetcher-beat")
    ),
    ("throughput", "baseline", "reports_per_second"),
    ("throughput", "ratio"),
    *(
        ("scale_out", "fetchers", fetchers, name)
        for fetchers in ("1", "2", "4")
        for name in ("reports_per_second", "speedup", "efficiency")
    ),
    *(
        ("github_budget", run, name)
        for run in ("identical_1_fetchers", "identical_4_fetchers", "distinct_overflow")
        for name in ("requests", "upstream_calls", "full_answers", "not_modified", "rate_limited", "answered")
    ),
    *(
        ("backlog", run, *name)
        for run in ("1_fetchers", "4_fetchers")
        for name in (
            ("exported",),
            ("failed",),
            ("rate_limited",),
            ("budget_use",),
            ("finished_before_a_person",),
            ("median_wait_to_first_page_seconds", "interactive"),
            ("median_wait_to_first_page_seconds", "scheduled"),
        )
    ),
    *(
        ("memory", design, name)
        for design in ("hotrepos", "baseline")
        for name in ("stack_peak_rss_mb", "sum_of_peaks_mb")
    ),
    *(
        ("memory", "hotrepos", "peak_rss_mb", service)
        for service in ("fetcher-1", "aggregator", "exporter", "notifier", "fetcher-beat")
    ),
    *(
        ("gateway", f"{replicas}_replicas", *name)
        for replicas in (1, 2)
        for name in (
            ("errors",),
            ("error_rate",),
            *(
                ("endpoints", endpoint, measure)
                for endpoint in ("GET /api/reports/{id}", "GET /api/reports", "POST /api/reports")
                for measure in ("requests", "failures", "per_second", "p50_ms", "p99_ms")
            ),
            ("streams_told", "streams_told"),
            ("streams_told", "max_ms"),
            ("streams_told", "streams_not_told"),
            ("gateway", "cpu_cores"),
            ("gateway", "peak_rss_mb", "gateway-1"),
            ("locust_cpu_cores",),
            ("machine_busy",),
        )
    ),
    *(
        ("targets", target, "measured")
        for target in (
            "latency_0ms_p50_ratio",
            "latency_300ms_p50_over_round_trip",
            "throughput_ratio",
            "cpu_per_report_ratio",
            "scale_out_efficiency",
            "budget_upstream_calls_identical",
            "budget_rate_limit_errors",
            "budget_every_request_answered",
            "backlog_exported",
            "backlog_failed",
            "backlog_rate_limit_answers",
            "backlog_budget_use",
            "backlog_people_first",
            "memory_stack_peak_mb",
            *(
                f"gateway_{replicas}_{name}"
                for replicas in (1, 2)
                for name in ("errors", "status_p99_ms", "every_stream_told_ms")
            ),
        )
    ),
]


def figure(results: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = results
    for key in path:
        value = value[key]
    return value


@pytest.mark.timeout(900)
def test_the_quick_benchmark_reports_every_figure(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=840,
    )
    assert done.returncode == 0, done.stderr[-6000:]
    [written] = tmp_path.glob("*-quick.json")
    results = json.loads(written.read_text())
    assert json.loads(done.stdout) == results
    missing = [path for path in FIGURES if not isinstance(figure(results, path), int | float)]
    assert not missing
    assert all(isinstance(target["met"], bool) for target in results["targets"].values())
