"""The generated least-privilege users, the services' and the operator's, in a throwaway vhost under unique names."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import requests

from infra.rabbitmq.definitions import build_definitions, grantees, with_passwords
from tests.support.broker import Broker


@dataclass(frozen=True)
class ServiceUsers:
    """Each derived broker user on one vhost (a service's, or the operator's): its name and an AMQP URL."""

    broker: Broker
    vhost: str
    names: dict[str, str]
    passwords: dict[str, str]

    def amqp_url(self, service: str) -> str:
        user, password = self.names[service], self.passwords[service]
        return (
            f"amqp://{quote(user, safe='')}:{quote(password, safe='')}@{self.broker.host}:{self.broker.port}"
            f"/{quote(self.vhost, safe='')}"
        )

    def definitions(self) -> dict[str, Any]:
        return build_definitions(self.vhost, self.names, with_admin=False)

    def set_topic_permission(self, service: str, *, write: str, read: str) -> None:
        """Overwrite one user's topic permission: a deliberate misconfiguration, for tests."""
        self.broker.api(
            "PUT",
            f"/topic-permissions/{quote(self.vhost, safe='')}/{quote(self.names[service], safe='')}",
            json={"exchange": "hotrepos.events", "write": write, "read": read},
        )


@contextmanager
def service_users(broker: Broker, vhost: str) -> Iterator[ServiceUsers]:
    """Import the generated users and permissions (renamed) through the broker's definitions API."""
    tag = uuid.uuid4().hex[:8]
    names = {grantee: f"hotrepos-test-{tag}-{grantee}" for grantee in grantees()}
    passwords = {grantee: secrets.token_hex(16) for grantee in grantees()}
    users = ServiceUsers(broker, vhost, names, passwords)
    definitions = with_passwords(users.definitions(), {names[grantee]: passwords[grantee] for grantee in grantees()})
    del definitions["vhosts"]  # the throwaway vhost exists already; it is deleted by its owner
    try:
        broker.api("POST", "/definitions", json=definitions)
        yield users
    finally:
        for name in names.values():
            requests.delete(
                f"{broker.management_url}/api/users/{quote(name, safe='')}",
                auth=(broker.user, broker.password),
                timeout=30,
            )
