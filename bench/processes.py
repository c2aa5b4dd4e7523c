"""What a set of processes costs, read from /proc: CPU time, each one's peak RSS and the whole set's."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from pathlib import Path

MB = 1024 * 1024


def children_of(pid: int) -> list[int]:
    """Every descendant of pid (prefork pools fork their workers)."""
    found: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return found
    for task in tasks:
        try:
            text = (task / "children").read_text()
        except OSError:
            continue
        for child in text.split():
            found.append(int(child))
            found.extend(children_of(int(child)))
    return found


def _status_kb(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU time the processes have used so far."""
    ticks = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def runqueue_waits(pids: list[int]) -> dict[int, float]:
    """Each thread's time so far ready to run but waiting for a core (schedstat), by thread id."""
    waits: dict[int, float] = {}
    for pid in pids:
        try:
            tasks = list(Path(f"/proc/{pid}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                waits[int(task.name)] = int((task / "schedstat").read_text().split()[1]) / 1e9
            except (OSError, IndexError, ValueError):
                continue
    return waits


def runqueue_wait_since(before: dict[int, float], pids: list[int]) -> float:
    """The waits added since `before`, thread by thread; a thread that ended meanwhile is not counted."""
    return sum(wait - before.get(tid, 0.0) for tid, wait in runqueue_waits(pids).items())


def with_children(pids: list[int]) -> list[int]:
    return [p for pid in pids for p in (pid, *children_of(pid))]


class MachineCpu:
    """The share of the machine's CPU time that was busy while entered, whoever used it."""

    def __enter__(self) -> MachineCpu:
        self._start = self._read()
        self.busy = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        busy0, total0 = self._start
        busy1, total1 = self._read()
        self.busy = (busy1 - busy0) / max(1, total1 - total0)

    @staticmethod
    def _read() -> tuple[int, int]:
        values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = values[3] + values[4]
        return sum(values) - idle, sum(values)


def peak_rss_mb(pid: int) -> float:
    """The process's peak RSS since it started or since reset_peaks."""
    return round(_status_kb(pid, "VmHWM") / 1024, 1)


def reset_peaks(pids: list[int]) -> None:
    """Restart each process's peak-RSS counter (VmHWM), so the peak covers the measured run only."""
    for pid in pids:
        with contextlib.suppress(OSError):
            Path(f"/proc/{pid}/clear_refs").write_text("5")


class MemorySampler:
    """Samples the summed RSS of named processes and their children while entered (re-entrant)."""

    def __init__(self, processes: Callable[[], dict[str, int]], interval: float = 0.05) -> None:
        self._processes = processes
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._peaks_reset = False
        self.peak_total_kb = 0

    def __enter__(self) -> MemorySampler:
        if not self._peaks_reset:
            reset_peaks(self._all_pids())
            self._peaks_reset = True
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _all_pids(self) -> list[int]:
        return with_children(list(self._processes().values()))

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            total = sum(_status_kb(pid, "VmRSS") for pid in self._all_pids())
            self.peak_total_kb = max(self.peak_total_kb, total)

    def report(self) -> dict[str, object]:
        """Peak RSS of each process (children listed apart), in MB, and of the whole set together."""
        per_process: dict[str, float] = {}
        for name, pid in self._processes().items():
            per_process[name] = round(_status_kb(pid, "VmHWM") / 1024, 1)
            for index, child in enumerate(children_of(pid), start=1):
                per_process[f"{name} child {index}"] = round(_status_kb(child, "VmHWM") / 1024, 1)
        return {
            "peak_rss_mb": per_process,
            "stack_peak_rss_mb": round(self.peak_total_kb / 1024, 1),
            "sum_of_peaks_mb": round(sum(per_process.values()), 1),
        }
