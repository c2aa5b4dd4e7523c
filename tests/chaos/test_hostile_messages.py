"""Thousands of hostile messages on every route of the contract: each is dead-lettered with a
reason or refused by the broker, no service dies, no file escapes REPORTS_DIR, no email carries an
injected header; then a valid report still goes through."""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pika
import pika.exceptions
import pytest
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st

from shared.events import EVENT_TYPES
from tests.chaos.hostile import (
    HostileMessage,
    hostile_message,
    huge_messages,
    injection_probes,
    is_acceptable,
    random_routing_keys,
)
from tests.conftest import TODAY
from tests.fake_github import FakeGitHub
from tests.support.broker import Broker
from tests.support.chaos import (
    REQUESTER,
    ChaosSizes,
    OutcomeRecorder,
    RequestPublisher,
    body_of,
    chaos_sizes,
    count_figures,
    dead_letter_counts,
    drain,
    pending_work,
    publish_figures,
    queues,
    report_ids,
    wait_for_reports,
)
from tests.support.pipeline import ADMIN, running_pipeline
from tests.support.services import ROOT
from tests.support.smtp import SmtpSink
from tests.support.waiting import eventually

FULL = chaos_sizes().scale == "full"
EXCHANGES = ("hotrepos.events", "hotrepos.alerts", "hotrepos.control")
# What the notifier writes, and what a mail library adds on parsing: anything else was injected.
EMAIL_HEADERS = {
    "from",
    "to",
    "subject",
    "date",
    "message-id",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "content-language",
}
SKIPPED_DIRS = {".venv", ".git", "node_modules", "__pycache__", ".mypy_cache", ".ruff_cache"}


def service_bindings(broker: Broker, vhost: str) -> dict[str, list[tuple[str, str]]]:
    """exchange -> (binding key, queue) for every service queue (not the recorder's)."""
    found: dict[str, list[tuple[str, str]]] = {}
    for exchange in EXCHANGES:
        path = f"/exchanges/{quote(vhost, safe='')}/{quote(exchange, safe='')}/bindings/source"
        found[exchange] = [
            (b["routing_key"], b["destination"])
            for b in broker.api("GET", path).json()
            if b["destination_type"] == "queue" and not b["destination"].startswith("chaos.")
        ]
    return found


def topic_matches(pattern: str, key: str) -> bool:
    def match(p: list[str], k: list[str]) -> bool:
        if not p:
            return not k
        if p[0] == "#":
            return any(match(p[1:], k[i:]) for i in range(len(k) + 1))
        return bool(k) and (p[0] in ("*", k[0])) and match(p[1:], k[1:])

    return match(pattern.split("."), key.split("."))


def routed_to(bindings: dict[str, list[tuple[str, str]]], exchange: str, key: str) -> set[str]:
    if exchange == "hotrepos.events":
        return {queue for pattern, queue in bindings[exchange] if topic_matches(pattern, key)}
    return {queue for _, queue in bindings.get(exchange, [])}  # fanout


def dead_letter_queue_of(broker: Broker, vhost: str) -> dict[str, str]:
    """queue -> the queue its dead letters land in, read from its own arguments: each replica's
    server-named control queue dead-letters into its service's `<service>.control.dlq`."""
    found = {}
    for queue in queues(broker, vhost):
        routing_key = (queue.get("arguments") or {}).get("x-dead-letter-routing-key")
        if routing_key:
            found[queue["name"]] = f"{routing_key}.dlq"
    return found


def marked_paths(roots: Iterable[Path], marker: str, *, depth: int | None = None) -> list[str]:
    found = []
    for root in roots:
        if not root.exists():
            continue
        base_depth = len(root.parts)
        for directory, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if d not in SKIPPED_DIRS]
            if depth is not None and len(Path(directory).parts) - base_depth >= depth:
                dirs[:] = []
            found += [os.path.join(directory, n) for n in dirs + files if marker in n]
    return found


def tree(root: Path, excluded: Iterable[Path]) -> set[str]:
    skip = {str(p) for p in excluded}
    paths = set()
    for directory, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if os.path.join(directory, d) not in skip]
        paths |= {os.path.join(directory, n) for n in files}
    return paths


@pytest.mark.timeout(1200 if FULL else 240)
def test_hostile_messages_are_dead_lettered_with_a_reason_and_harm_nothing(
    broker: Broker,
    redis_url: str,
    fake_github: FakeGitHub,
    smtp_sink: SmtpSink,
    tmp_path_factory: pytest.TempPathFactory,
    sizes: ChaosSizes,
    figures_name: str,
) -> None:
    marker = f"hostile{uuid.uuid4().hex[:10]}"
    root = tmp_path_factory.mktemp("hostile")
    with broker.vhost("hotrepos-chaos") as vhost:
        amqp_url = broker.amqp_url(vhost)
        recorder = OutcomeRecorder(amqp_url)
        try:
            with running_pipeline(
                broker=broker,
                vhost=vhost,
                redis_url=redis_url,
                github_url=fake_github.url,
                smtp_port=smtp_sink.port,
                root=root,
                today=TODAY,
            ) as pipeline:
                started = time.monotonic()
                pids = {p.name: p.process.pid for p in pipeline.processes if p.process}
                bindings = service_bindings(broker, vhost)
                dead_letter_queue = dead_letter_queue_of(broker, vhost)
                # Every routing key of the contract on hotrepos.events (alerts and cancels belong on
                # exchanges of their own, so there the broker refuses them), the two fanouts, and,
                # two in eleven, a routing key nobody binds.
                routes: list[tuple[str, str, str | None] | None] = [
                    *(("hotrepos.events", k, k) for k in EVENT_TYPES),
                    ("hotrepos.alerts", "", "alert.raised"),
                    ("hotrepos.control", "", "report.cancel.requested"),
                    None,
                    None,
                ]
                before = tree(root.parent, [root / "reports", root / "logs"])

                sent: Counter[str] = Counter()
                returned: Counter[str] = Counter()
                expected: Counter[str] = Counter()
                connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
                channel = connection.channel()
                channel.confirm_delivery()

                def publish(message: HostileMessage, *, valid: bool = False) -> None:
                    properties = pika.BasicProperties(
                        content_type=message.content_type,
                        delivery_mode=2,
                        headers=message.headers,
                        message_id=str(uuid.uuid4()),
                    )
                    try:
                        channel.basic_publish(
                            message.exchange, message.routing_key, message.body, properties, mandatory=True
                        )
                    except pika.exceptions.UnroutableError:
                        returned[message.category] += 1  # refused by the broker: NO_ROUTE, with a reason
                        return
                    sent[message.category] += 1
                    if not valid:
                        for queue in routed_to(bindings, message.exchange, message.routing_key):
                            expected[dead_letter_queue[queue]] += 1

                @settings(
                    max_examples=sizes.hostile_messages,
                    deadline=None,
                    database=None,
                    phases=[Phase.generate],
                    suppress_health_check=list(HealthCheck),
                )
                @given(st.data())
                def publish_hostile(data: st.DataObject) -> None:
                    route = data.draw(st.sampled_from(routes))
                    if route is None:
                        route = ("hotrepos.events", data.draw(random_routing_keys), None)
                    exchange, routing_key, event_type = route
                    message = data.draw(hostile_message(marker, exchange, routing_key, event_type))
                    assume(not is_acceptable(message, event_type))
                    publish(message)

                publish_hostile()
                for message in huge_messages(marker, sizes.huge_messages):
                    publish(message)
                for message in injection_probes(marker):
                    publish(message, valid=True)
                connection.close()
                published_in = round(time.monotonic() - started, 1)

                # Every routed hostile message must reach a dead-letter queue.
                total_expected = sum(expected.values())

                def all_dead_lettered() -> bool:
                    pipeline.assert_alive()
                    return sum(dead_letter_counts(broker, vhost).values()) >= total_expected and not (
                        pending_work(broker, vhost)
                    )

                eventually(all_dead_lettered, timeout=600 if FULL else 150, message=f"{total_expected} dead letters")
                letters: dict[str, list[tuple[Any, bytes]]] = {
                    q["name"]: drain(amqp_url, q["name"]) for q in queues(broker, vhost) if q["name"].endswith(".dlq")
                }
                reasons = Counter(
                    str((props.headers or {}).get("x-hotrepos-reason", "(none)")).split(":")[0][:60]
                    for found in letters.values()
                    for props, _ in found
                )
                without_reason = sum(
                    1
                    for found in letters.values()
                    for props, _ in found
                    if not (props.headers or {}).get("x-hotrepos-reason")
                )

                # The valid probes were handled, and the admins heard of the dead letters.
                eventually(
                    lambda: sum(1 for m in smtp_sink.to(REQUESTER) if marker in body_of(m)) >= 2,
                    timeout=60,
                    message="the emails of the valid probes",
                )
                # And a valid report still goes through.
                ids = report_ids("after-hostile", 1)
                publisher = RequestPublisher(amqp_url)
                publisher.request(ids[0], period="day")
                publisher.close()
                completed = wait_for_reports(ids, recorder, smtp_sink, 120)
                figures = count_figures(
                    ids,
                    recorder=recorder,
                    sink=smtp_sink,
                    reports_dir=pipeline.reports_dir,
                    dead_lettered=sum(len(found) for found in letters.values()),
                )
                pipeline.assert_alive()
                restarted = [p.name for p in pipeline.processes if p.process and pids.get(p.name) != p.process.pid]

                with smtp_sink.lock:
                    mails = list(smtp_sink.messages)
                    envelopes = list(smtp_sink.envelopes)
                injected_headers = sorted({h for m in mails for h in m if h.lower() not in EMAIL_HEADERS})
                bad_recipients = sorted({r for _, rcpts in envelopes for r in rcpts} - {ADMIN, REQUESTER})
                multiline = [
                    str(m["Subject"]) for m in mails if any("\n" in str(v) or "\r" in str(v) for v in m.values())
                ]
                reports_dir = pipeline.reports_dir
                stray_reports = sorted(
                    str(p.relative_to(reports_dir))
                    for p in reports_dir.rglob("*")
                    if p.is_file() and ids[0] not in p.name
                )
                new_outside = sorted(tree(root.parent, [reports_dir, root / "logs"]) - before)
                escaped = marked_paths([root.parent, ROOT], marker) + marked_paths(
                    [Path(tempfile.gettempdir())], marker, depth=1
                )
                payload = publish_figures(
                    figures_name,
                    figures,
                    hostile_sent=sum(sent.values()) - sent["probe"],
                    probes_sent=sent["probe"],
                    refused_by_broker=sum(returned.values()),
                    expected_dead_letters=total_expected,
                    sent_by_category=dict(sent),
                    refused_by_category=dict(returned),
                    dead_letters_by_queue={q: len(f) for q, f in letters.items() if f},
                    expected_by_queue=dict(expected),
                    dead_letters_without_reason=without_reason,
                    reasons=dict(reasons.most_common(12)),
                    emails_received=len(mails),
                    injected_headers=injected_headers,
                    unexpected_recipients=bad_recipients,
                    multiline_headers=len(multiline),
                    stray_files_in_reports_dir=stray_reports,
                    new_files_outside=new_outside[:20],
                    escaped_paths=escaped[:20],
                    restarted=restarted,
                    valid_report_completed=completed,
                    publish_seconds=published_in,
                    seconds=round(time.monotonic() - started, 1),
                )
        finally:
            recorder.close()

    assert payload["dead_lettered"] == payload["expected_dead_letters"], payload
    assert payload["dead_letters_by_queue"] == payload["expected_by_queue"], payload
    assert payload["dead_letters_without_reason"] == 0, payload
    assert not payload["restarted"], payload
    assert not payload["injected_headers"], payload
    assert not payload["unexpected_recipients"], payload
    assert payload["multiline_headers"] == 0, payload
    assert not payload["stray_files_in_reports_dir"], payload
    assert not payload["new_files_outside"], payload
    assert not payload["escaped_paths"], payload
    assert payload["exported"] == 1 and payload["lost"] == 0 and payload["duplicates"] == 0, payload
