"""`hotrepos request --period week [--wait]`: ask for a report, and follow it to its CSV."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
import uuid
from contextlib import AbstractContextManager, nullcontext
from typing import Any, get_args

from pydantic import TypeAdapter, ValidationError
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from hotrepos_cli.subscriber import Inbox, decode, subscribe
from shared.amqp import connect
from shared.context import EventContext, event_scope
from shared.events import (
    PAGES_PER_REPORT,
    PRIORITIES,
    EventData,
    Layout,
    Locale,
    Period,
    ReportRequested,
    derived_event_id,
    report_id_of,
)
from shared.handling import EventMeta
from shared.progress import ReportStatus, apply_event
from shared.publisher import Publisher
from shared.settings import CommonSettings, load_settings

FOLLOWED = ("report.queued", "report.page.fetched", "report.aggregated", "report.exported", "report.failed")
EXIT_FAILED, EXIT_INVALID, EXIT_TIMEOUT = 1, 2, 3
_locales: TypeAdapter[str] = TypeAdapter(Locale)


class ReportProgress:
    """How far one report has gone: the shared fold of its events, and a bar's worth of steps."""

    def __init__(self, report_id: str) -> None:
        self.report_id = report_id
        self.status: ReportStatus | None = None

    def apply(self, data: EventData, meta: EventMeta) -> bool:
        """True when the event is this report's and moved it on."""
        if report_id_of(data, meta.id) != self.report_id or (self.status is not None and self.status.terminal):
            return False
        updated = apply_event(self.status, data, meta, received_at=dt.datetime.now(dt.UTC))
        moved = updated is not None and updated != self.status
        self.status = updated
        return moved

    @property
    def steps(self) -> int:
        """Pages, aggregation and export each count one."""
        return (self.status.pages if self.status else PAGES_PER_REPORT) + 2

    @property
    def done(self) -> int:
        if self.status is None:
            return 0
        if self.status.state == "exported":
            return self.steps
        return len(self.status.fetched_pages) + (1 if self.status.state == "aggregated" else 0)

    def describe(self) -> str:
        return self.status.describe() if self.status else "requested"


class _Display:
    """A rich progress bar on a terminal; one plain line per step anywhere else (logs, pipes, CI)."""

    def __init__(self, console: Console, progress: ReportProgress) -> None:
        self._console = console
        self._report = progress
        self._bar: Progress | None = None
        self._task: TaskID | None = None
        if console.is_terminal:
            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total}"),
                TimeElapsedColumn(),
                console=console,
            )

    def __enter__(self) -> _Display:
        if self._bar is not None:
            self._bar.start()
            self._task = self._bar.add_task(self._report.describe(), total=self._report.steps)
        return self

    def update(self) -> None:
        if self._bar is not None and self._task is not None:
            self._bar.update(
                self._task, description=self._report.describe(), completed=self._report.done, total=self._report.steps
            )
        else:
            self._console.print(self._report.describe(), soft_wrap=True, highlight=False)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()


def _order(args: argparse.Namespace, report_id: str) -> tuple[ReportRequested, str | None]:
    order = ReportRequested(
        report_id=report_id,
        period=args.period,
        ref_date=args.ref_date,
        notify=args.notify,
        layout=args.layout,
        priority=args.priority,
    )
    return order, _locales.validate_python(args.locale) if args.locale else None


def request(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    report_id = uuid.uuid4().hex
    try:
        order, locale = _order(args, report_id)
    except ValidationError as exc:
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"]) or "locale"
            print(f"hotrepos request: invalid {where}: {error['msg']}", file=sys.stderr)
        return EXIT_INVALID
    settings = load_settings(CommonSettings)
    with connect(settings) as connection:
        # Subscribed before publishing, so that no event of the report can pass unseen.
        inbox_scope: AbstractContextManager[Inbox | None] = (
            subscribe(connection, FOLLOWED) if args.wait else nullcontext()
        )
        with inbox_scope as inbox:
            publisher = Publisher(connection, source="hotrepos/cli", pool_size=1)
            try:
                with event_scope(EventContext(correlationid=report_id, locale=locale)):
                    publisher.publish(order, event_id=derived_event_id(report_id, "requested"))
            finally:
                publisher.close()
            if inbox is None:
                print(report_id)
                return 0
            console.print(f"report {report_id} requested ({order.period})", highlight=False)
            return _follow(inbox, ReportProgress(report_id), console, args.timeout)


def _follow(inbox: Inbox, progress: ReportProgress, console: Console, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    with _Display(console, progress) as display:
        while progress.status is None or not progress.status.terminal:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                console.print(
                    f"hotrepos request: no outcome for {progress.report_id} after {timeout:g}s; it may still finish",
                    highlight=False,
                )
                return EXIT_TIMEOUT
            message = inbox.next(timeout=min(remaining, 1.0))
            if message is None:
                continue
            event, data = decode(message)
            if event is not None and data is not None and progress.apply(data, EventMeta.of(event)):
                display.update()
    if progress.status.state == "failed":
        return EXIT_FAILED
    print(progress.status.path)
    return 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "request",
        help="ask for a report; with --wait, follow it and print the CSV's path",
        description="Publish report.requested. Exit status with --wait: 0 exported (the CSV's path is "
        "printed), 1 failed, 2 invalid arguments, 3 timed out.",
    )
    parser.add_argument("--period", required=True, choices=get_args(Period))
    parser.add_argument("--ref-date", type=dt.date.fromisoformat, help="YYYY-MM-DD; default today in UTC")
    parser.add_argument("--notify", help="email the report to this address")
    parser.add_argument("--locale", help="language of the email, BCP 47 (en, fr, de, es)")
    parser.add_argument("--layout", choices=get_args(Layout), default="rows")
    parser.add_argument(
        "--priority",
        choices=PRIORITIES,
        default="interactive",
        help="place in line for GitHub's budget: interactive (default), scheduled, or bulk for batch jobs",
    )
    parser.add_argument("--wait", action="store_true", help="follow the report and print the CSV's path")
    parser.add_argument("--timeout", type=float, default=600, help="seconds --wait waits (default 600)")
    parser.set_defaults(handler=request)
