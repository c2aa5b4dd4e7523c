"""`hotrepos cancel REPORT_ID`: broadcast a cancel on hotrepos.control, like Celery's revoke."""

from __future__ import annotations

import argparse
from typing import Any

from pydantic import ValidationError

from shared.amqp import connect
from shared.events import ReportCancelRequested
from shared.publisher import Publisher
from shared.settings import CommonSettings, load_settings


def cancel(args: argparse.Namespace) -> int:
    try:
        command = ReportCancelRequested(report_id=args.report_id, reason=args.reason)
    except ValidationError as exc:
        print(f"hotrepos cancel: {exc.errors()[0]['msg']}")
        return 2
    settings = load_settings(CommonSettings)
    with connect(settings) as connection:
        publisher = Publisher(connection, source="hotrepos/cli", pool_size=1)
        try:
            event = publisher.publish(command, correlationid=command.report_id)
        finally:
            publisher.close()
    print(f"cancel of {command.report_id} broadcast on hotrepos.control (event {event.id})")
    return 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("cancel", help="cancel a report: every replica drops its pending work")
    parser.add_argument("report_id")
    parser.add_argument("--reason", default="cancelled by request")
    parser.set_defaults(handler=cancel)
