"""`hotrepos`: one command, one module per group of subcommands."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import structlog

from hotrepos_cli import asyncapi, cancel, dlq, logs, publish, request, schemas, tail, tokens, webhooks
from shared.pipeline import PublishRefused

# Each module adds its subcommands with register(subparsers) and sets `handler` on its parser.
COMMAND_MODULES = [cancel, dlq, publish, request, schemas, tail, asyncapi, logs, tokens, webhooks]
EXIT_REFUSED = 4


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hotrepos", description="hotrepos: GitHub's hottest new repositories")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module in COMMAND_MODULES:
        module.register(subparsers)
    return parser


def quiet_library_logs() -> None:
    """A command's stdout is its result: the shared layers' logs go to stderr, warnings and worse only."""
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        # Looked up at each use, not bound now: whoever swaps sys.stderr later (a test) is obeyed.
        logger_factory=lambda *_: structlog.PrintLogger(sys.stderr),
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_library_logs()
    try:
        return int(args.handler(args) or 0)
    except PublishRefused as exc:
        # A permission of the broker user in AMQP_URL, not a bug: say which, without a traceback.
        print(f"hotrepos {args.command}: {exc}", file=sys.stderr)
        return EXIT_REFUSED


if __name__ == "__main__":
    sys.exit(main())
