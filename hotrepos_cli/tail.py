"""`hotrepos tail [PATTERN]`: print the events that match a topic pattern, as they pass."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from kombu.message import Message

from hotrepos_cli.subscriber import decode, subscribe
from shared.amqp import connect
from shared.events import (
    EVENT_TYPES,
    CloudEvent,
    EventData,
    ReportAggregated,
    ReportExported,
    ReportFailed,
    ReportPageFetched,
    ReportRequested,
)
from shared.settings import CommonSettings, load_settings


def summary(data: EventData) -> str:
    """The few fields that say what happened."""
    if isinstance(data, ReportRequested):
        return " ".join(f"{k}={v}" for k, v in data.model_dump(exclude_none=True).items() if k != "report_id")
    if isinstance(data, ReportPageFetched):
        return f"page={data.page}/{data.pages} items={len(data.items)}"
    if isinstance(data, ReportAggregated):
        return f"repositories={data.total} languages={len(data.languages)}"
    if isinstance(data, ReportExported):
        return f"rows={data.rows} path={data.path}"
    if isinstance(data, ReportFailed):
        return f"stage={data.stage} reason={data.reason}"
    return json.dumps(data.model_dump(mode="json"), separators=(",", ":"))[:200]


def line_of(message: Message, event: CloudEvent | None, data: EventData | None) -> str:
    routing_key = (message.delivery_info or {}).get("routing_key", "?")
    if event is None:
        return f"{routing_key:<22} (not a CloudEvent: {len(message.body or b'')} bytes)"
    time = event.time.strftime("%H:%M:%S.%f")[:-3] if event.time else "--:--:--.---"
    report = getattr(data, "report_id", None) or event.correlationid or "-"
    if data is not None:
        details = summary(data)
    elif event.type in EVENT_TYPES:
        details = "(data does not match its schema)"
    else:
        details = "(not an event type of the contract)"
    return f"{time} {event.type:<22} report={report} {details}"


def tail(args: argparse.Namespace) -> int:
    settings = load_settings(CommonSettings)
    seen = 0
    with connect(settings) as connection, subscribe(connection, [args.pattern]) as inbox:
        print(
            f"hotrepos tail: listening on hotrepos.events for {args.pattern!r} (Ctrl-C stops)",
            file=sys.stderr,
            flush=True,
        )
        try:
            while args.count is None or seen < args.count:
                message = inbox.next(timeout=1.0)
                if message is None:
                    continue
                event, data = decode(message)
                if args.json:
                    print(
                        message.body.decode(errors="replace") if isinstance(message.body, bytes) else message.body,
                        flush=True,
                    )
                else:
                    print(line_of(message, event, data), flush=True)
                seen += 1
        except KeyboardInterrupt:
            pass
    return 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "tail",
        help="print the events that match a topic pattern, as they pass",
        description="Binds an exclusive queue of its own to hotrepos.events: the services' queues are "
        "left alone, and the queue goes away with the command.",
    )
    parser.add_argument(
        "pattern",
        nargs="?",
        default="#",
        metavar="PATTERN",
        help="AMQP topic pattern: * one word, # any words (default #)",
    )
    parser.add_argument("--json", action="store_true", help="print each event's JSON as it came")
    parser.add_argument("--count", type=int, help="stop after this many events")
    parser.set_defaults(handler=tail)
