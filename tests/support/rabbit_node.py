"""A throwaway RabbitMQ node of our own, on free loopback ports, that a test may stop and start.

Chaos tests restart the broker: they must never touch the shared one, so each gets a node with its
own name, ports, Erlang cookie, data and log directories, stopped with `rabbitmqctl stop`.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import string
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import requests

from tests.support.broker import Broker
from tests.support.smtp import free_port
from tests.support.waiting import eventually

USER = PASSWORD = "guest"


def _script(name: str) -> str:
    """The real RabbitMQ script, not a distribution's wrapper that switches user and log files."""
    sbin = os.environ.get("RABBITMQ_SBIN")
    if sbin:
        return str(Path(sbin) / name)
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin:/sbin")
    if found is None:
        raise FileNotFoundError(f"{name} is not installed (or set RABBITMQ_SBIN)")
    resolved = Path(found).resolve()
    if resolved.name == "rabbitmq-script-wrapper":
        # The wrapper runs the node as another user and writes the system node's startup log.
        resolved = (resolved.parent / name).resolve()
    return str(resolved)


def rabbitmq_available() -> bool:
    try:
        _script("rabbitmq-server")
        _script("rabbitmqctl")
    except FileNotFoundError:
        return False
    return True


class RabbitNode:
    """One RabbitMQ node with the management plugin; start(), stop() and restart() at will."""

    def __init__(self, root: Path, *, name_prefix: str = "hotrepos-chaos", cookie: str | None = None) -> None:
        self.root = root
        self.cookie = cookie or "".join(secrets.choice(string.ascii_uppercase) for _ in range(20))
        self.nodename = f"{name_prefix}-{uuid.uuid4().hex[:8]}@localhost"
        self.amqp_port = free_port()
        self.management_port = free_port()
        self.dist_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self._prepare()

    @property
    def broker(self) -> Broker:
        return Broker("127.0.0.1", self.amqp_port, USER, PASSWORD, f"http://127.0.0.1:{self.management_port}")

    @property
    def pid_file(self) -> Path:
        return self.root / "node.pid"

    def _prepare(self) -> None:
        home = self.root / "home"
        for directory in (home, self.root / "mnesia", self.root / "log"):
            directory.mkdir(parents=True, exist_ok=True)
        # The CLI authenticates to the node with the cookie in $HOME: a private one, shared by both.
        cookie = home / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text(self.cookie)
            cookie.chmod(0o400)
        (self.root / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.amqp_port}\n"
            f"management.tcp.ip = 127.0.0.1\n"
            f"management.tcp.port = {self.management_port}\n"
            # Fresher queue counts for tests that wait on them (the default is every 5 s).
            "collect_statistics_interval = 1000\n"
        )
        (self.root / "enabled_plugins").write_text("[rabbitmq_management].\n")
        # An empty env file, so the system node's settings (its node name above all) stay out.
        (self.root / "rabbitmq-env.conf").write_text("")

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "HOME": str(self.root / "home"),
            "RABBITMQ_NODENAME": self.nodename,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.amqp_port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.root / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.root / "log"),
            "RABBITMQ_CONFIG_FILE": str(self.root / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.root / "enabled_plugins"),
            "RABBITMQ_CONF_ENV_FILE": str(self.root / "rabbitmq-env.conf"),
            "RABBITMQ_PID_FILE": str(self.pid_file),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            # Erlang distribution on loopback only, like every other listener of the node.
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }

    def ctl(self, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [_script("rabbitmqctl"), "-n", self.nodename, *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 90) -> RabbitNode:
        if self.running:
            return self
        self.pid_file.unlink(missing_ok=True)
        with (self.root / "server.out").open("ab") as out:
            self.process = subprocess.Popen(
                [_script("rabbitmq-server")], env=self.env(), cwd=self.root, stdout=out, stderr=subprocess.STDOUT
            )
        self.starts += 1
        started = time.monotonic()
        waited = self.ctl("wait", str(self.pid_file), "--timeout", str(int(timeout)), timeout=timeout + 10)
        if waited.returncode != 0:
            self.stop()
            raise RuntimeError(f"RabbitMQ node {self.nodename} did not start: {waited.stderr}{self.tail()}")
        eventually(
            self._management_answers,
            timeout=max(0.0, timeout - (time.monotonic() - started)),
            message=lambda: f"the management API of {self.nodename} answering{self.tail()}",
            interval=0.2,
        )
        return self

    def _management_answers(self) -> bool:
        try:
            return (
                requests.get(f"{self.broker.management_url}/api/overview", auth=(USER, PASSWORD), timeout=5).status_code
                == 200
            )
        except requests.RequestException:
            return False

    def stop(self, timeout: float = 60) -> None:
        """A clean stop, as an operator does it; the node's data stays for the next start()."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.ctl("stop", str(self.pid_file), timeout=timeout)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._force_stop()
        self.process = None

    def _force_stop(self) -> None:
        # Only what this object started: the launcher process, then the VM whose pid it wrote.
        assert self.process is not None
        self.process.terminate()
        try:
            self.process.wait(20)
            return
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(self.pid_file.read_text().strip()), signal.SIGKILL)
        self.process.kill()
        self.process.wait(10)

    def kill(self) -> None:
        """The node lost at once, as in a crash: SIGKILL to the VM, no goodbye to its peers."""
        if not self.running:
            return
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(self.pid_file.read_text().strip()), signal.SIGKILL)
        assert self.process is not None
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self._force_stop()
        self.process = None

    def join(self, seed: RabbitNode) -> None:
        """Join the seed node's cluster (both nodes share one Erlang cookie)."""
        for args in (("stop_app",), ("join_cluster", seed.nodename), ("start_app",)):
            result = self.ctl(*args)
            if result.returncode != 0:
                raise RuntimeError(f"{' '.join(args)} on {self.nodename} failed: {result.stderr}{self.tail()}")

    def restart(self, down_seconds: float = 0.0) -> None:
        self.stop()
        time.sleep(down_seconds)
        self.start()

    def tail(self, chars: int = 3000) -> str:
        out = self.root / "server.out"
        return "\n" + out.read_text(errors="replace")[-chars:] if out.exists() else ""


@contextlib.contextmanager
def rabbit_cluster(root: Path, size: int = 3) -> Iterator[list[RabbitNode]]:
    """`size` nodes of our own clustered together; quorum queues get a member on each."""
    cookie = "".join(secrets.choice(string.ascii_uppercase) for _ in range(20))
    nodes = [RabbitNode(root / f"node{index}", cookie=cookie) for index in range(1, size + 1)]
    try:
        for node in nodes:
            node.start()
        for node in nodes[1:]:
            node.join(nodes[0])
        yield nodes
    finally:
        for node in reversed(nodes):
            node.stop()


@contextlib.contextmanager
def rabbit_node(root: Path) -> Iterator[RabbitNode]:
    node = RabbitNode(root)
    try:
        yield node.start()
    finally:
        node.stop()
