"""The local runner for machines without Docker: the same services, settings and replicas as compose.

    python -m infra.runner fetcher=3 aggregator=2 [--offline] [--mail-sink]

It starts each service as `python -m services.<name>`, restarts none (a crash is visible), prefixes
every output line with the process name, and stops everything on SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parents[1]

# name -> (module, arguments); beat runs exactly once, whatever the scale of the fetcher.
SERVICES: dict[str, tuple[str, tuple[str, ...]]] = {
    "fetcher": ("services.fetcher", ()),
    "fetcher-beat": ("services.fetcher", ("beat",)),
    "aggregator": ("services.aggregator", ()),
    "exporter": ("services.exporter", ()),
    "notifier": ("services.notifier", ()),
    "webhooks": ("services.webhooks", ()),
}
# The gateway listens on one GATEWAY_PORT, so one per machine (compose publishes one host port too).
SCALABLE = {"fetcher", "aggregator", "exporter", "notifier", "webhooks"}
OPTIONAL_SERVICES: dict[str, tuple[str, tuple[str, ...]]] = {"gateway": ("services.gateway", ())}


def parse_scale(items: Sequence[str]) -> dict[str, int]:
    scale: dict[str, int] = {}
    for item in items:
        name, _, count = item.partition("=")
        if name not in SCALABLE or not count.isdigit() or int(count) < 0:
            raise SystemExit(f"bad replica count {item!r}: expected one of {sorted(SCALABLE)}=N")
        scale[name] = int(count)
    return scale


def read_env_file(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    if not path.exists():
        return values
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip().strip('"').strip("'")
    return values


@dataclass
class Managed:
    name: str
    argv: list[str]
    env: Mapping[str, str]
    process: subprocess.Popen[bytes] | None = None
    pump: threading.Thread | None = None

    def start(self, out: IO[str]) -> None:
        self.process = subprocess.Popen(
            self.argv, cwd=ROOT, env=dict(self.env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        self.pump = threading.Thread(target=self._pump, args=(out,), daemon=True)
        self.pump.start()

    def _pump(self, out: IO[str]) -> None:
        assert self.process is not None and self.process.stdout is not None
        for raw in self.process.stdout:
            out.write(f"{self.name:<14} | {raw.decode(errors='replace')}")
            out.flush()


@dataclass
class Stack:
    """A set of service processes with their replicas."""

    env: Mapping[str, str]
    scale: Mapping[str, int]
    with_gateway: bool = False
    out: IO[str] = sys.stdout
    processes: list[Managed] = field(default_factory=list)
    # Per service (all its replicas): e.g. its own broker user's AMQP_URL, as compose gives each one.
    service_env: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    def plan(self) -> list[tuple[str, str, tuple[str, ...]]]:
        return [(name, module, args) for name, _, module, args in self._replicas()]

    def _replicas(self) -> list[tuple[str, str, str, tuple[str, ...]]]:
        services = dict(SERVICES)
        if self.with_gateway:
            services.update(OPTIONAL_SERVICES)
        replicas_planned = []
        for service, (module, args) in services.items():
            replicas = 1 if service == "fetcher-beat" else self.scale.get(service, 1)
            for index in range(1, replicas + 1):
                name = f"{service}-{index}" if replicas > 1 else service
                replicas_planned.append((name, service, module, args))
        return replicas_planned

    def start(self) -> None:
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}
        metrics_port = int(env.get("METRICS_PORT") or 0)
        for offset, (name, service, module, args) in enumerate(self._replicas()):
            replica_env = {**env, **self.service_env.get(service, {})}
            if metrics_port:
                # One machine, one port each: in compose every container has 9100 to itself.
                replica_env["METRICS_PORT"] = str(metrics_port + offset)
            managed = Managed(name, [sys.executable, "-m", module, *args], replica_env)
            managed.start(self.out)
            self.processes.append(managed)

    def exited(self) -> list[Managed]:
        return [p for p in self.processes if p.process is not None and p.process.poll() is not None]

    def stop(self, timeout: float = 20) -> None:
        for managed in self.processes:
            if managed.process is not None and managed.process.poll() is None:
                managed.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for managed in self.processes:
            if managed.process is None:
                continue
            try:
                managed.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                managed.process.kill()
                managed.process.wait(5)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m infra.runner", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("scale", nargs="*", help="replicas per service, e.g. fetcher=3 aggregator=2")
    parser.add_argument("--env-file", type=Path, default=ROOT / ".env")
    parser.add_argument("--offline", action="store_true", help="serve the bundled fake GitHub and use it")
    parser.add_argument("--mail-sink", action="store_true", help="run a local SMTP sink saving .eml files")
    parser.add_argument("--gateway", action="store_true", help="also run the web gateway")
    args = parser.parse_args(argv)

    env = read_env_file(args.env_file)
    helpers: list[Managed] = []
    if args.offline:
        port = env.get("FAKE_GITHUB_PORT", "9000")
        env["GITHUB_API_URL"] = f"http://127.0.0.1:{port}"
        helpers.append(
            Managed(
                "fake-github",
                [sys.executable, "-m", "tests.fake_github", "--port", port],
                {**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        )
    if args.mail_sink:
        env.setdefault("SMTP_HOST", "127.0.0.1")
        env.setdefault("SMTP_PORT", "1025")
        helpers.append(
            Managed(
                "mail-sink",
                [sys.executable, "-m", "infra.mail_sink", "--port", env["SMTP_PORT"]],
                {**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        )
    for helper in helpers:
        helper.start(sys.stdout)
    stack = Stack(env=env, scale=parse_scale(args.scale), with_gateway=args.gateway)
    stack.start()
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    while not stopped.wait(0.5):
        if crashed := stack.exited():
            print(f"runner: {', '.join(p.name for p in crashed)} exited; stopping the stack", file=sys.stderr)
            break
    stack.stop()
    for helper in helpers:
        if helper.process is not None:
            helper.process.terminate()
            helper.process.wait(10)
    return 1 if stack.exited() and not stopped.is_set() else 0


if __name__ == "__main__":
    sys.exit(main())
