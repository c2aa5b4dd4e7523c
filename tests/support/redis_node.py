"""A throwaway Redis of our own, persisted as compose runs it (append-only file), that a test may stop,
crash and start again on the same port and data: the shared Redis is never touched."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import redis

from tests.support.smtp import free_port
from tests.support.waiting import eventually


def redis_available() -> bool:
    return shutil.which("redis-server") is not None


class RedisNode:
    def __init__(self, root: Path, *, appendfsync: str = "everysec") -> None:
        self.root = root
        self.port = free_port()
        self.appendfsync = appendfsync
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        root.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisNode:
        if self.process is not None and self.process.poll() is None:
            return self
        with (self.root / "server.out").open("ab") as out:
            self.process = subprocess.Popen(
                [
                    "redis-server",
                    "--bind", "127.0.0.1",
                    "--port", str(self.port),
                    "--dir", str(self.root),
                    "--appendonly", "yes",
                    "--appendfsync", self.appendfsync,
                    "--save", "",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        self.starts += 1
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)
        eventually(lambda: self._answers(client), timeout=30, message=f"redis on {self.port} answering")
        return self

    @staticmethod
    def _answers(client: redis.Redis) -> bool:
        try:
            # A Redis still loading its append-only file answers LOADING: not ready yet.
            return bool(client.ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        """As an operator or compose stops it: SIGTERM, and Redis writes its file out before it exits."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)
        self.process = None

    def kill(self) -> None:
        """A crash: SIGKILL, whatever the last second of writes had not reached the disk yet."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None


@contextlib.contextmanager
def redis_node(root: Path, *, appendfsync: str = "everysec") -> Iterator[RedisNode]:
    node = RedisNode(root, appendfsync=appendfsync)
    try:
        yield node.start()
    finally:
        node.stop()
