"""The gateway's load, for locust (`locust -f bench/gateway_load.py --headless ...`, run by bench.gateway).

Three kinds of users, their counts and rates read from the JSON file named by HOTREPOS_LOAD_PLAN:
- watchers hold a progress stream each, on the scheduled reports waiting in GitHub's line (everyone may
  follow those), and open the next one when theirs ends: the streams stay open for the whole run;
- readers ask for the status of their own reports and of the team's scheduled ones, and for their
  history;
- requesters ask for reports, as the page's Generate button does.
Every user signs in with one of the plan's API tokens, spread over the replicas. What locust does not
time itself (each stream's life and when it was told its report's outcome) and every request and
failure from the first are written to the plan's `streams_path`.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import gevent
import gevent.event
from locust import FastHttpUser, HttpUser, events, task

PLAN: dict[str, Any] = json.loads(Path(os.environ["HOTREPOS_LOAD_PLAN"]).read_text())
GATEWAYS: list[str] = PLAN["gateways"]
IDENTITIES: list[dict[str, str]] = PLAN["identities"]
ORDERS: list[dict[str, str]] = PLAN["orders"]
STREAM = "GET /api/reports/{id}/events"
STREAM_TO_OUTCOME = "stream, open to the outcome"

# Shared by every user of this one process (gevent: no two run at once between two waits).
scheduled_open: list[str] = list(PLAN["scheduled"])
watchers_on: Counter[str] = Counter()
reports_of: dict[str, list[str]] = {identity["token"]: [] for identity in IDENTITIES}
for report_id, token in PLAN["reports"]:
    reports_of[token].append(report_id)
# Each stream: (report id, opened at, ended at, told the outcome at or None), on the wall clock, as
# the exporter's report.exported carries the time it was published.
streams_followed: list[tuple[str, float, float, float | None]] = []
# Every request and failure from the first, the ramp's included (locust's own figures restart after
# the ramp, for the latencies of the held load).
requests_made: Counter[str] = Counter()
failures_made: Counter[str] = Counter()
streams = {"open": 0}
open_streams_each_second: list[int] = []
stopping = gevent.event.Event()
_users = 0


def _next_gateway() -> str:
    global _users
    _users += 1
    return GATEWAYS[_users % len(GATEWAYS)]


class Arrivals:
    """Seconds to a user's next request: random arrivals at the set rate (a Poisson process), kept
    whatever the answers' times, so a slow gateway meets the same load, not a gentler one.

    A fixed pace would have every user of a class ask in the same instant, a burst that no real load
    makes and that measures the queue it builds, not the gateway.
    """

    def __init__(self, per_second: float) -> None:
        self._per_second = per_second
        self._next = time.monotonic() + random.expovariate(per_second)

    def __call__(self) -> float:
        now = time.monotonic()
        self._next = max(self._next, now - 1.0) + random.expovariate(self._per_second)
        return max(0.0, self._next - now)


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class Watcher(HttpUser):
    """One person's page following a report's progress, over requests' streaming (each chunk as it comes)."""

    fixed_count = PLAN["watchers"]

    def wait_time(self) -> float:
        # A person moves on to the next report in their own time, about a second after theirs ended:
        # a report's watchers do not all open their next stream in the same instant.
        return random.expovariate(1.0)

    def __init__(self, environment: Any) -> None:
        self.host = _next_gateway()
        super().__init__(environment)
        self.token = random.choice(IDENTITIES)["token"]

    @task
    def follow(self) -> None:
        candidates = [report_id for report_id in scheduled_open if report_id]
        if not candidates:
            time.sleep(0.5)  # gevent-patched: every scheduled report ended, nothing left to follow
            return
        report_id = min(candidates, key=lambda candidate: watchers_on[candidate])
        watchers_on[report_id] += 1
        streams["open"] += 1
        try:
            self._follow(report_id)
        finally:
            watchers_on[report_id] -= 1
            streams["open"] -= 1

    def _follow(self, report_id: str) -> None:
        opened, started = time.time(), time.perf_counter()
        outcome: float | None = None
        # Recorded however the stream ends, locust stopping it included: a stream open when its report
        # finished and never told is what the figure must count.
        try:
            with self.client.get(
                f"/api/reports/{report_id}/events",
                name=STREAM,
                headers=_bearer(self.token),
                stream=True,
                timeout=(10, 60),
                catch_response=True,
            ) as response:
                if response.status_code == 204:
                    response.success()  # it ended before the stream opened: nothing to follow
                    _ended(report_id)
                    return
                if response.status_code != 200:
                    response.failure(f"stream answered {response.status_code}")
                    return
                outcome = _read_to_outcome(response.iter_content(chunk_size=None))
        except Exception as exc:  # a stream that broke is an error of the run, whatever broke it
            _fire(STREAM_TO_OUTCOME, started, exc)
            return
        finally:
            streams_followed.append((report_id, opened, time.time(), outcome))
        if outcome is None:
            _fire(STREAM_TO_OUTCOME, started, RuntimeError("the stream ended without the report's outcome"))
            return
        _ended(report_id)
        _fire(STREAM_TO_OUTCOME, started, None)


def _read_to_outcome(chunks: Any) -> float | None:
    """When the frame carrying the outcome arrived, or None if the stream ended first."""
    buffer = b""
    for chunk in chunks:
        buffer += chunk
        while b"\n\n" in buffer:
            frame, buffer = buffer.split(b"\n\n", 1)
            for line in frame.split(b"\n"):
                if line.startswith(b"data:"):
                    state = json.loads(line[5:]).get("state")
                    if state in ("exported", "failed"):
                        return time.time()
    return None


def _ended(report_id: str) -> None:
    if report_id in scheduled_open:
        scheduled_open[scheduled_open.index(report_id)] = ""


def _fire(name: str, started: float, exception: BaseException | None) -> None:
    events.request.fire(
        request_type="SSE",
        name=name,
        response_time=(time.perf_counter() - started) * 1000,
        response_length=0,
        exception=exception,
        context={},
    )


class PacedUser(FastHttpUser):
    """A user asking at random times at its class's rate, on one of the replicas."""

    abstract = True
    per_second = 1.0

    def __init__(self, environment: Any) -> None:
        self.host = _next_gateway()
        super().__init__(environment)
        self.arrivals = Arrivals(self.per_second)

    def wait_time(self) -> float:
        return self.arrivals()


class Reader(PacedUser):
    """The page and API clients asking where their reports stand: three status reads to one history read."""

    fixed_count = PLAN["readers"]
    per_second = PLAN["reads_per_second_per_reader"]

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        self.token = random.choice(IDENTITIES)["token"]

    @task(3)
    def status(self) -> None:
        # Half of them one's own reports (finished ones, mostly), half the team's scheduled reports,
        # which change while they are read.
        waiting = [report_id for report_id in scheduled_open if report_id]
        if waiting and random.random() < 0.5:
            report_id = random.choice(waiting)
        else:
            report_id = random.choice(reports_of[self.token])
        self.client.get(f"/api/reports/{report_id}", name="GET /api/reports/{id}", headers=_bearer(self.token))

    @task(1)
    def history(self) -> None:
        self.client.get("/api/reports?limit=20", name="GET /api/reports", headers=_bearer(self.token))


class Requester(PacedUser):
    """The Generate button: one report request a second per requester, from any identity."""

    fixed_count = PLAN["requesters"]

    @task
    def generate(self) -> None:
        token = random.choice(IDENTITIES)["token"]
        response = self.client.post(
            "/api/reports", name="POST /api/reports", json=random.choice(ORDERS), headers=_bearer(token)
        )
        if response.status_code == 202:
            reports_of[token].append(response.json()["report_id"])


@events.spawning_complete.add_listener
def _count_open_streams(**_: Any) -> None:
    def count() -> None:
        while not stopping.is_set():
            open_streams_each_second.append(streams["open"])
            stopping.wait(1.0)

    gevent.spawn(count)


@events.test_stopping.add_listener
def _stop_counting(**_: Any) -> None:
    # The held load ends here: the streams locust closes as it stops are not a figure of it.
    stopping.set()


@events.request.add_listener
def _count(name: str, exception: BaseException | None = None, **_: Any) -> None:
    requests_made[name] += 1
    if exception is not None:
        failures_made[name] += 1


@events.quitting.add_listener
def _write_streams(environment: Any, **_: Any) -> None:
    Path(PLAN["streams_path"]).write_text(
        json.dumps(
            {
                "streams": streams_followed,
                "stopped_at": time.time(),
                "open_streams": open_streams_each_second,
                "requests": requests_made,
                "failures": failures_made,
            }
        )
    )
