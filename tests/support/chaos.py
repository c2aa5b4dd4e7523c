"""Chaos-tier machinery: sizes, a process killer, requests and outcomes on the wire, and the figures.

The figures are counted from outside the services, as a user would: outcome events on the wire
(by event id, per report), emails in the SMTP sink (per report), CSV files in REPORTS_DIR, and
messages in every dead-letter queue.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import random
import re
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pika
import pika.exceptions

from shared.topology import DELAY
from tests.support.amqp import CLOUDEVENTS, cloud_event
from tests.support.broker import Broker
from tests.support.pipeline import ADMIN, Pipeline
from tests.support.services import ROOT
from tests.support.smtp import SmtpSink
from tests.support.waiting import eventually

ARTIFACTS = ROOT / "test-artifacts" / "chaos"
REQUESTER = "chaos-reader@example.com"
OUTCOMES = ("report.exported", "report.failed")
FIGURES_PREFIX = "CHAOS-FIGURES "


@dataclass(frozen=True)
class ChaosSizes:
    """How hard each test pushes: the issue's sizes in full, a form CI can afford by default."""

    scale: str
    kill_reports: int
    kill_replicas: int
    kill_every: tuple[float, float]
    broker_reports: int
    broker_down_seconds: float
    smtp_reports: int
    smtp_down_seconds: float
    hostile_messages: int
    huge_messages: int


def chaos_sizes() -> ChaosSizes:
    if os.environ.get("CHAOS_SCALE", "").lower() == "full":
        return ChaosSizes("full", 100, 2, (2.0, 4.0), 50, 8.0, 30, 15.0, 3000, 6)
    return ChaosSizes("reduced", 12, 2, (1.5, 3.0), 8, 4.0, 8, 8.0, 300, 2)


# ----------------------------------------------------------------------------------------------
# A process killer


class ProcessKiller:
    """SIGKILLs a random service process every few seconds and starts it again at once."""

    def __init__(self, pipeline: Pipeline, every: tuple[float, float], rng: random.Random) -> None:
        self.pipeline = pipeline
        self.every = every
        self.rng = rng
        self.kills: list[str] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="process-killer", daemon=True)

    def start(self) -> ProcessKiller:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.rng.uniform(*self.every)):
            victim = self.rng.choice(self.pipeline.processes)
            try:
                victim.kill()
                self.kills.append(victim.name)
                victim.start()
            except Exception as exc:  # a failed restart must show in the figures, not hang the test
                self.errors.append(f"{victim.name}: {exc!r}")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def by_service(self) -> dict[str, int]:
        return dict(Counter(name.rsplit("-", 1)[0] for name in self.kills))


# ----------------------------------------------------------------------------------------------
# Requests and the events they cause


def report_ids(prefix: str, count: int) -> list[str]:
    # Zero-padded, so that no id is a prefix of another when emails are searched for it.
    run = uuid.uuid4().hex[:8]
    return [f"{prefix}-{run}-{number:04d}" for number in range(1, count + 1)]


class RequestPublisher:
    """Publishes report.requested with pika, on one confirmed connection that survives restarts."""

    def __init__(self, amqp_url: str | Sequence[str]) -> None:
        self.amqp_url = amqp_url
        self._connection: pika.BlockingConnection | None = None
        self._channel: Any = None

    def request(
        self,
        report_id: str,
        *,
        period: str = "day",
        notify: str | None = REQUESTER,
        locale: str | None = None,
        timeout: float = 120,
    ) -> None:
        data: dict[str, Any] = {"report_id": report_id, "period": period}
        if notify:
            data["notify"] = notify
        body = json.dumps(cloud_event("report.requested", data, locale=locale)).encode()
        self.publish("hotrepos.events", "report.requested", body, timeout=timeout)

    def publish(self, exchange: str, routing_key: str, body: bytes, *, timeout: float = 120) -> None:
        # Published again if the broker went away before confirming: a request is accepted once
        # it is confirmed, and the fetcher's dedup absorbs a second copy.
        refused: list[BaseException] = []

        def confirmed() -> bool:
            try:
                channel = self._open()
                channel.basic_publish(
                    exchange,
                    routing_key,
                    body,
                    pika.BasicProperties(
                        content_type=CLOUDEVENTS, delivery_mode=2, message_id=json.loads(body).get("id")
                    ),
                )
                return True
            except (pika.exceptions.AMQPError, OSError) as exc:
                self.close()
                refused.append(exc)
                return False

        eventually(
            confirmed,
            timeout=timeout,
            message=lambda: f"{routing_key} confirmed by the broker; last error: {refused[-1]!r}",
            interval=0.5,
        )

    def _open(self) -> Any:
        if self._connection is None or self._connection.is_closed:
            self._connection = pika.BlockingConnection(connection_parameters(self.amqp_url))
            self._channel = self._connection.channel()
            self._channel.confirm_delivery()
        return self._channel

    def close(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):
                self._connection.close()
        self._connection = None


class OutcomeRecorder:
    """Every `report.#` event, from a durable queue of our own that outlives broker restarts.

    An exclusive queue would vanish with its connection and miss what is published while the
    recorder reconnects; a durable one keeps it. Redeliveries to the recorder are harmless: outcomes
    are counted by distinct event id.
    """

    def __init__(
        self,
        amqp_url: str | Sequence[str],
        queue: str | None = None,
        binding_key: str = "report.#",
        exchange: tuple[str, str] = ("hotrepos.events", "topic"),
    ) -> None:
        self.amqp_url = amqp_url
        self.queue = queue or f"chaos.recorder.{uuid.uuid4().hex[:8]}"
        self.binding_key = binding_key
        self.exchange = exchange
        self.events: list[dict[str, Any]] = []
        self.deliveries = 0
        self.reconnects = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._declare()  # bound before anything is published, so nothing is missed
        self._thread = threading.Thread(target=self._run, name="outcome-recorder", daemon=True)
        self._thread.start()

    def _parameters(self) -> list[pika.URLParameters]:
        return connection_parameters(self.amqp_url, heartbeat=10)

    def _declare(self) -> None:
        connection = pika.BlockingConnection(self._parameters())
        try:
            channel = connection.channel()
            name, kind = self.exchange
            channel.exchange_declare(name, kind, durable=True)
            # Quorum, so that it outlives the loss of a cluster node too.
            channel.queue_declare(self.queue, durable=True, arguments={"x-queue-type": "quorum"})
            channel.queue_bind(self.queue, name, self.binding_key)
        finally:
            connection.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                connection = pika.BlockingConnection(self._parameters())
                try:
                    channel = connection.channel()
                    channel.basic_qos(prefetch_count=500)
                    for method, _, body in channel.consume(self.queue, inactivity_timeout=0.2):
                        if self._stop.is_set():
                            break
                        if method is None:
                            continue
                        self._record(body)
                        channel.basic_ack(method.delivery_tag)
                finally:
                    with contextlib.suppress(Exception):
                        connection.close()
            except (pika.exceptions.AMQPError, OSError):
                self.reconnects += 1
                self._stop.wait(0.5)

    def _record(self, body: bytes) -> None:
        try:
            event = json.loads(body)
        except (ValueError, RecursionError):  # hostile tests send garbage and very deep JSON
            event = None
        with self._lock:
            self.deliveries += 1
            if isinstance(event, dict):
                self.events.append(event)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def of(self, event_type: str, report_id: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [
                e
                for e in self.events
                if e.get("type") == event_type and (report_id is None or _report_id(e) == report_id)
            ]

    def outcomes_by_report(self) -> dict[str, list[dict[str, Any]]]:
        found: dict[str, list[dict[str, Any]]] = defaultdict(list)
        with self._lock:
            for event in self.events:
                report_id = _report_id(event)
                if event.get("type") in OUTCOMES and report_id:
                    found[report_id].append(event)
        return found


def connection_parameters(amqp_url: str | Sequence[str], heartbeat: int | None = None) -> list[pika.URLParameters]:
    """pika parameters for one broker URL, or for each node of a cluster, tried in turn."""
    found = []
    for url in [amqp_url] if isinstance(amqp_url, str) else amqp_url:
        parameters = pika.URLParameters(url)
        parameters.connection_attempts = 1
        parameters.socket_timeout = 5
        parameters.blocked_connection_timeout = 30
        if heartbeat is not None:
            parameters.heartbeat = heartbeat
        found.append(parameters)
    return found


def _report_id(event: Mapping[str, Any]) -> str | None:
    data = event.get("data")
    value = data.get("report_id") if isinstance(data, dict) else None
    return value if isinstance(value, str) else None


def body_of(message: EmailMessage) -> str:
    try:
        return str(message.get_content())
    except Exception:
        return str(message)


def requester_emails(sink: SmtpSink, report_id: str, requester: str = REQUESTER) -> list[EmailMessage]:
    with sink.lock:
        messages = list(sink.messages)
    return [m for m in messages if requester in str(m["To"]) and report_id in body_of(m)]


def admin_failed_emails(sink: SmtpSink, report_id: str) -> list[EmailMessage]:
    with sink.lock:
        messages = list(sink.messages)
    return [
        m
        for m in messages
        if ADMIN in str(m["To"]) and str(m["Subject"]).startswith(f"[hotrepos] report {report_id} failed")
    ]


# ----------------------------------------------------------------------------------------------
# Queues


def queues(broker: Broker, vhost: str) -> list[dict[str, Any]]:
    listed: list[dict[str, Any]] = broker.api("GET", f"/queues/{quote(vhost, safe='')}").json()
    return listed


def delayed_retries(broker: Broker, vhost: str) -> int:
    """Messages sent into the broker's delay levels on this vhost: each one a retry later."""
    entry = broker.api("GET", f"/exchanges/{quote(vhost, safe='')}/{DELAY.name}").json()
    return int((entry.get("message_stats") or {}).get("publish_in", 0))


def dead_letter_counts(broker: Broker, vhost: str) -> dict[str, int]:
    return {q["name"]: int(q.get("messages", 0) or 0) for q in queues(broker, vhost) if q["name"].endswith(".dlq")}


def pending_work(broker: Broker, vhost: str) -> dict[str, int]:
    """Messages still queued or unacked in the services' queues (delay queues included)."""
    pending = {}
    for queue in queues(broker, vhost):
        name = queue["name"]
        if name.endswith(".dlq") or name.startswith("chaos."):
            continue
        # Right after a broker start a queue may have no statistics yet: unknown counts as busy.
        count = int(queue["messages"] or 0) if "messages" in queue else -1
        if count:
            pending[name] = count
    return pending


def wait_until_settled(broker: Broker, vhost: str, timeout: float, quiet: float = 6.0) -> float | None:
    """Until no service queue holds a message for `quiet` seconds (late duplicates have had their
    chance); returns the monotonic time the queues went quiet, None if they never did.

    `quiet` exceeds the management API's statistics interval (5 s by default), whose counts lag.
    """
    quiet_since: list[float] = []  # since when no queue has held a message, while that lasts

    def quiet_long_enough() -> float | None:
        try:
            busy = bool(pending_work(broker, vhost))
        except Exception:
            busy = True
        now = time.monotonic()
        if busy:
            quiet_since.clear()
        elif not quiet_since:
            quiet_since.append(now)
        elif now - quiet_since[0] >= quiet:
            return quiet_since[0]
        return None

    try:
        return eventually(quiet_long_enough, timeout=timeout, message="the queues quiet", interval=0.5)
    except AssertionError:
        return None  # reported among the figures, beside what is still queued


def drain(amqp_url: str, queue: str) -> list[tuple[Any, bytes]]:
    """Take every message a queue holds now out of it (the test owns the vhost)."""
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    found: list[tuple[Any, bytes]] = []
    try:
        channel = connection.channel()
        # As many as it holds now, not until it is empty: a queue still filling would never be.
        for _ in range(channel.queue_declare(queue, passive=True).method.message_count):
            method, properties, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                break
            found.append((properties, body))
    finally:
        connection.close()
    return found


# ----------------------------------------------------------------------------------------------
# Figures


@dataclass
class Figures:
    requested: int
    exported: int
    failed: int
    csv_files: int
    emails: int
    duplicates: int
    lost: int
    dead_lettered: int
    extra: dict[str, Any] = field(default_factory=dict)
    problems: dict[str, list[str]] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        extra = data.pop("extra")
        problems = {k: v for k, v in data.pop("problems").items() if v}
        return {**data, **extra, **({"problems": problems} if problems else {})}


def count_figures(
    report_ids: Iterable[str],
    *,
    recorder: OutcomeRecorder,
    sink: SmtpSink,
    reports_dir: Path,
    dead_lettered: int,
    requester: str | None = REQUESTER,
) -> Figures:
    """The promise, report by report: one outcome, one CSV if exported, one email per recipient."""
    ids = list(report_ids)
    outcomes = recorder.outcomes_by_report()
    problems: dict[str, list[str]] = defaultdict(list)
    exported = failed = csv_files = emails = duplicates = lost = 0
    for report_id in ids:
        events = outcomes.get(report_id, [])
        distinct = {e.get("id") for e in events}
        kinds = {e.get("type") for e in events}
        files = [p for p in reports_dir.glob(f"*-{report_id}.csv")] if reports_dir.exists() else []
        mails = requester_emails(sink, report_id, requester) if requester else []
        admin = admin_failed_emails(sink, report_id)
        exported += "report.exported" in kinds
        failed += "report.failed" in kinds
        csv_files += len(files)
        emails += len(mails)
        if not events:
            lost += 1
            problems["lost"].append(report_id)
            continue
        duplicated = []
        if len(distinct) > 1:
            duplicated.append(f"{len(distinct)} outcome ids")
        if len(kinds) > 1:
            duplicated.append("exported and failed")
        if len(files) > 1:
            duplicated.append(f"{len(files)} CSV files")
        if len(mails) > 1:
            duplicated.append(f"{len(mails)} requester emails")
        if len(admin) > 1:
            duplicated.append(f"{len(admin)} admin emails")
        if duplicated:
            duplicates += 1
            problems["duplicated"].append(f"{report_id}: {', '.join(duplicated)}")
        if "report.exported" in kinds and not files:
            problems["exported without CSV"].append(report_id)
        if requester and not mails:
            problems["no requester email"].append(report_id)
        if kinds == {"report.failed"} and not admin:
            problems["failed without admin email"].append(report_id)
    leftovers = sorted(p.name for p in reports_dir.glob(".tmp-*")) if reports_dir.exists() else []
    return Figures(
        requested=len(ids),
        exported=exported,
        failed=failed,
        csv_files=csv_files,
        emails=emails,
        duplicates=duplicates,
        lost=lost,
        dead_lettered=dead_lettered,
        extra={"temporary_files_left": len(leftovers)},
        problems=dict(problems),
    )


def publish_figures(test_name: str, figures: Figures, **extra: Any) -> dict[str, Any]:
    """One `CHAOS-FIGURES {json}` line on stdout, and the same JSON in test-artifacts/chaos/."""
    figures.extra.update(extra)
    payload = {
        "test": test_name,
        "scale": chaos_sizes().scale,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        **figures.as_json(),
    }
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", test_name).strip("_")
    (ARTIFACTS / f"{safe}.json").write_text(json.dumps(payload, indent=2) + "\n")
    print("\n" + FIGURES_PREFIX + json.dumps(payload), flush=True)
    return payload


def wait_for_reports(
    report_ids: Iterable[str],
    recorder: OutcomeRecorder,
    sink: SmtpSink,
    timeout: float,
    *,
    requester: str | None = REQUESTER,
    give_up: Callable[[], bool] | None = None,
) -> bool:
    """Until every report has an outcome and, when someone is to be told, a requester email; or
    until `give_up` says that waiting longer cannot help."""
    ids = list(report_ids)

    def done_or_hopeless() -> str | None:
        outcomes = recorder.outcomes_by_report()
        if all(report_id in outcomes for report_id in ids) and (
            requester is None or all(requester_emails(sink, r, requester) for r in ids)
        ):
            return "done"
        if give_up is not None and give_up():
            return "hopeless"
        return None

    try:
        return eventually(done_or_hopeless, timeout=timeout, message="every report told", interval=0.5) == "done"
    except AssertionError:
        return False  # the figures show which reports are missing
