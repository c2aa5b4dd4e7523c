"""The two designs under test, each on a throwaway vhost, driven the same way: request, then hear it done."""

from __future__ import annotations

import datetime as dt
import json
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Protocol

import pika
import redis
import requests

from bench.baseline_chord.tasks import DONE_QUEUE, create_app, request_report
from bench.completions import CompletionListener
from bench.fake_github import FakeGitHubProcess
from tests.support.broker import Broker
from tests.support.services import ServiceProcess
from tests.support.smtp import free_port

PERIOD = "month"  # five full pages of 100 repositories: the whole 2.7 MB a report can cost
# The original design's layout, so that both designs write the same bytes.
LAYOUT = "by-language"
HOTREPOS_TOKEN = "bench-hotrepos"
BASELINE_TOKEN = "bench-baseline"
START_TIMEOUT = 90.0


class System(Protocol):
    name: str
    listener: CompletionListener

    def request(self, report_id: str, ref_date: dt.date | None = None) -> None: ...

    def processes(self) -> dict[str, int]: ...

    def stop(self) -> None: ...


def consumer_counts(amqp_url: str, queues: list[str]) -> dict[str, int]:
    """Live consumer counts over AMQP (the management API's figures lag by seconds)."""
    counts: dict[str, int] = {}
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        for queue in queues:
            channel = connection.channel()
            try:
                counts[queue] = channel.queue_declare(queue, passive=True).method.consumer_count
                channel.close()
            except pika.exceptions.ChannelClosedByBroker:
                counts[queue] = 0  # not declared yet
    finally:
        connection.close()
    return counts


def wait_for_consumers(amqp_url: str, wanted: dict[str, int], watched: list[ServiceProcess]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        for process in watched:
            if not process.alive:
                raise RuntimeError(f"{process.name} exited:\n{process.output()[-3000:]}")
        counts = consumer_counts(amqp_url, list(wanted))
        if counts == wanted:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"consumers {counts}, wanted {wanted}, after {START_TIMEOUT}s")
        time.sleep(0.1)


def stop_all(processes: list[ServiceProcess], timeout: float = 20) -> None:
    """SIGTERM every process first, then wait: stopping one after another takes their sum."""
    running = [p.process for p in processes if p.process is not None and p.process.poll() is None]
    for process in running:
        process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for process in running:
        try:
            process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


class HotreposSystem:
    """Every hotrepos service as a process, as operators run them: `python -m services.<name>`."""

    name = "hotrepos"

    def __init__(
        self,
        broker: Broker,
        redis_url: str,
        github: FakeGitHubProcess,
        workdir: Path,
        *,
        fetchers: int = 1,
        env: dict[str, str] | None = None,
    ) -> None:
        self.broker = broker
        self.vhost = broker.create_vhost("hotrepos-bench")
        self.amqp_url = broker.amqp_url(self.vhost)
        self.today = github.today
        self._log_dir = workdir / "logs" / self.vhost
        self._env = {
            "AMQP_URL": self.amqp_url,
            "REDIS_URL": redis_url,
            "GITHUB_API_URL": github.url,
            "GITHUB_TOKEN": HOTREPOS_TOKEN,
            "REPORTS_DIR": str(workdir / "reports"),
            "LOG_LEVEL": "INFO",
            "TODAY": github.today.isoformat(),
        }
        self.fetchers: list[ServiceProcess] = []
        self.gateways: list[ServiceProcess] = []
        self._fetcher_env: dict[str, str] = {}
        self._started_fetchers = 0
        self.services = [
            ServiceProcess(name, self._env, self._log_dir).start() for name in ("aggregator", "exporter", "notifier")
        ]
        self.services.append(ServiceProcess("fetcher-beat", self._env, self._log_dir, ("beat",)).start())
        try:
            self.set_fetchers(fetchers, env or {})
            wait_for_consumers(
                self.amqp_url,
                {"aggregator.report.page.fetched": 1, "exporter.report.aggregated": 1, "notifier.report.exported": 1},
                self.services,
            )
            self.listener = CompletionListener(
                self.amqp_url,
                bindings=(("hotrepos.events", "report.exported"), ("hotrepos.events", "report.failed")),
            )
            parameters = pika.URLParameters(self.amqp_url)
            # The bench publishes in bursts minutes apart (the backlog waits for its last report): a
            # blocking connection sends no heartbeats while idle, so none are agreed.
            parameters.heartbeat = 0
            self._connection = pika.BlockingConnection(parameters)
            self._channel = self._connection.channel()
        except BaseException:
            self.stop()
            raise

    def set_fetchers(self, count: int, env: dict[str, str]) -> None:
        """Run `count` fetcher replicas with these settings; the other services keep running."""
        if env != self._fetcher_env:
            stop_all(self.fetchers)
            self.fetchers = []
            self._fetcher_env = dict(env)
        if count < len(self.fetchers):
            stop_all(self.fetchers[count:])
            self.fetchers = self.fetchers[:count]
        while len(self.fetchers) < count:
            self._started_fetchers += 1
            name = f"fetcher-{self._started_fetchers}"
            self.fetchers.append(ServiceProcess(name, {**self._env, **env}, self._log_dir).start())
        wait_for_consumers(self.amqp_url, {"fetcher.report.requested": count, "fetcher.tasks": count}, self.fetchers)

    def start_gateways(self, count: int, env: dict[str, str]) -> list[str]:
        """`count` gateway replicas on free loopback ports, ready to answer; their base URLs."""
        urls = []
        for index in range(1, count + 1):
            port = free_port()
            gateway_env = {**self._env, **env, "GATEWAY_HOST": "127.0.0.1", "GATEWAY_PORT": str(port)}
            self.gateways.append(ServiceProcess(f"gateway-{index}", gateway_env, self._log_dir).start())
            urls.append(f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + START_TIMEOUT
        for gateway, url in zip(self.gateways[-count:], urls, strict=True):
            while not _ready(url):
                if not gateway.alive or time.monotonic() > deadline:
                    raise RuntimeError(f"{gateway.name} is not ready:\n{gateway.output()[-3000:]}")
                time.sleep(0.2)
        return urls

    def request(self, report_id: str, ref_date: dt.date | None = None, priority: str | None = None) -> None:
        data: dict[str, str] = {"report_id": report_id, "period": PERIOD, "layout": LAYOUT}
        if ref_date is not None:
            data["ref_date"] = ref_date.isoformat()
        if priority is not None:
            data["priority"] = priority
        event = {
            "specversion": "1.0",
            "id": str(uuid.uuid4()),
            "type": "report.requested",
            "source": "bench",
            # Stamped as hotrepos stamps its own events: where a report's time goes is read from them.
            "time": dt.datetime.now(dt.UTC).isoformat(),
            "datacontenttype": "application/json",
            "data": data,
        }
        self._channel.basic_publish(
            "hotrepos.events",
            "report.requested",
            json.dumps(event).encode(),
            pika.BasicProperties(content_type="application/cloudevents+json", delivery_mode=2, message_id=event["id"]),
        )

    def processes(self) -> dict[str, int]:
        return {
            s.name: s.process.pid
            for s in [*self.fetchers, *self.services, *self.gateways]
            if s.process is not None and s.alive
        }

    def stop(self) -> None:
        listener = getattr(self, "listener", None)
        if listener is not None:
            listener.close()
        connection = getattr(self, "_connection", None)
        if connection is not None and connection.is_open:
            connection.close()
        stop_all([*self.gateways, *self.fetchers, *self.services])
        self.broker.delete_vhost(self.vhost)


def _ready(url: str) -> bool:
    try:
        return requests.get(f"{url}/readyz", timeout=2).status_code == 200
    except requests.RequestException:
        return False


class BaselineSystem:
    """The Celery chord: one prefork worker (a process per core), the bench process as its client."""

    name = "baseline"

    def __init__(
        self,
        broker: Broker,
        redis_url: str,
        github: FakeGitHubProcess,
        workdir: Path,
        *,
        concurrency: int | None = None,
    ) -> None:
        self.broker = broker
        self.vhost = broker.create_vhost("hotrepos-bench-baseline")
        self.amqp_url = broker.amqp_url(self.vhost)
        self.redis_url = redis_url
        self.today = github.today
        env = {
            "BASELINE_AMQP_URL": self.amqp_url,
            "BASELINE_REDIS_URL": redis_url,
            "GITHUB_API_URL": github.url,
            "GITHUB_TOKEN": BASELINE_TOKEN,
            "REPORTS_DIR": str(workdir / "reports"),
            "LOG_LEVEL": "INFO",
        }
        if concurrency:
            env["BASELINE_CONCURRENCY"] = str(concurrency)
        worker = ServiceProcess("baseline", env, workdir / "logs" / self.vhost)
        worker.module = "bench.baseline_chord"
        self.services = [worker.start()]
        try:
            wait_for_consumers(self.amqp_url, {"celery": 1}, self.services)
            self.listener = CompletionListener(self.amqp_url, queue=DONE_QUEUE)
            self.app = create_app(self.amqp_url, redis_url)
        except BaseException:
            self.stop()
            raise

    def request(self, report_id: str, ref_date: dt.date | None = None) -> None:
        since = (ref_date or self.today) - dt.timedelta(days=30)
        request_report(self.app, report_id, PERIOD, since.isoformat())

    def processes(self) -> dict[str, int]:
        return {s.name: s.process.pid for s in self.services if s.process is not None and s.alive}

    def stop(self) -> None:
        listener = getattr(self, "listener", None)
        if listener is not None:
            listener.close()
        app = getattr(self, "app", None)
        if app is not None:
            app.close()
        stop_all(self.services)
        self.broker.delete_vhost(self.vhost)
        forget_results(self.redis_url)


def forget_results(redis_url: str) -> None:
    """The chord's results are 2.7 MB a report: do not leave them in a shared Redis."""
    client = redis.Redis.from_url(redis_url)
    for pattern in ("celery-task-meta-*", "celery-taskset-meta-*", "chord-unlock-*"):
        keys = list(client.scan_iter(pattern, count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
    client.close()
