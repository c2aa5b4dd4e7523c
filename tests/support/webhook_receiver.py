"""A real webhook receiver on loopback: each path answers from a script of its own, and every request to
a path with a secret is verified with the `standardwebhooks` package, as a subscriber would."""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from tests.support.waiting import eventually


@dataclass(frozen=True)
class Answer:
    status: int = 200
    delay: float = 0.0  # seconds before answering: longer than the sender's timeout makes it time out
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b"ok"


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes
    at: float
    answered: int
    # None where the path has no secret (a slack subscription); else True or why it failed.
    verified: bool | str | None
    # The sender had closed the connection by the time the answer was ready: it timed out.
    sender_left: bool = False

    @property
    def webhook_id(self) -> str | None:
        return self.headers.get("webhook-id")


@dataclass
class _Path:
    secret: str | None
    answers: list[Answer]
    then: Answer
    received: list[Received] = field(default_factory=list)


class WebhookReceiver:
    """ThreadingHTTPServer on 127.0.0.1, a free port; a path is a subscriber, scripted by expect()."""

    def __init__(self) -> None:
        self._paths: dict[str, _Path] = {}
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                receiver._handle(self)

            def do_GET(self) -> None:
                receiver._handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                return  # quiet: the tests read what was received, not access logs

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def new_path(
        self,
        *answers: Answer,
        secret: str | None = None,
        then: Answer | None = None,
        name: str = "hook",
        path: str | None = None,
    ) -> str:
        """A path of its own (or the one given), answering `answers` in turn, then `then` (200 by default)."""
        path = path or f"/{name}/{uuid.uuid4().hex[:12]}"
        with self._lock:
            self._paths[path] = _Path(secret, list(answers), then or Answer())
        return path

    def set_secret(self, path: str, secret: str | None) -> None:
        """The secret the path verifies with: known once the subscription is registered."""
        with self._lock:
            self._paths[path].secret = secret

    def received(self, path: str) -> list[Received]:
        with self._lock:
            return list(self._paths[path].received)

    def wait_for(self, path: str, count: int, timeout: float = 60) -> list[Received]:
        """The first `count` requests to a path, once they have all arrived."""

        def arrived() -> list[Received] | None:
            got = self.received(path)
            return got[:count] if len(got) >= count else None

        return eventually(
            arrived,
            timeout=timeout,
            message=lambda: f"{count} request(s) to {path}; got {len(self.received(path))}",
            interval=0.05,
        )

    def _handle(self, request: BaseHTTPRequestHandler) -> None:
        length = int(request.headers.get("Content-Length") or 0)
        body = request.rfile.read(length) if length else b""
        headers = {name.lower(): value for name, value in request.headers.items()}
        with self._lock:
            scripted = self._paths.get(request.path)
            if scripted is None:
                answer, secret = Answer(404), None
            else:
                answer = scripted.answers.pop(0) if scripted.answers else scripted.then
                secret = scripted.secret
        arrived = time.time()
        if answer.delay:
            time.sleep(answer.delay)
        received = Received(
            request.path,
            headers,
            body,
            arrived,
            answer.status,
            _verify(secret, body, headers),
            sender_left=_peer_closed(request.connection),
        )
        if scripted is not None:
            with self._lock:
                scripted.received.append(received)
        with contextlib.suppress(OSError):
            request.send_response(answer.status)
            for name, value in answer.headers.items():
                request.send_header(name, value)
            request.send_header("Content-Length", str(len(answer.body)))
            request.end_headers()
            request.wfile.write(answer.body)


def _verify(secret: str | None, body: bytes, headers: dict[str, str]) -> bool | str | None:
    if secret is None:
        return None
    try:
        Webhook(secret).verify(body, headers)
    except (WebhookVerificationError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return True


def _peer_closed(connection: socket.socket) -> bool:
    """The other end has closed: the socket reads as ready, with nothing to read."""
    try:
        readable, _, _ = select.select([connection], [], [], 0)
        return bool(readable) and connection.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True
