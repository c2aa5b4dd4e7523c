"""`hotrepos`: one command, one module per group of subcommands."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from hotrepos_cli import cancel, dlq, schemas

# Each module adds its subcommands with register(subparsers) and sets `handler` on its parser.
COMMAND_MODULES = [cancel, dlq, schemas]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hotrepos", description="hotrepos: GitHub's hottest new repositories"
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module in COMMAND_MODULES:
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
