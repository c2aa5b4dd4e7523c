"""`hotrepos dlq list|show|replay|purge [QUEUE]`: look into dead letters, and give them another go."""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Iterator
from typing import Any

from kombu.connection import Connection
from kombu.message import Message

from services.fetcher.topology import TASK_DEAD_LETTER_QUEUE
from shared.amqp import connect
from shared.publisher import Publisher
from shared.settings import CommonSettings, load_settings
from shared.topology import (
    DEATH_HEADERS,
    DELAYED,
    ORIGINAL_EXCHANGE_HEADER,
    ORIGINAL_ROUTING_KEY_HEADER,
    REASON_HEADER,
    RETRIES_HEADER,
    SUBSCRIPTIONS,
    redelivery_routing_key,
)

# The fetcher's Celery tasks have a dead-letter queue of their own, for the pages it gave up on.
ALL_DEAD_LETTER_QUEUES = (*(s.dlq_name for s in SUBSCRIPTIONS), TASK_DEAD_LETTER_QUEUE.name)
WORK_QUEUE_OF_DLQ = {s.dlq_name: s.queue_name for s in SUBSCRIPTIONS}


def _queues(args: argparse.Namespace) -> tuple[str, ...]:
    if args.queue is None:
        return ALL_DEAD_LETTER_QUEUES
    name = args.queue if args.queue.endswith(".dlq") else f"{args.queue}.dlq"
    return (name,)


def _message_count(connection: Connection, queue: str) -> int | None:
    channel = connection.channel()
    try:
        return int(channel.queue_declare(queue, passive=True).message_count)
    except connection.channel_errors:
        return None  # never declared: no service of that name ran here
    finally:
        with contextlib.suppress(Exception):
            channel.close()


def origin(message: Message) -> tuple[str, str]:
    """Where a dead letter was first published: our headers, else the broker's x-death record."""
    headers = message.headers or {}
    if ORIGINAL_ROUTING_KEY_HEADER in headers:
        return str(headers.get(ORIGINAL_EXCHANGE_HEADER, "")), str(headers[ORIGINAL_ROUTING_KEY_HEADER])
    deaths = headers.get("x-death") or []
    if deaths:
        first = deaths[-1]
        keys = first.get("routing-keys") or [""]
        return str(first.get("exchange", "")), str(keys[0])
    return "", ""


def reason_of(message: Message) -> str:
    headers = message.headers or {}
    if REASON_HEADER in headers:
        return str(headers[REASON_HEADER])
    deaths = headers.get("x-death") or []
    if deaths:
        death = deaths[0]
        count = headers.get("x-delivery-count", death.get("count"))
        return f"{death.get('reason')} (delivered {count} times)"
    return "unknown"


def _drain(connection: Connection, queue: str, limit: int | None) -> Iterator[Message]:
    channel = connection.channel()
    try:
        taken = 0
        while limit is None or taken < limit:
            message = channel.basic_get(queue, no_ack=False)
            if message is None:
                return
            taken += 1
            yield channel.message_to_python(message)
    finally:
        # Closing the channel returns every message not acked to its queue, in order.
        channel.close()


def dlq_list(args: argparse.Namespace, connection: Connection) -> int:
    for queue in _queues(args):
        count = _message_count(connection, queue)
        print(f"{queue:<45} {'-' if count is None else count}")
    return 0


def dlq_show(args: argparse.Namespace, connection: Connection) -> int:
    for queue in _queues(args):
        if _message_count(connection, queue) is None:
            continue
        for message in _drain(connection, queue, args.limit):
            exchange, routing_key = origin(message)
            body = message.body if isinstance(message.body, bytes) else str(message.body).encode()
            record = {
                "queue": queue,
                "message_id": message.properties.get("message_id"),
                "reason": reason_of(message),
                "origin": f"{exchange or '(default)'} / {routing_key}",
                "content_type": message.content_type,
                "body": body[:500].decode("utf-8", errors="replace"),
            }
            print(json.dumps(record, ensure_ascii=False))
    return 0


def dlq_replay(args: argparse.Namespace, connection: Connection) -> int:
    publisher = Publisher(connection, source="hotrepos/cli", pool_size=1)
    try:
        replayed = _replay(args, connection, publisher)
    finally:
        publisher.close()
    print(f"replayed {replayed} message(s)")
    return 0


def _replay(args: argparse.Namespace, connection: Connection, publisher: Publisher) -> int:
    replayed = 0
    for queue in _queues(args):
        if _message_count(connection, queue) is None:
            continue
        for message in _drain(connection, queue, args.limit):
            exchange, routing_key = origin(message)
            if queue in WORK_QUEUE_OF_DLQ:
                # Back to the one queue it died in, not to every subscriber of its event again.
                exchange, routing_key = DELAYED.name, redelivery_routing_key(WORK_QUEUE_OF_DLQ[queue])
            headers = {
                k: v
                for k, v in (message.headers or {}).items()
                if k not in DEATH_HEADERS and k not in (REASON_HEADER, RETRIES_HEADER, "x-delivery-count")
            }
            body = message.body if isinstance(message.body, bytes) else str(message.body).encode()
            # Confirmed first, acked after: a crash in between replays twice, never loses one.
            publisher.publish_raw(
                body,
                exchange=exchange,
                routing_key=routing_key,
                message_id=message.properties.get("message_id"),
                headers=headers,
                content_type=message.content_type or "application/octet-stream",
            )
            message.ack()
            replayed += 1
    return replayed


def dlq_purge(args: argparse.Namespace, connection: Connection) -> int:
    if args.queue is None and not args.all:
        print("hotrepos dlq purge: name a QUEUE, or pass --all to purge every dead-letter queue")
        return 2
    for queue in _queues(args):
        if _message_count(connection, queue) is None:
            continue
        channel = connection.channel()
        purged = channel.queue_purge(queue)
        channel.close()
        print(f"{queue}: purged {purged}")
    return 0


ACTIONS = {"list": dlq_list, "show": dlq_show, "replay": dlq_replay, "purge": dlq_purge}


def run(args: argparse.Namespace) -> int:
    settings = load_settings(CommonSettings)
    with connect(settings) as connection:
        return ACTIONS[args.action](args, connection)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("dlq", help="list, show, replay or purge dead-lettered messages")
    parser.add_argument("action", choices=sorted(ACTIONS))
    parser.add_argument("queue", nargs="?", help="a work queue or its .dlq (default: every one)")
    parser.add_argument("--limit", type=int, default=None, help="at most this many messages per queue")
    parser.add_argument("--all", action="store_true", help="purge: every dead-letter queue")
    parser.set_defaults(handler=run)
