"""Broker definitions derived from shared/topology.py: one vhost, one least-privilege user per service,
and one for a person running the `hotrepos` command line (the operator).

    python -m infra.rabbitmq.definitions                 # write infra/rabbitmq/definitions.json
    python -m infra.rabbitmq.definitions --check         # exit 1 if that file has drifted from the code
    python -m infra.rabbitmq.definitions --table         # docs/compose.md's table of users
    python -m infra.rabbitmq.definitions --deploy OUT    # deploy time: add password hashes from the env

The committed file holds no secret: its users have no password and cannot log in. At deploy time,
`--deploy` reads RABBITMQ_PASSWORD_<USER> for every user and writes a copy with salted hashes, which
the broker loads at boot.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import sys
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kombu.entity import Queue, binding
from kombu.transport.native_delayed_delivery import level_name

from services.fetcher.topology import TASK_DEAD_LETTER_QUEUE, TASK_EXCHANGE, TASK_QUEUE
from shared.topology import (
    ALERTS,
    DELAY,
    DELAY_LEVELS,
    DELAYED,
    DLX,
    EVENTS,
    EXCHANGES,
    PUBLISHES,
    SUBSCRIPTIONS,
    every_subscription,
    exchange_of,
    subscriptions_with_control,
)

VHOST = "hotrepos"
ADMIN = "admin"
# A person's everyday user for the command line: no administrator tag, no service's queue.
OPERATOR = "operator"
# What `hotrepos request` and `hotrepos cancel` publish.
OPERATOR_PUBLISHES = ("report.requested", "report.cancel.requested")
DEFINITIONS_FILE = Path(__file__).with_name("definitions.json")
HASHING_ALGORITHM = "rabbit_password_hashing_sha256"
# How RabbitMQ names the nameless default exchange in permission checks.
DEFAULT_EXCHANGE = "amq.default"
NOTHING = "^$"


class Regex(str):
    """A name or routing key given as a pattern: kept as it is where plain names are escaped."""


# Server-named queues (`queue_declare("")`): a replica's exclusive queue on hotrepos.control.
SERVER_NAMED_QUEUES = Regex(r"amq\.gen-.*")
# `hotrepos tail PATTERN` binds its own queue with whatever pattern it is given.
ANY_ROUTING_KEY = Regex(".*")
# The broker's delay levels and their way out (shared/topology.py), declared by every consumer.
DELAY_NAMES = Regex(r"celery_delayed_(?:[0-9]|1[0-9]|2[0-7]|delivery)")
DELAY_EXCHANGES = (*(level_name(level) for level in range(DELAY_LEVELS)), DELAYED.name)
# The keys the levels are bound to each other with: a level's bit of the delay, then anything.
LEVEL_BINDING_KEYS = Regex(r"(?:\*\.)*[01]\.#")


def delayed_keys(queue_name: str) -> Regex:
    """The routing keys of a delayed retry back to this queue: any delay, this queue alone."""
    return Regex(rf"(?:[01]\.){{{DELAY_LEVELS}}}{re.escape(queue_name)}")


def delayed_binding(queue_name: str) -> Regex:
    return Regex(rf"(?:\*\.){{{DELAY_LEVELS}}}{re.escape(queue_name)}")


def replay_keys(queue_name: str) -> Regex:
    return Regex(rf"(?:0\.){{{DELAY_LEVELS}}}{re.escape(queue_name)}")


# What a service declares and uses outside the shared contract: the fetcher's own Celery plumbing.
PRIVATE_QUEUES: dict[str, tuple[Queue, ...]] = {"fetcher": (TASK_QUEUE, TASK_DEAD_LETTER_QUEUE)}
PRIVATE_PUBLISHES: dict[str, tuple[str, ...]] = {"fetcher": (TASK_EXCHANGE.name,)}
# Queues whose delayed retries Celery sends (its countdowns) and binds back with a key of its own.
PRIVATE_DELAYED: dict[str, tuple[tuple[str, str], ...]] = {
    "fetcher": ((TASK_QUEUE.name, f"#.{TASK_QUEUE.routing_key}"),)
}


@dataclass
class Grant:
    """What one broker user may do, by resource name and by routing key."""

    user: str
    configure: set[str] = field(default_factory=set)
    write: set[str] = field(default_factory=set)
    read: set[str] = field(default_factory=set)
    publishes: tuple[str, ...] = ()
    # Topic exchange -> routing keys this user may publish with, and bind its queues with.
    topic_writes: dict[str, set[str]] = field(default_factory=dict)
    topic_reads: dict[str, set[str]] = field(default_factory=dict)
    consumes: list[str] = field(default_factory=list)
    queues: set[str] = field(default_factory=set)


def principals() -> tuple[str, ...]:
    """Every service that gets a broker user of its own, in the contract's order."""
    return tuple(PUBLISHES)


def grantees() -> tuple[str, ...]:
    """Every user whose permissions are derived here: the services', then the operator's."""
    return (*principals(), OPERATOR)


def grant_of(user: str) -> Grant:
    return operator_grant() if user == OPERATOR else grant_for(user)


def password_variable(user: str) -> str:
    return "RABBITMQ_PASSWORD_" + re.sub(r"[^A-Za-z0-9]", "_", user).upper()


def grant_for(service: str) -> Grant:
    """Derive a service's permissions from what it declares, binds, consumes and publishes."""
    grant = Grant(service)
    subscriptions = subscriptions_with_control(service)
    queues: list[Queue] = []
    for subscription in subscriptions:
        queues.extend(subscription.all_queues())
        if subscription.exclusive:
            queues.append(subscription.queue())
        grant.consumes.append(
            f"`{subscription.exchange.name}` (a queue per replica)"
            if subscription.exclusive
            else f"`{subscription.queue_name}`"
        )
    queues.extend(PRIVATE_QUEUES.get(service, ()))
    grant.consumes.extend(f"`{q.name}`" for q in PRIVATE_QUEUES.get(service, ()))
    for queue in queues:
        _grant_queue(grant, queue)

    grant.publishes = tuple(t for t in PUBLISHES[service] if exchange_of(t) is EVENTS)
    grant.topic_writes.setdefault(EVENTS.name, set()).update(grant.publishes)
    for subscription in subscriptions:
        if not subscription.exclusive:
            # Its own dead letters, keyed by its own queue's name, and its own delayed retries.
            grant.topic_writes.setdefault(DLX.name, set()).add(subscription.queue_name)
            _grant_delays(grant, subscription.queue_name)
    for queue_name, binding_key in PRIVATE_DELAYED.get(service, ()):
        _grant_delays(grant, queue_name, binding_key)
    published = {exchange_of(t).name for t in PUBLISHES[service]} | {ALERTS.name}
    published |= set(PRIVATE_PUBLISHES.get(service, ()))
    grant.write |= published
    # Declaring is how every service makes sure an exchange exists: a consumer declares them all at
    # start, a pure publisher only those it publishes to; its own exchanges, only their owner.
    grant.configure |= {e.name for e in EXCHANGES} if subscriptions else (published & _contract_exchanges())
    grant.configure |= own_exchanges(service)
    return grant


def _grant_delays(grant: Grant, queue_name: str, binding_key: str | None = None) -> None:
    """Declare the delay levels, send a retry into the top one, and get it back to this queue alone."""
    grant.configure.add(DELAY_NAMES)
    grant.write.add(DELAY_NAMES)
    grant.read.add(DELAY_NAMES)
    for level in DELAY_EXCHANGES[:-1]:
        grant.topic_reads.setdefault(level, set()).add(LEVEL_BINDING_KEYS)
    grant.topic_writes.setdefault(DELAY.name, set()).add(delayed_keys(queue_name))
    binding_keys = grant.topic_reads.setdefault(DELAYED.name, set())
    binding_keys.add(delayed_binding(queue_name) if binding_key is None else Regex(re.escape(binding_key)))


def own_exchanges(service: str) -> set[str]:
    """Exchanges outside the contract that only this service writes to: its own messages' and plumbing."""
    own_messages = {exchange_of(t).name for t in PUBLISHES.get(service, ())} - _contract_exchanges()
    return own_messages | set(PRIVATE_PUBLISHES.get(service, ()))


def operator_grant() -> Grant:
    """What the command line does on the broker (hotrepos_cli/), and nothing else.

    request and cancel publish (declaring the exchange first, as every publisher does); request --wait
    and tail follow events on an exclusive server-named queue of their own, bound with any pattern;
    dlq reads every dead-letter queue and replays a message where the dlq command sends it: a work
    queue's dead letter through the delay levels' way out to that one queue, any other to where it was first
    published (a page task to the fetcher's task exchange, a control command to hotrepos.control).
    """
    grant = Grant(OPERATOR)
    for event_type in OPERATOR_PUBLISHES:
        exchange = exchange_of(event_type)
        grant.configure.add(exchange.name)
        grant.write.add(exchange.name)
        if exchange.type == "topic":
            grant.topic_writes.setdefault(exchange.name, set()).add(event_type)
    grant.publishes = tuple(t for t in OPERATOR_PUBLISHES if exchange_of(t) is EVENTS)

    grant.queues.add(SERVER_NAMED_QUEUES)
    grant.configure |= {SERVER_NAMED_QUEUES, EVENTS.name}
    grant.write.add(SERVER_NAMED_QUEUES)
    grant.read |= {SERVER_NAMED_QUEUES, EVENTS.name}
    grant.topic_reads.setdefault(EVENTS.name, set()).add(ANY_ROUTING_KEY)
    grant.consumes.append(f"`{EVENTS.name}` (a queue of its own, any pattern)")

    dead_letter_queues = sorted({s.dlq_name for s in every_subscription()} | {TASK_DEAD_LETTER_QUEUE.name})
    grant.read |= set(dead_letter_queues)
    grant.consumes.append("every `*.dlq`")
    grant.write |= {DELAYED.name, TASK_EXCHANGE.name}
    grant.topic_writes.setdefault(DELAYED.name, set()).update(replay_keys(s.queue_name) for s in SUBSCRIPTIONS)
    return grant


def topic_exchanges() -> list[str]:
    """Every topic exchange of the contract and the delay levels: each gets a topic permission entry."""
    return [*(e.name for e in EXCHANGES if e.type == "topic"), *DELAY_EXCHANGES]


def _contract_exchanges() -> set[str]:
    return {e.name for e in EXCHANGES}


def _grant_queue(grant: Grant, queue: Queue) -> None:
    name = SERVER_NAMED_QUEUES if not queue.name else queue.name
    # configure: declare; read: consume, and declaring with a dead-letter exchange; write: bind.
    grant.queues.add(name)
    grant.configure.add(name)
    grant.read.add(name)
    grant.write.add(name)
    bindings = list(queue.bindings or ())
    if queue.exchange is not None and queue.exchange.name:
        bindings.append(binding(queue.exchange, routing_key=queue.routing_key))
    for bound in bindings:
        grant.read.add(bound.exchange.name)
        if bound.exchange.type == "topic":
            grant.topic_reads.setdefault(bound.exchange.name, set()).add(bound.routing_key)
    arguments: dict[str, object] = getattr(queue, "queue_arguments", None) or {}
    dead_letter_exchange = arguments.get("x-dead-letter-exchange")
    if dead_letter_exchange is not None:
        # The broker checks write on a queue's dead-letter exchange when the queue is declared;
        # topic permissions keep that write to the service's own routing keys.
        grant.write.add(str(dead_letter_exchange) or DEFAULT_EXCHANGE)


def name_pattern(names: Iterable[str]) -> str:
    """An anchored regex matching exactly these names (a name already a regex is kept as it is)."""
    parts = sorted(n if isinstance(n, Regex) else re.escape(n) for n in names)
    return f"^(?:{'|'.join(parts)})$" if parts else NOTHING


def build_definitions(
    vhost: str = VHOST, user_names: Mapping[str, str] | None = None, *, with_admin: bool = True
) -> dict[str, Any]:
    """RabbitMQ definitions for the vhost; user_names renames the derived users (tests)."""
    names = {grantee: grantee for grantee in grantees()} | dict(user_names or {})
    users: list[dict[str, Any]] = []
    permissions: list[dict[str, str]] = []
    topic_permissions: list[dict[str, str]] = []
    if with_admin:
        users.append(_user(ADMIN, ["administrator"]))
        permissions.append({"user": ADMIN, "vhost": vhost, "configure": ".*", "write": ".*", "read": ".*"})
    for grantee in grantees():
        grant = grant_of(grantee)
        user = names[grantee]
        users.append(_user(user, []))
        permissions.append(
            {
                "user": user,
                "vhost": vhost,
                "configure": name_pattern(grant.configure),
                "write": name_pattern(grant.write),
                "read": name_pattern(grant.read),
            }
        )
        # Every topic exchange gets an entry: without one, the broker allows any routing key.
        topic_permissions.extend(
            {
                "user": user,
                "vhost": vhost,
                "exchange": exchange,
                "write": name_pattern(grant.topic_writes.get(exchange, ())),
                "read": name_pattern(grant.topic_reads.get(exchange, ())),
            }
            for exchange in topic_exchanges()
        )
    exchanges = [
        {
            "name": exchange.name,
            "vhost": vhost,
            "type": exchange.type,
            "durable": bool(exchange.durable),
            "auto_delete": bool(exchange.auto_delete),
            "internal": False,
            "arguments": {},
        }
        for exchange in EXCHANGES
    ]
    return {
        "users": users,
        "vhosts": [{"name": vhost}],
        "permissions": permissions,
        "topic_permissions": topic_permissions,
        "exchanges": exchanges,
    }


def _user(name: str, tags: list[str]) -> dict[str, Any]:
    # No hash: such a user cannot log in with a password until --deploy gives it one.
    return {"name": name, "password_hash": "", "hashing_algorithm": HASHING_ALGORITHM, "tags": tags}


def password_hash(password: str, salt: bytes | None = None) -> str:
    """RabbitMQ's rabbit_password_hashing_sha256: base64(salt + sha256(salt + password)), 4-byte salt."""
    salt = os.urandom(4) if salt is None else salt
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def with_passwords(definitions: Mapping[str, Any], passwords: Mapping[str, str]) -> dict[str, Any]:
    """A copy whose users get the hashes of these passwords; a user without one is an error."""
    missing = [u["name"] for u in definitions["users"] if not passwords.get(u["name"])]
    if missing:
        raise KeyError(", ".join(password_variable(name) for name in missing))
    rendered = json.loads(json.dumps(definitions))
    for user in rendered["users"]:
        user["password_hash"] = password_hash(passwords[user["name"]])
    return dict(rendered)


def render(definitions: Mapping[str, Any]) -> str:
    return json.dumps(definitions, indent=2, sort_keys=False) + "\n"


def users_table() -> str:
    """docs/compose.md's table: each user, what it consumes, publishes and may write besides."""
    lines = [
        "| user | consumes | publishes on `hotrepos.events` | writes to other exchanges |",
        "|---|---|---|---|",
        f"| `{ADMIN}` | (a person: the management UI) | anything | anything (administrator) |",
    ]
    for user in grantees():
        grant = grant_of(user)
        consumes = ", ".join(grant.consumes) or "nothing"
        publishes = ", ".join(f"`{key}`" for key in grant.publishes) or "nothing"
        # A queue and an exchange may share a name (the fetcher's Celery plumbing): list both.
        private = own_exchanges(user) if user in PUBLISHES else set()
        exchanges = sorted((grant.write - grant.queues - {EVENTS.name}) | private)
        others = ", ".join(
            "`celery_delayed_*` (the delay levels)" if name == DELAY_NAMES else f"`{name}`" for name in exchanges
        )
        lines.append(f"| `{user}` | {consumes} | {publishes} | {others} |")
    return "\n".join(lines) + "\n"


def _write_atomically(path: Path, text: str, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, encoding="utf-8") as tmp:
        tmp.write(text)
    os.chmod(tmp.name, mode)
    os.replace(tmp.name, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m infra.rabbitmq.definitions",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--check", action="store_true", help="fail if definitions.json is stale")
    action.add_argument("--table", action="store_true", help="print docs/compose.md's users table")
    action.add_argument("--deploy", type=Path, metavar="OUT", help="write definitions with password hashes")
    args = parser.parse_args(argv)

    if args.table:
        sys.stdout.write(users_table())
        return 0
    if args.deploy:
        committed = json.loads(DEFINITIONS_FILE.read_text(encoding="utf-8"))
        passwords = {user["name"]: os.environ.get(password_variable(user["name"]), "") for user in committed["users"]}
        try:
            rendered = with_passwords(committed, passwords)
        except KeyError as exc:
            print(f"hotrepos: set these broker passwords: {exc.args[0]}", file=sys.stderr)
            return 2
        # The broker runs as another user and must read it; the volume it sits on is private.
        _write_atomically(args.deploy, render(rendered), 0o644)
        print(f"broker definitions with {len(passwords)} users written to {args.deploy}")
        return 0
    expected = render(build_definitions())
    if args.check:
        current = DEFINITIONS_FILE.read_text(encoding="utf-8") if DEFINITIONS_FILE.exists() else ""
        if current != expected:
            print(f"{DEFINITIONS_FILE} is stale: run python -m infra.rabbitmq.definitions", file=sys.stderr)
            return 1
        return 0
    _write_atomically(DEFINITIONS_FILE, expected, 0o644)
    print(f"wrote {DEFINITIONS_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
