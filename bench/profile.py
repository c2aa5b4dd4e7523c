"""Where each service spends its CPU under the throughput run: py-spy on every process, stacks folded.

py-spy samples every service from outside (no change to the code measured) while bursts of reports
run at 0 ms GitHub latency; the raw folded stacks are kept beside the results, and the summary gives
each service's top frames by own time and by time inside them, and the share of each library.
"""

from __future__ import annotations

import collections
import signal
import subprocess
import sys
from pathlib import Path

from bench.fake_github import FakeGitHubProcess
from bench.scenarios import burst
from bench.systems import HotreposSystem

PY_SPY = Path(sys.executable).parent / "py-spy"
SAMPLES_PER_SECOND = 200
TOP = 12
# What a frame belongs to, by the file it runs in: the first match wins.
LIBRARIES = (
    ("celery", "celery/"),
    ("kombu", "kombu/"),
    ("amqp (py-amqp)", "amqp/"),
    ("pydantic", "pydantic"),
    ("redis", "redis/"),
    ("structlog and logging", ("structlog/", "logging/")),
    ("json", "json/"),
    ("requests and urllib3", ("requests/", "urllib3/", "http/client")),
    ("prometheus", "prometheus_client/"),
    ("opentelemetry", "opentelemetry/"),
    ("hotrepos", ("shared/", "services/")),
)


def profile(
    hot: HotreposSystem, github: FakeGitHubProcess, *, reports: int, rounds: int, out_dir: Path
) -> dict[str, object]:
    github.configure(latency_ms=0, rate_limit_per_minute=None)
    burst(hot, 10, "warmup")
    recorders = record(hot.processes(), out_dir)
    runs = []
    try:
        for _ in range(rounds):
            runs.append(burst(hot, reports, "profile"))
    finally:
        stop(recorders)
    return {
        "reports": reports,
        "rounds": rounds,
        "reports_per_second": [round(run["reports_per_second"], 2) for run in runs],
        "folded_stacks": str(out_dir),
        "services": {name: summarise(out_dir / f"{name}.folded") for name in sorted(recorders)},
    }


def record(processes: dict[str, int], out_dir: Path | None) -> dict[str, subprocess.Popen[bytes]]:
    """A py-spy recorder on each named process, writing `<name>.folded` into out_dir (none without one)."""
    if out_dir is None:
        return {}
    out_dir.mkdir(parents=True, exist_ok=True)
    return {
        name: subprocess.Popen(
            [
                str(PY_SPY),
                "record",
                "--pid",
                str(pid),
                "--format",
                "raw",
                "--rate",
                str(SAMPLES_PER_SECOND),
                "--nonblocking",
                # Only what holds the GIL: time spent computing, not waiting on a socket.
                "--gil",
                "--output",
                str(out_dir / f"{name}.folded"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for name, pid in processes.items()
    }


def stop(recorders: dict[str, subprocess.Popen[bytes]]) -> None:
    """Each recorder writes its file as it stops."""
    for recorder in recorders.values():
        recorder.send_signal(signal.SIGINT)
    for recorder in recorders.values():
        recorder.wait(60)


def summarise(folded: Path) -> dict[str, object]:
    """Own time (the frame on top) and time inside (anywhere in the stack), as shares of the samples."""
    own: collections.Counter[str] = collections.Counter()
    inside: collections.Counter[str] = collections.Counter()
    libraries: collections.Counter[str] = collections.Counter()
    total = 0
    if folded.exists():
        for line in folded.read_text().splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            count = int(count_text)
            frames = [frame for frame in stack.split(";") if not frame.startswith(("process ", "thread "))]
            if not frames:
                continue
            total += count
            own[_short(frames[-1])] += count
            for frame in {_short(frame) for frame in frames}:
                inside[frame] += count
            libraries[_library(frames[-1])] += count

    def shares(counter: collections.Counter[str]) -> list[tuple[str, float]]:
        return [(frame, round(count / total, 3)) for frame, count in counter.most_common(TOP)] if total else []

    return {
        "samples": total,
        "own": shares(own),
        "inside": shares(inside),
        "libraries": dict(shares(libraries)),
    }


def _short(frame: str) -> str:
    """`function (path/to/file.py:line)` without the line, so a function's lines add up."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    return f"{name} ({'/'.join(path.split('/')[-2:])})"


def _library(frame: str) -> str:
    for library, markers in LIBRARIES:
        if any(marker in frame for marker in ((markers,) if isinstance(markers, str) else markers)):
            return library
    return "other (interpreter, standard library)"
