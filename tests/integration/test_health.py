"""The metrics port of a real service process: /readyz follows the broker and Redis, /healthz does not."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from tests.support.broker import Broker
from tests.support.services import ServiceProcess
from tests.support.smtp import free_port
from tests.support.tcp_proxy import TcpProxy
from tests.support.waiting import eventually


class Probe:
    def __init__(self, port: int, service: ServiceProcess) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.service = service

    def get(self, path: str) -> requests.Response:
        if not self.service.alive:
            raise AssertionError(f"{self.service.name} exited:\n{self.service.output()[-3000:]}")
        return requests.get(self.base + path, timeout=10)

    def readiness(self) -> tuple[int, dict[str, str]]:
        response = self.get("/readyz")
        return response.status_code, json.loads(response.text)["checks"]

    def wait_ready(self, ready: bool) -> dict[str, str]:
        seen: dict[str, dict[str, str]] = {}

        def matches() -> bool:
            try:
                status, checks = self.readiness()
            except requests.ConnectionError:
                return False
            seen["last"] = checks
            return (status == 200) is ready

        eventually(matches, timeout=60, message=f"/readyz {'ready' if ready else 'unready'}")
        return seen["last"]


@pytest.fixture
def proxied_service(
    broker: Broker, vhost: str, redis_url: str, tmp_path: Path
) -> Iterator[tuple[Probe, TcpProxy, TcpProxy]]:
    broker_proxy = TcpProxy(broker.host, broker.port).start()
    redis_parts = urlsplit(redis_url)
    redis_proxy = TcpProxy(redis_parts.hostname or "127.0.0.1", redis_parts.port or 6379).start()
    port = free_port()
    env = {
        "AMQP_URL": Broker("127.0.0.1", broker_proxy.port, broker.user, broker.password, "").amqp_url(vhost),
        "REDIS_URL": redis_parts._replace(netloc=f"127.0.0.1:{redis_proxy.port}").geturl(),
        "METRICS_PORT": str(port),
        "LOG_DIR": str(tmp_path / "logs"),
    }
    service = ServiceProcess("aggregator", env, tmp_path / "logs").start()
    try:
        yield Probe(port, service), broker_proxy, redis_proxy
    finally:
        service.stop()
        broker_proxy.stop()
        redis_proxy.stop()


def test_readyz_turns_unready_while_the_broker_or_redis_is_away(
    proxied_service: tuple[Probe, TcpProxy, TcpProxy],
) -> None:
    probe, broker_proxy, redis_proxy = proxied_service
    assert probe.wait_ready(True) == {"broker": "ok", "redis": "ok"}

    broker_proxy.cut()
    checks = probe.wait_ready(False)
    assert checks["broker"] != "ok" and checks["redis"] == "ok"
    # Alive all the same: an orchestrator must not restart a service for its broker's outage.
    assert probe.get("/healthz").status_code == 200
    broker_proxy.restore()
    assert probe.wait_ready(True) == {"broker": "ok", "redis": "ok"}

    redis_proxy.cut()
    checks = probe.wait_ready(False)
    assert checks["redis"] != "ok" and checks["broker"] == "ok"
    redis_proxy.restore()
    probe.wait_ready(True)


def test_metrics_port_serves_prometheus_text_and_answers_unknown_paths_with_404(
    proxied_service: tuple[Probe, TcpProxy, TcpProxy],
) -> None:
    probe, _, _ = proxied_service
    probe.wait_ready(True)
    metrics = probe.get("/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["Content-Type"].startswith("text/plain")
    assert "# TYPE hotrepos_events_consumed_total counter" in metrics.text
    assert "# TYPE hotrepos_handler_duration_seconds histogram" in metrics.text
    assert probe.get("/nothing-here").status_code == 404
