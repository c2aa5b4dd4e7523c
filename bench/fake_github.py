"""The bundled fake GitHub in a process of its own, steered through its `/_fake/*` control API.

A process, not a thread of the benchmark: serving 0.5 MB pages must not take the GIL from the thread
that timestamps completions.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[1]


class FakeGitHubProcess:
    def __init__(self, today: dt.date, log_path: Path) -> None:
        self.today = today
        self.log_path = log_path
        self.url = ""
        self._process: subprocess.Popen[str] | None = None
        self._control = requests.Session()

    def start(self) -> FakeGitHubProcess:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "tests.fake_github", "--port", "0", "--today", self.today.isoformat()],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=self.log_path.open("ab"),
            text=True,
        )
        assert self._process.stdout is not None
        line = self._process.stdout.readline()
        if "listening on " not in line:
            raise RuntimeError(f"fake GitHub did not start: {line!r}")
        self.url = line.rsplit(" ", 1)[1].strip()
        return self

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def configure(
        self, *, latency_ms: int, rate_limit_per_minute: int | None, rate_limit_window_seconds: float = 60.0
    ) -> None:
        self._post(
            "config",
            {
                "latency_ms": latency_ms,
                "rate_limit_per_minute": rate_limit_per_minute,
                "rate_limit_window_seconds": rate_limit_window_seconds,
            },
        )

    def reset(self) -> None:
        """Zero the counters and the rate-limit windows."""
        self._post("reset", None)

    def stats(self) -> dict[str, Any]:
        response = self._control.get(f"{self.url}/_fake/stats", timeout=10)
        response.raise_for_status()
        stats: dict[str, Any] = response.json()
        return stats

    def _post(self, name: str, payload: Any) -> None:
        self._control.post(f"{self.url}/_fake/{name}", json=payload, timeout=10).raise_for_status()

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(5)
