"""`hotrepos publish ROUTING_KEY --data JSON`: publish any event of the contract, once it passes its schema."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from pydantic import TypeAdapter, ValidationError

from shared.amqp import connect
from shared.context import EventContext, event_scope
from shared.events import EVENT_TYPES, Locale
from shared.publisher import Publisher
from shared.settings import CommonSettings, load_settings
from shared.topology import exchange_of

EXIT_INVALID = 2
_locales: TypeAdapter[str] = TypeAdapter(Locale)


def _invalid(message: str) -> int:
    print(f"hotrepos publish: {message}; nothing was published", file=sys.stderr)
    return EXIT_INVALID


def publish(args: argparse.Namespace) -> int:
    model = EVENT_TYPES.get(args.routing_key)
    if model is None:
        return _invalid(f"unknown event type {args.routing_key!r}; one of: {', '.join(sorted(EVENT_TYPES))}")
    raw = sys.stdin.read() if args.data == "-" else args.data
    try:
        data = model.model_validate(json.loads(raw))
    except ValueError as exc:  # ValidationError is a ValueError too: schema errors come first
        if isinstance(exc, ValidationError):
            for error in exc.errors():
                where = ".".join(str(part) for part in error["loc"]) or "(data)"
                print(f"hotrepos publish: {args.routing_key} {where}: {error['msg']}", file=sys.stderr)
            return _invalid(f"the data does not match the schema of {args.routing_key}")
        return _invalid(f"--data is not JSON: {exc}")
    try:
        locale = _locales.validate_python(args.locale) if args.locale else None
    except ValidationError:
        return _invalid(f"--locale {args.locale!r} is not a BCP 47 tag")
    correlationid = args.correlation_id or getattr(data, "report_id", None)
    exchange = exchange_of(args.routing_key)
    settings = load_settings(CommonSettings)
    with connect(settings) as connection:
        publisher = Publisher(connection, source="hotrepos/cli", pool_size=1)
        try:
            with event_scope(EventContext(correlationid=correlationid, locale=locale)):
                event = publisher.publish(data, event_id=args.event_id)
        finally:
            publisher.close()
    print(f"published {event.type} {event.id} on {exchange.name}", file=sys.stderr)
    print(event.id)
    return 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "publish",
        help="publish an event of the contract, validated against its schema",
        description="Publish one CloudEvent. report.* events go to hotrepos.events, alert.raised to "
        "hotrepos.alerts, report.cancel.requested to hotrepos.control. Data that fails the "
        "event's schema is refused (exit status 2) and nothing is published.",
    )
    parser.add_argument("routing_key", metavar="ROUTING_KEY", help="the event type, e.g. report.requested")
    parser.add_argument("--data", required=True, help="the event's data as JSON, or - to read it from stdin")
    parser.add_argument("--locale", help="the event's locale (BCP 47)")
    parser.add_argument("--correlation-id", help="default: the data's report_id")
    parser.add_argument("--event-id", help="default: a new UUID; the same id is deduplicated by consumers")
    parser.set_defaults(handler=publish)
