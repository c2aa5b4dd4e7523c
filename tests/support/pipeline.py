"""The whole pipeline as processes on one vhost, for the end-to-end and chaos tiers."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import redis
import requests

from shared.control import RedisCancellations
from shared.dedup import RedisProcessedEvents
from shared.outcomes import OutcomePublisher, RedisOutcomeLedger
from shared.pipeline import DeliveryPipeline, Route
from shared.publisher import Publisher
from tests.support.broker import Broker
from tests.support.services import ServiceProcess
from tests.support.smtp import free_port
from tests.support.waiting import eventually

PIPELINE_SERVICES = ("fetcher", "aggregator", "exporter", "notifier")
QUEUES_OF = {
    "fetcher": ("fetcher.report.requested",),
    "aggregator": ("aggregator.report.page.fetched",),
    "exporter": ("exporter.report.aggregated",),
    "notifier": ("notifier.report.exported", "notifier.report.failed", "notifier.alerts"),
}
# Opt-in, like the gateway: started by the tests that subscribe webhooks.
WEBHOOKS_QUEUES = ("webhooks.report.exported", "webhooks.report.failed", "webhooks.deliveries")
ADMIN = "admin@example.com"
HOTREPOS = Path(sys.executable).parent / "hotrepos"
# Log directories of the pipelines started in this session, oldest first: a failed chaos test keeps its own.
PIPELINE_LOG_DIRS: list[Path] = []


@dataclass(frozen=True)
class Gateway:
    """A running gateway process and the base URL of its HTTP API."""

    process: ServiceProcess
    url: str

    def ready(self) -> bool:
        try:
            return requests.get(f"{self.url}/readyz", timeout=5).status_code == 200
        except requests.RequestException:
            return False

    def alive(self) -> bool:
        try:
            return requests.get(f"{self.url}/healthz", timeout=5).status_code == 200
        except requests.RequestException:
            return False


@dataclass
class Pipeline:
    broker: Broker
    vhost: str
    redis_url: str
    github_url: str
    smtp_port: int
    root: Path
    today: dt.date
    extra_env: dict[str, str] = field(default_factory=dict)
    # Each service as this many competing processes, named `<service>-<n>` when there are several.
    replicas: int = 1
    processes: list[ServiceProcess] = field(default_factory=list)
    # Opt-in: each process started gets a METRICS_PORT of its own, recorded here by process name.
    with_metrics: bool = False
    metrics_ports: dict[str, int] = field(default_factory=dict)

    @property
    def amqp_url(self) -> str:
        return self.broker.amqp_url(self.vhost)

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"

    @property
    def log_dir(self) -> Path:
        return self.root / "logs"

    def env(self) -> dict[str, str]:
        return {
            "AMQP_URL": self.amqp_url,
            "REDIS_URL": self.redis_url,
            "GITHUB_API_URL": self.github_url,
            "GITHUB_TOKEN": "test-token",
            "SMTP_HOST": "127.0.0.1",
            "SMTP_PORT": str(self.smtp_port),
            "MAIL_FROM": "hotrepos@example.com",
            "ADMINS": ADMIN,
            "REPORTS_DIR": str(self.reports_dir),
            "LOG_DIR": str(self.log_dir),
            "LOG_LEVEL": "INFO",
            "TODAY": self.today.isoformat(),
            "FETCH_RETRY_BASE_SECONDS": "0.05",
            "ALERT_INTERVAL_SECONDS": "1",
            # Tests count GitHub calls and inject faults per call: no shared page cache or search
            # budget unless a test asks for them through extra_env.
            "GITHUB_CACHE_SECONDS": "0",
            "GITHUB_RATE_LIMIT_REQUESTS": "0",
            **self.extra_env,
        }

    def start(self, name: str, *args: str, env: Mapping[str, str] | None = None) -> ServiceProcess:
        env = {**self.env(), **(env or {})}
        if self.with_metrics:
            self.metrics_ports[name] = free_port()
            env["METRICS_PORT"] = str(self.metrics_ports[name])
        process = ServiceProcess(name, env, self.log_dir, args).start()
        self.processes.append(process)
        return process

    def start_all(self, timeout: float = 120) -> None:
        """Every replica of every service, until each consumes every queue of its service."""
        for service in PIPELINE_SERVICES:
            for index in range(1, self.replicas + 1):
                self.start(service if self.replicas == 1 else f"{service}-{index}")
        for service in PIPELINE_SERVICES:
            for queue in QUEUES_OF[service]:
                self.wait_for_consumer(queue, timeout, count=self.replicas)

    def start_gateway(
        self,
        name: str = "gateway",
        *,
        env: dict[str, str] | None = None,
        wait_ready: bool = True,
        timeout: float = 60,
    ) -> Gateway:
        """Also run a gateway (opt-in) on a port of its own; by default, once it answers ready.

        Open to all (GATEWAY_AUTH=none, allowed on loopback) and without a quota, unless env says
        otherwise: the tests of who may ask and how often start theirs with tokens or a proxy.
        """
        port = free_port()
        gateway_env = {
            **self.env(),
            "GATEWAY_HOST": "127.0.0.1",
            "GATEWAY_PORT": str(port),
            "GATEWAY_AUTH": "none",
            "GATEWAY_REQUESTS_PER_HOUR": "0",
            **(env or {}),
        }
        process = ServiceProcess(name, gateway_env, self.log_dir).start()
        self.processes.append(process)
        gateway = Gateway(process, f"http://127.0.0.1:{port}")

        def answering() -> bool:
            if not process.alive:
                raise AssertionError(f"{name} exited:\n{process.output()[-4000:]}")
            return gateway.ready() if wait_ready else gateway.alive()

        eventually(answering, timeout=timeout, message=f"{name} answering on {gateway.url}")
        return gateway

    def tokens(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`hotrepos tokens ...` against this pipeline's Redis, as an operator runs it."""
        return subprocess.run(
            [str(HOTREPOS), "tokens", *args],
            env={**os.environ, "REDIS_URL": self.redis_url},
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
            check=True,
        )

    def create_token(self, name: str, *, admin: bool = False) -> str:
        """A new API token, as `hotrepos tokens create` prints it: alone on its last line."""
        return self.tokens("create", name, *(["--admin"] if admin else [])).stdout.splitlines()[-1]

    def start_webhooks(
        self, name: str = "webhooks", *, env: Mapping[str, str] | None = None, timeout: float = 60
    ) -> ServiceProcess:
        """Also run a replica of the webhooks service (opt-in), once every replica consumes its queues."""
        process = self.start(name, env=env)
        replicas = sum(1 for p in self.processes if p.module == "services.webhooks" and p.alive)
        for queue in WEBHOOKS_QUEUES:
            self.wait_for_consumer(queue, timeout, count=replicas)
        return process

    def wait_for_consumer(self, queue: str, timeout: float = 60, count: int = 1) -> None:
        def consuming() -> bool:
            self.assert_alive()
            try:
                return int(self.broker.queue(self.vhost, queue).get("consumers", 0)) >= count
            except Exception:
                return False

        eventually(
            consuming,
            timeout=timeout,
            message=lambda: f"{count} consumer(s) on {queue}\n{self.logs()}",
            interval=0.2,
        )

    def dead(self) -> list[str]:
        """The processes that have exited."""
        return [p.name for p in self.processes if p.process is not None and p.process.poll() is not None]

    def assert_alive(self) -> None:
        for process in self.processes:
            if process.process is not None and process.process.poll() is not None:
                raise AssertionError(f"{process.name} exited:\n{process.output()[-4000:]}")

    def stop_all(self) -> None:
        for process in reversed(self.processes):
            process.stop()

    def logs(self) -> str:
        return "\n".join(f"==== {p.name}\n{p.output()[-3000:]}" for p in self.processes)


@contextmanager
def running_pipeline(
    broker: Broker,
    redis_url: str,
    github_url: str,
    smtp_port: int,
    root: Path,
    today: dt.date,
    vhost_prefix: str = "hotrepos-e2e",
    *,
    vhost: str | None = None,
    replicas: int = 1,
    extra_env: Mapping[str, str] | None = None,
    with_metrics: bool = False,
    timeout: float = 120,
) -> Iterator[Pipeline]:
    """The four pipeline services as processes, `replicas` of each, stopped afterwards.

    On the caller's `vhost` when given (one whose queues a test binds before the services start, or
    a broker of the test's own); otherwise on a throwaway vhost, deleted afterwards.
    """
    with ExitStack() as stack:
        running = Pipeline(
            broker=broker,
            vhost=vhost if vhost is not None else stack.enter_context(broker.vhost(vhost_prefix)),
            redis_url=redis_url,
            github_url=github_url,
            smtp_port=smtp_port,
            root=root,
            today=today,
            extra_env=dict(extra_env or {}),
            replicas=replicas,
            with_metrics=with_metrics,
        )
        PIPELINE_LOG_DIRS.append(running.log_dir)
        try:
            running.start_all(timeout)
            yield running
        finally:
            running.stop_all()


def delivery_pipeline(
    service: str,
    queue: str,
    routes: Mapping[str, Route],
    publisher: Publisher,
    redis_client: redis.Redis,
    *,
    dedup: bool = True,
) -> DeliveryPipeline:
    """The shared delivery pipeline of one queue, in-process, on the real Redis: what bootstrap() builds."""
    return DeliveryPipeline(
        service=service,
        queue=queue,
        routes=routes,
        publisher=publisher,
        outcomes=OutcomePublisher(RedisOutcomeLedger(redis_client), publisher),
        cancellations=RedisCancellations(redis_client),
        processed=RedisProcessedEvents(redis_client) if dedup else None,
    )
