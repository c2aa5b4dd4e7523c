"""Where one report's time goes, stage by stage, from the publication time each event carries.

Every CloudEvent of hotrepos says when it was built (`time`, the publisher's wall clock, one machine
here), so the events of one report mark where its time went: the fetcher from the request to its
first and last page, the aggregator to the aggregate, the exporter to the outcome. A listener bound
to every event of the stack decodes them all, so these runs are apart from the timed latency runs.
"""

from __future__ import annotations

import datetime as dt
import json
import statistics
import threading
import time
from collections import defaultdict
from typing import Any

import pika

from bench.fake_github import FakeGitHubProcess
from bench.scenarios import one_report
from bench.systems import HotreposSystem
from shared.events import PAGES_PER_REPORT

# (stage, from the last event of this type, to the first event of that type)
STAGES = (
    ("fetcher_to_first_page", "report.requested", "report.page.fetched"),
    ("fetcher_first_to_last_page", "report.page.fetched", "report.page.fetched"),
    ("aggregator", "report.page.fetched", "report.aggregated"),
    ("exporter", "report.aggregated", "report.exported"),
)


# The events of one report, and how many of each.
EXPECTED = {
    "report.requested": 1,
    "report.page.fetched": PAGES_PER_REPORT,
    "report.aggregated": 1,
    "report.exported": 1,
}


class EventTimeline:
    """Each report's events by type, with the time each says it was published."""

    def __init__(self, amqp_url: str) -> None:
        self._lock = threading.Lock()
        self._times: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        self._stop = threading.Event()
        self._connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
        channel = self._connection.channel()
        queue = channel.queue_declare("", exclusive=True).method.queue
        channel.queue_bind(queue, "hotrepos.events", "#")
        channel.basic_consume(queue, self._on_message, auto_ack=True)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._connection.process_data_events(time_limit=0.2)
        self._connection.close()

    def _on_message(self, channel: object, method: object, properties: object, body: bytes) -> None:
        event = json.loads(body)
        data = event.get("data")
        stamped = event.get("time")
        report_id = data.get("report_id") if isinstance(data, dict) else None
        if isinstance(stamped, str) and isinstance(report_id, str):
            with self._lock:
                self._times[report_id][event["type"]].append(dt.datetime.fromisoformat(stamped).timestamp())

    def of(self, report_id: str) -> dict[str, list[float]]:
        with self._lock:
            return {event_type: sorted(times) for event_type, times in self._times.get(report_id, {}).items()}

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


def stage_seconds(times: dict[str, list[float]]) -> dict[str, float]:
    """Each stage of one report: from the last event it starts from to the first it ends with."""
    stages = {}
    for name, start, end in STAGES:
        if name == "fetcher_first_to_last_page":
            stages[name] = times[end][-1] - times[start][0]
        else:
            stages[name] = times[end][0] - times[start][-1]
    stages["request_to_outcome"] = times["report.exported"][0] - times["report.requested"][0]
    return stages


def measure(system: HotreposSystem, github: FakeGitHubProcess, latency_ms: int, runs: int) -> dict[str, Any]:
    """p50 of each stage over single reports, one at a time, at this GitHub latency."""
    github.configure(latency_ms=latency_ms, rate_limit_per_minute=None)
    timeline = EventTimeline(system.amqp_url)
    samples: dict[str, list[float]] = defaultdict(list)
    try:
        for _ in range(runs):
            _, completion = one_report(system, f"stages{latency_ms}")
            # The outcome was heard, so every event before it was published; the listener may
            # still be reading them.
            times = _complete(timeline, completion.report_id)
            for name, seconds in stage_seconds(times).items():
                samples[name].append(seconds * 1000)
    finally:
        timeline.close()
    return {name: round(statistics.median(values), 1) for name, values in samples.items()} | {"runs": runs}


def _complete(timeline: EventTimeline, report_id: str, timeout: float = 10) -> dict[str, list[float]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        times = timeline.of(report_id)
        # At least: a redelivered event is heard twice.
        if all(len(times.get(event_type, ())) >= count for event_type, count in EXPECTED.items()):
            return times
        time.sleep(0.01)
    raise RuntimeError(f"the events of {report_id} were not all heard within {timeout}s: {timeline.of(report_id)}")
