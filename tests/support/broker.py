"""The test broker: AMQP_URL or a local RabbitMQ when one answers, testcontainers otherwise."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import redis
import requests


@dataclass(frozen=True)
class Broker:
    host: str
    port: int
    user: str
    password: str
    management_url: str

    def amqp_url(self, vhost: str) -> str:
        return f"amqp://{quote(self.user)}:{quote(self.password)}@{self.host}:{self.port}/{quote(vhost, safe='')}"

    def api(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        response = requests.request(
            method, f"{self.management_url}/api{path}", auth=(self.user, self.password), timeout=30, **kwargs
        )
        response.raise_for_status()
        return response

    def create_vhost(self, prefix: str = "hotrepos-test") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        self.api("PUT", f"/vhosts/{quote(name, safe='')}")
        self.api(
            "PUT",
            f"/permissions/{quote(name, safe='')}/{quote(self.user, safe='')}",
            json={"configure": ".*", "write": ".*", "read": ".*"},
        )
        return name

    def delete_vhost(self, name: str) -> None:
        requests.delete(
            f"{self.management_url}/api/vhosts/{quote(name, safe='')}",
            auth=(self.user, self.password),
            timeout=30,
        )

    @contextmanager
    def vhost(self, prefix: str = "hotrepos-test") -> Iterator[str]:
        name = self.create_vhost(prefix)
        try:
            yield name
        finally:
            self.delete_vhost(name)

    def queue(self, vhost: str, name: str) -> dict[str, Any]:
        data: dict[str, Any] = self.api("GET", f"/queues/{quote(vhost, safe='')}/{quote(name, safe='')}").json()
        return data

    def queue_names(self, vhost: str) -> list[str]:
        return [q["name"] for q in self.api("GET", f"/queues/{quote(vhost, safe='')}").json()]


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@contextmanager
def test_broker() -> Iterator[Broker]:
    url = os.environ.get("AMQP_URL")
    if url:
        parts = urlsplit(url)
        host = parts.hostname or "127.0.0.1"
        management = os.environ.get("RABBITMQ_MANAGEMENT_URL", f"http://{host}:15672")
        yield Broker(host, parts.port or 5672, parts.username or "guest", parts.password or "guest", management)
        return
    if _answers("127.0.0.1", 5672):
        yield Broker("127.0.0.1", 5672, "guest", "guest", "http://127.0.0.1:15672")
        return
    from testcontainers.rabbitmq import RabbitMqContainer

    with RabbitMqContainer("rabbitmq:3.13-management").with_exposed_ports(5672, 15672) as container:
        host = container.get_container_host_ip()
        yield Broker(
            host,
            int(container.get_exposed_port(5672)),
            "guest",
            "guest",
            f"http://{host}:{container.get_exposed_port(15672)}",
        )


def test_redis_database() -> int:
    """14 for a run in one process; under pytest-xdist, one database per worker (gw0 14, gw1 15), so that
    one worker's gateway history or dedup keys never show in another's. The benchmark keeps 12 and 13."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker.removeprefix("gw"))
    if index > 1:
        raise RuntimeError("the local Redis has databases for two test workers: run with -n 2 at most")
    return 14 + index


@contextmanager
def test_redis() -> Iterator[str]:
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    if _answers("127.0.0.1", 6379):
        url = f"redis://127.0.0.1:6379/{test_redis_database()}"
        # The database is the tests' own: start it empty, so that no earlier run's leftovers (a report
        # history, claims, leases) decide what this run sees. A REDIS_URL given by hand is never emptied.
        redis.Redis.from_url(url).flushdb()
        yield url
        return
    from testcontainers.redis import RedisContainer

    with RedisContainer("redis:7") as container:
        yield f"redis://{container.get_container_host_ip()}:{container.get_exposed_port(6379)}/0"
