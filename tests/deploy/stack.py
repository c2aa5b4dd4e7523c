"""One compose stack of this project on a real Docker engine, under a project name and host ports of its own."""

from __future__ import annotations

import functools
import json
import os
import secrets
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests

from infra.rabbitmq.definitions import ADMIN, OPERATOR, VHOST, build_definitions, password_variable
from tests.support.smtp import free_port
from tests.support.waiting import eventually

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "hotrepos:local"
ENGINE_KIT = "../shared/containers/engine.sh up"
# Each published port's variable (compose.yaml), given a free port here so that nothing on the host collides.
HOST_PORT_VARIABLES = ("RABBITMQ_HOST_PORT", "RABBITMQ_MANAGEMENT_HOST_PORT", "GATEWAY_HOST_PORT", "MAILPIT_HOST_PORT")
# Ask compose for the images it does not build, never a registry.
UP = ("up", "--detach", "--pull", "never")


class EngineUnavailable(Exception):
    """No Docker engine or no Compose v2 here: the deploy tier cannot run, and says how to get one."""


def check_engine() -> str:
    """The engine's and Compose's versions, or EngineUnavailable saying why and what to do."""
    how = (
        f"start one with `{ENGINE_KIT}` from the project's root (a Docker engine, Compose v2 and local "
        "stand-ins for the public images), or run `scripts/test-deploy.sh`, which starts it, runs this tier and "
        "stops it"
    )
    if shutil.which("docker") is None:
        raise EngineUnavailable(f"the deploy tier needs a Docker engine, and there is no `docker` command: {how}")
    versions = []
    for asked in ("docker version --format {{.Server.Version}}", "docker compose version --short"):
        found = subprocess.run(asked.split(), capture_output=True, text=True, timeout=60)
        if found.returncode != 0:
            raise EngineUnavailable(
                f"the deploy tier needs a Docker engine with Compose v2, and `{asked}` failed "
                f"({(found.stderr or found.stdout).strip()[-300:]}): {how}"
            )
        versions.append(found.stdout.strip())
    return f"Docker {versions[0]}, Compose {versions[1]}"


@dataclass
class ComposeStack:
    """`docker compose` for this project, with an environment generated here: the user's .env is never read."""

    workdir: Path
    # The compose files, layered in this order (none: compose.yaml alone), and the profiles.
    files: tuple[str, ...] = ()
    profiles: tuple[str, ...] = ("offline",)
    # More of compose's variables, e.g. a setting the services read.
    variables: dict[str, str] = field(default_factory=dict)
    project: str = field(default_factory=lambda: f"hotrepos-deploy-{uuid.uuid4().hex[:8]}")
    ports: dict[str, int] = field(default_factory=lambda: {name: free_port() for name in HOST_PORT_VARIABLES})
    passwords: dict[str, str] = field(
        default_factory=lambda: {user["name"]: secrets.token_hex(24) for user in build_definitions()["users"]}
    )

    build_log: str = ""

    def __post_init__(self) -> None:
        self.env_file = self.workdir / "compose.env"
        lines = {
            "COMPOSE_PROJECT_NAME": self.project,
            "COMPOSE_PROFILES": ",".join(self.profiles),
            # Read by the cluster's nodes only (compose.cluster.yaml).
            "RABBITMQ_ERLANG_COOKIE": secrets.token_hex(32),
            "DOCKER_GITHUB_API_URL": "http://fake-github:9000",
            # The tests ask for more reports in an hour than a person would.
            "GATEWAY_REQUESTS_PER_HOUR": "0",
            **{password_variable(user): password for user, password in self.passwords.items()},
            **{name: str(port) for name, port in self.ports.items()},
            **self.variables,
        }
        self.env_file.write_text("".join(f"{name}={value}\n" for name, value in lines.items()))
        self.env_file.chmod(0o600)

    def compose(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
        # Only what docker itself needs from this environment: compose's variables come from the env file alone.
        env = {
            name: value for name, value in os.environ.items() if name in ("PATH", "HOME") or name.startswith("DOCKER_")
        }
        env["DOCKER_BUILDKIT"] = "0"  # the classic builder uses the engine's local base images and never pulls
        done = subprocess.run(
            [
                "docker",
                "compose",
                "--project-directory",
                str(ROOT),
                "--env-file",
                str(self.env_file),
                *(option for name in self.files for option in ("-f", name)),
                *args,
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"docker compose {' '.join(args)} exited {done.returncode}:\n{done.stderr[-4000:]}")
        return done

    def services(self) -> list[str]:
        """The services `up` starts: those of the active profiles, not the cli's or observability's."""
        return self.compose("config", "--services").stdout.split()

    def expected_containers(self, fetchers: int = 1) -> int:
        """Containers `up` starts: one per service, `deploy.replicas` for those that say (the beats)."""
        config = json.loads(self.compose("config", "--format", "json").stdout)
        replicas = {
            name: int((spec.get("deploy") or {}).get("replicas") or 1) for name, spec in config["services"].items()
        }
        return sum(replicas.values()) + fetchers - replicas.get("fetcher", 1)

    def containers(self) -> list[dict[str, Any]]:
        """Every container of the project, stopped ones too, as `docker compose ps` describes them."""
        out = self.compose("ps", "--all", "--format", "json").stdout.strip()
        if out.startswith("["):
            return list(json.loads(out))
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def unhealthy(self) -> list[str]:
        """What keeps the stack from being healthy: each long-running service healthy, the one-shot done."""
        waiting = []
        for container in self.containers():
            name, state, health = container["Name"], container["State"], container.get("Health", "")
            if container["Service"] == "rabbitmq-init":
                if state != "exited" or int(container.get("ExitCode", 1)) != 0:
                    waiting.append(f"{name}: {state}")
            elif state != "running" or health != "healthy":
                waiting.append(f"{name}: {state} {health}".strip())
        return waiting

    def wait_healthy(self, expected: int, timeout: float = 300) -> float:
        """Seconds until `expected` containers are there and every one is healthy (or done, for the one-shot)."""
        started = time.monotonic()
        waiting: list[str] = ["nothing listed yet"]

        def healthy() -> bool:
            containers = self.containers()
            waiting[:] = self.unhealthy()
            return len(containers) == expected and not waiting

        def still_waiting() -> str:
            logs = self.compose("logs", "--no-color", "--tail", "30", check=False).stdout[-6000:]
            return f"{expected} containers healthy; waiting for {waiting}\n{logs}"

        eventually(healthy, timeout=timeout, message=still_waiting, interval=1)
        return time.monotonic() - started

    def container_of(self, service: str, index: int = 1) -> str:
        names = [str(c["Name"]) for c in self.containers() if c["Service"] == service]
        return next(name for name in names if name.endswith(f"-{index}"))

    def inspect(self, container: str, template: str) -> str:
        return subprocess.run(
            ["docker", "inspect", "-f", template, container], capture_output=True, text=True, check=True, timeout=60
        ).stdout.strip()

    def set_github_latency(self, latency_ms: int) -> None:
        """The fake GitHub's own control API, from inside its container (its port is not published)."""
        self.compose(
            "exec",
            "-T",
            "fake-github",
            "python",
            "-c",
            "import sys, urllib.request; urllib.request.urlopen(urllib.request.Request("
            "'http://127.0.0.1:9000/_fake/config', data=sys.argv[1].encode(), method='POST'), timeout=10)",
            json.dumps({"latency_ms": latency_ms}),
        )

    @property
    def gateway(self) -> str:
        return f"http://127.0.0.1:{self.ports['GATEWAY_HOST_PORT']}"

    @functools.cached_property
    def api(self) -> requests.Session:
        """The gateway's API as an admin, with a token made the way the README says: inside the gateway."""
        made = self.compose(
            "exec", "-T", "gateway", "hotrepos", "tokens", "create", f"deploy-{uuid.uuid4().hex[:8]}", "--admin"
        )
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {made.stdout.splitlines()[-1]}"
        return session

    @property
    def mailpit(self) -> str:
        return f"http://127.0.0.1:{self.ports['MAILPIT_HOST_PORT']}"

    def management(self, path: str) -> Any:
        """The broker's management API, as admin."""
        response = requests.get(
            f"http://127.0.0.1:{self.ports['RABBITMQ_MANAGEMENT_HOST_PORT']}/api{path}",
            auth=(ADMIN, self.passwords[ADMIN]),
            timeout=30,
        )
        response.raise_for_status()
        return response.json()

    def amqp_url(self, user: str = OPERATOR) -> str:
        """What a person on this machine points the command line at: the published port, the stack's vhost."""
        return (
            f"amqp://{user}:{quote(self.passwords[user], safe='')}@127.0.0.1:{self.ports['RABBITMQ_HOST_PORT']}/{VHOST}"
        )
