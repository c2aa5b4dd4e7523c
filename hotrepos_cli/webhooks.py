"""`hotrepos webhooks add|list|remove|deliveries`: manage webhook subscriptions through the gateway's API.

It speaks HTTP to the gateway at HOTREPOS_GATEWAY_URL (default http://127.0.0.1:8000), with
HOTREPOS_TOKEN as its bearer token when set; the subscriptions themselves live where the gateway keeps
them, so this needs no broker or Redis.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any, get_args

import requests

from shared.webhooks import WebhookEventType, WebhookFormat

DEFAULT_GATEWAY_URL = "http://127.0.0.1:8000"
TIMEOUT_SECONDS = 30
EXIT_NOT_FOUND, EXIT_INVALID, EXIT_UNAVAILABLE, EXIT_REFUSED = 1, 2, 3, 4


class GatewayError(Exception):
    def __init__(self, message: str, exit_status: int) -> None:
        super().__init__(message)
        self.exit_status = exit_status


class GatewayClient:
    def __init__(self, base_url: str, token: str | None) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        url = f"{self.base_url}{path}"
        try:
            response = self.session.request(method, url, timeout=TIMEOUT_SECONDS, **kwargs)
        except requests.RequestException as exc:
            raise GatewayError(
                f"the gateway at {self.base_url} does not answer ({type(exc).__name__}): check HOTREPOS_GATEWAY_URL",
                EXIT_UNAVAILABLE,
            ) from None
        if response.status_code in (401, 403):
            raise GatewayError(
                f"the gateway refused ({response.status_code}): set HOTREPOS_TOKEN to a token it accepts",
                EXIT_REFUSED,
            )
        if response.status_code == 404:
            raise GatewayError(_detail(response), EXIT_NOT_FOUND)
        if response.status_code == 422:
            raise GatewayError(_detail(response), EXIT_INVALID)
        if response.status_code >= 400:
            raise GatewayError(f"the gateway answered {response.status_code}: {_detail(response)}", EXIT_UNAVAILABLE)
        return response.json() if response.content else None


def _detail(response: requests.Response) -> str:
    """The gateway's reason: FastAPI's detail, each invalid field with what is wrong with it."""
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        return response.text[:500]
    if isinstance(detail, list):
        return "; ".join(
            f"{'.'.join(str(p) for p in error.get('loc', [])[1:]) or 'request'}: {error.get('msg', error)}"
            for error in detail
            if isinstance(error, dict)
        )
    return str(detail)


def client() -> GatewayClient:
    return GatewayClient(
        os.environ.get("HOTREPOS_GATEWAY_URL") or DEFAULT_GATEWAY_URL, os.environ.get("HOTREPOS_TOKEN") or None
    )


def add(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"url": args.url, "format": args.format}
    if args.event:
        body["events"] = args.event
    if args.description is not None:
        body["description"] = args.description
    created = client().call("POST", "/api/webhooks", json=body)
    if args.json:
        print(json.dumps(created))
        return 0
    print(f"webhook {created['id']} added: {created['format']}, {' '.join(created['events'])} -> {created['url']}")
    if created.get("secret"):
        # Alone on the last line, so that a script can take it with `tail -n 1`.
        print("secret (shown only now; verify each delivery's webhook-signature with it):")
        print(created["secret"])
    return 0


def list_webhooks(args: argparse.Namespace) -> int:
    webhooks = client().call("GET", "/api/webhooks")
    if args.json:
        print(json.dumps(webhooks))
        return 0
    rows = [(w["id"], w["format"], ",".join(w["events"]), w["url"], w.get("description") or "") for w in webhooks]
    _table(("ID", "FORMAT", "EVENTS", "URL", "DESCRIPTION"), rows)
    return 0


def remove(args: argparse.Namespace) -> int:
    client().call("DELETE", f"/api/webhooks/{args.id}")
    print(f"webhook {args.id} removed")
    return 0


def deliveries(args: argparse.Namespace) -> int:
    found = client().call("GET", f"/api/webhooks/{args.id}/deliveries", params={"limit": args.limit})
    if args.json:
        print(json.dumps(found))
        return 0
    rows = [
        (
            d["event_id"],
            d["event_type"],
            d.get("report_id") or "",
            d["status"],
            str(d["attempts"]),
            str(d.get("last_status_code") or ""),
            d.get("delivered_at") or "",
            d.get("last_error") or "",
        )
        for d in found
    ]
    _table(("EVENT", "TYPE", "REPORT", "STATUS", "ATTEMPTS", "CODE", "DELIVERED", "ERROR"), rows)
    return 0


def _table(header: tuple[str, ...], rows: Sequence[tuple[Any, ...]]) -> None:
    cells = [header, *(tuple(str(cell) for cell in row) for row in rows)]
    widths = [max(len(cell) for cell in column) for column in zip(*cells, strict=True)]
    for row in cells:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def run(args: argparse.Namespace) -> int:
    try:
        return int(args.action(args))
    except GatewayError as exc:
        print(f"hotrepos webhooks {args.webhooks_command}: {exc}", file=sys.stderr)
        return exc.exit_status


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "webhooks",
        help="manage webhook subscriptions (through the gateway's API)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="webhooks_command", required=True)

    adding = commands.add_parser("add", help="subscribe a URL to report outcomes; prints the signing secret once")
    adding.add_argument("url")
    adding.add_argument(
        "--event",
        action="append",
        choices=get_args(WebhookEventType),
        help="an event to deliver (repeat for both; default: both)",
    )
    adding.add_argument("--format", choices=get_args(WebhookFormat), default="standard")
    adding.add_argument("--description")
    adding.add_argument("--json", action="store_true", help="print the gateway's answer as JSON")
    adding.set_defaults(action=add)

    listing = commands.add_parser("list", help="every subscription, without secrets")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(action=list_webhooks)

    removing = commands.add_parser("remove", help="unsubscribe; waiting deliveries are dropped")
    removing.add_argument("id")
    removing.set_defaults(action=remove)

    delivered = commands.add_parser("deliveries", help="a subscription's latest deliveries, newest first")
    delivered.add_argument("id")
    delivered.add_argument("--limit", type=int, default=20)
    delivered.add_argument("--json", action="store_true")
    delivered.set_defaults(action=deliveries)

    parser.set_defaults(handler=run)
