"""The whole pipeline as processes on one vhost, for end-to-end tests."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.broker import Broker
from tests.support.services import ServiceProcess, wait_until

PIPELINE_SERVICES = ("fetcher", "aggregator", "exporter", "notifier")
QUEUES_OF = {
    "fetcher": ("fetcher.report.requested",),
    "aggregator": ("aggregator.report.page.fetched",),
    "exporter": ("exporter.report.aggregated",),
    "notifier": ("notifier.report.exported", "notifier.report.failed", "notifier.alerts"),
}
ADMIN = "admin@example.com"


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
    processes: list[ServiceProcess] = field(default_factory=list)

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
            **self.extra_env,
        }

    def start(self, name: str, *args: str) -> ServiceProcess:
        process = ServiceProcess(name, self.env(), self.log_dir, args).start()
        self.processes.append(process)
        return process

    def start_all(self, timeout: float = 60) -> None:
        for name in PIPELINE_SERVICES:
            self.start(name)
        for name in PIPELINE_SERVICES:
            for queue in QUEUES_OF[name]:
                self.wait_for_consumer(queue, timeout)

    def wait_for_consumer(self, queue: str, timeout: float = 60) -> None:
        def consuming() -> bool:
            self.assert_alive()
            try:
                return int(self.broker.queue(self.vhost, queue).get("consumers", 0)) > 0
            except Exception:
                return False

        wait_until(consuming, timeout, f"a consumer on {queue}")

    def assert_alive(self) -> None:
        for process in self.processes:
            if process.process is not None and process.process.poll() is not None and not getattr(
                process, "stopped_on_purpose", False
            ):
                raise AssertionError(f"{process.name} exited:\n{process.output()[-4000:]}")

    def stop_all(self) -> None:
        for process in reversed(self.processes):
            process.stop()

    def logs(self) -> str:
        return "\n".join(f"==== {p.name}\n{p.output()[-3000:]}" for p in self.processes)
