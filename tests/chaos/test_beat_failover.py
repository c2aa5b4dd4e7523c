"""Beats in Redis, under a lock: two fire each due run once and one takes over when the other dies;
a run that fell due while no beat ran fires when one comes back."""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.amqp import EventListener
from tests.support.chaos import Figures, publish_figures
from tests.support.services import ServiceProcess
from tests.support.waiting import eventually


@dataclass
class Beats:
    """Beat processes of one stack (one vhost), and every report request they publish."""

    amqp_url: str
    redis_url: str
    log_dir: Path
    schedule: str
    listener: EventListener
    processes: list[ServiceProcess] = field(default_factory=list)

    def start(self, name: str) -> ServiceProcess:
        env = {
            "AMQP_URL": self.amqp_url,
            "REDIS_URL": self.redis_url,
            "REPORT_SCHEDULE": self.schedule,
            "BEAT_LOCK_SECONDS": str(BEAT_LOCK_SECONDS),
        }
        process = ServiceProcess(name, env, self.log_dir, ("beat",)).start()
        self.processes.append(process)
        return process

    def firings(self) -> list[dt.datetime]:
        return [dt.datetime.fromisoformat(e["time"]) for e in self.listener.events if e["type"] == "report.requested"]


# Short, for the test's sake: a standby takes over once a dead beat's lock has run out.
BEAT_LOCK_SECONDS = 6
EVERY_SECONDS = 3


@pytest.fixture
def beats(amqp_url: str, redis_url: str, tmp_path: Path) -> Iterator[Beats]:
    listener = EventListener(amqp_url, "report.requested")
    running = Beats(amqp_url, redis_url, tmp_path, f"day=every {EVERY_SECONDS}s", listener)
    try:
        yield running
    finally:
        for process in running.processes:
            process.stop()
        listener.close()


def beat_figures(name: str, firings: list[dt.datetime], lost: int, **extra: object) -> dict[str, object]:
    gaps = [(later - earlier).total_seconds() for earlier, later in itertools.pairwise(firings)]
    # Two beats firing one run would publish twice within the same instant.
    duplicates = sum(1 for gap in gaps if gap < EVERY_SECONDS / 2)
    figures = Figures(
        requested=len(firings),
        exported=0,
        failed=0,
        csv_files=0,
        emails=0,
        duplicates=duplicates,
        lost=lost,
        dead_lettered=0,
    )
    return publish_figures(name, figures, runs_fired=len(firings), gaps_seconds=[round(g, 1) for g in gaps], **extra)


def test_two_beats_fire_each_due_run_once_and_one_takes_over_when_the_other_dies(
    beats: Beats, figures_name: str
) -> None:
    first, second = beats.start("fetcher-beat-1"), beats.start("fetcher-beat-2")
    eventually(lambda: len(beats.firings()) >= 4, timeout=60, message="four runs fired")
    # Whichever beat holds the lock dies as in a crash: the other takes over once the lock runs out.
    holder = first if "schedule.fired" in first.output() else second
    assert holder.process is not None
    holder.process.kill()
    holder.process.wait(10)
    before = len(beats.firings())
    eventually(lambda: len(beats.firings()) >= before + 3, timeout=60, message="runs fired by the standby")
    survivor = second if holder is first else first
    taken_over = "schedule.fired" in survivor.output()
    payload = beat_figures(figures_name, beats.firings(), lost=0 if taken_over else 1, beats=2, killed=holder.name)
    assert taken_over, "the standby never fired"
    assert payload["duplicates"] == 0, payload


def test_a_run_missed_while_no_beat_ran_fires_when_one_comes_back(beats: Beats, figures_name: str) -> None:
    beats.schedule = "day=every 10s"
    beat = beats.start("fetcher-beat")
    eventually(lambda: beats.firings(), timeout=60, message="a first run fired")
    beat.stop()
    # Down across the next run's time: the run falls due while no beat runs.
    down_since = dt.datetime.now(dt.UTC)
    eventually(
        lambda: dt.datetime.now(dt.UTC) - down_since > dt.timedelta(seconds=12),
        timeout=60,
        message="the next run's time passed",
        interval=1,
    )
    back = dt.datetime.now(dt.UTC)
    beats.start("fetcher-beat")
    eventually(lambda: len(beats.firings()) >= 2, timeout=60, message="the missed run fired")
    missed = beats.firings()[1]
    # At once on coming back, not a whole interval later as a run that was not missed would.
    fired_after_back = (missed - back).total_seconds()
    payload = beat_figures(
        figures_name,
        beats.firings(),
        lost=0 if fired_after_back < 5 else 1,
        down_seconds=12,
        missed_run_fired_seconds_after_start=round(fired_after_back, 1),
    )
    assert payload["lost"] == 0 and payload["duplicates"] == 0, payload
