"""`hotrepos schemas`: the JSON Schema of every event's data, for publishers in other languages."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from shared.events import json_schemas

DEFAULT_DIR = Path("docs/schemas")


def render_schemas() -> dict[str, str]:
    """File name -> content, deterministic so that a test can detect drift."""
    return {
        f"{event_type}.json": json.dumps(schema, indent=2, sort_keys=True) + "\n"
        for event_type, schema in json_schemas().items()
    }


def write_schemas(args: argparse.Namespace) -> int:
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    for name, content in render_schemas().items():
        (out / name).write_text(content, encoding="utf-8")
        print(out / name)
    return 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("schemas", help="write the JSON Schema of every event's data")
    parser.add_argument("--out", type=Path, default=DEFAULT_DIR)
    parser.set_defaults(handler=write_schemas)
