"""`hotrepos tokens create|list|revoke`: the gateway's API tokens, kept (as hashes only) in REDIS_URL.

Run where the gateway's Redis is reachable: in compose, `docker compose exec gateway hotrepos tokens ...`.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import redis

from shared.api_tokens import RedisApiTokens
from shared.settings import CommonSettings, load_settings

EXIT_NOT_FOUND, EXIT_INVALID = 1, 2


def _store() -> RedisApiTokens:
    settings = load_settings(CommonSettings)
    return RedisApiTokens(redis.Redis.from_url(settings.redis_url, socket_timeout=10))


def create(args: argparse.Namespace) -> int:
    try:
        token = _store().create(args.name, admin=args.admin)
    except ValueError as exc:  # a name that is not one, or taken (TokenNameTaken)
        print(f"hotrepos tokens create: {exc}", file=sys.stderr)
        return EXIT_INVALID
    if args.json:
        print(json.dumps({"name": args.name, "token": token, "admin": args.admin}))
        return 0
    role = "an admin token" if args.admin else "a token"
    print(f"{role} named {args.name!r} created; it is shown only now, send it as 'Authorization: Bearer ...':")
    # Alone on the last line, so that a script can take it with `tail -n 1`.
    print(token)
    return 0


def list_tokens(args: argparse.Namespace) -> int:
    tokens = _store().live()
    if args.json:
        print(json.dumps([token.model_dump(mode="json", exclude={"revoked_at"}) for token in tokens]))
        return 0
    for token in tokens:
        print(f"{token.name}\t{'admin' if token.admin else 'user'}\tcreated {token.created_at:%Y-%m-%d %H:%M} UTC")
    return 0


def revoke(args: argparse.Namespace) -> int:
    if not _store().revoke(args.name):
        print(f"hotrepos tokens revoke: no token named {args.name!r}", file=sys.stderr)
        return EXIT_NOT_FOUND
    print(f"token {args.name!r} revoked: every gateway refuses it from now on")
    return 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("tokens", help="create, list and revoke the gateway's API tokens")
    commands = parser.add_subparsers(dest="tokens_command", required=True)

    made = commands.add_parser("create", help="create a token; it is printed once, alone on the last line")
    made.add_argument("name", help="who holds it: the reports it requests are theirs")
    made.add_argument("--admin", action="store_true", help="may see, download and cancel every report")
    made.add_argument("--json", action="store_true", help='print {"name", "token", "admin"}')
    made.set_defaults(handler=create)

    listed = commands.add_parser("list", help="the tokens in use (never the tokens themselves)")
    listed.add_argument("--json", action="store_true")
    listed.set_defaults(handler=list_tokens)

    revoked = commands.add_parser("revoke", help="stop a token working, on every gateway at once")
    revoked.add_argument("name")
    revoked.set_defaults(handler=revoke)
