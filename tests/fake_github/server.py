"""The HTTP layer and `FakeGitHub`, which runs it in a background thread."""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
from collections.abc import Iterable, Mapping
from datetime import date
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from .control import CONTROL_PREFIX, answer_control
from .dataset import DEFAULT_REPOSITORY_COUNT, DEFAULT_SEED
from .endpoint import ApiRequest, Reply, answer_api_request, bearer_token, json_reply
from .faults import FaultRule
from .responses import error_body
from .state import FakeState

POLL_INTERVAL_SECONDS = 0.05
STOP_JOIN_SECONDS = 5.0


class FakeGitHubHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server that can cut every open connection when stopping."""

    daemon_threads = True
    block_on_close = False
    # The default backlog of 5 makes a benchmark's connection bursts stall.
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], state: FakeState, verbose: bool = False) -> None:
        self.state = state
        self.verbose = verbose
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, GitHubRequestHandler)

    @property
    def base_url(self) -> str:
        """The URL clients reach this server at, e.g. "http://127.0.0.1:54321"."""
        host, port = self.server_address[:2]
        if isinstance(host, bytes):
            host = host.decode()
        return f"http://{host}:{port}"

    def track(self, connection: socket.socket) -> None:
        """Remember an open client connection."""
        with self._connections_lock:
            self._connections.add(connection)

    def untrack(self, connection: socket.socket) -> None:
        """Forget a closed client connection."""
        with self._connections_lock:
            self._connections.discard(connection)

    def close_connections(self) -> None:
        """Shut down every client connection so idle keep-alive threads end now."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Stay quiet about clients that hang up; report anything else."""
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


class GitHubRequestHandler(BaseHTTPRequestHandler):
    """Routes `/_fake/*` to the control API and everything else to the fake GitHub."""

    protocol_version = "HTTP/1.1"
    # Headers and body go out as separate writes; with Nagle on, small replies
    # on keep-alive connections wait ~40 ms for the client's delayed ACK.
    disable_nagle_algorithm = True
    server: FakeGitHubHTTPServer

    def version_string(self) -> str:
        """The `Server` header value GitHub sends."""
        return "github.com"

    def setup(self) -> None:
        """Track the connection so `stop()` can cut it."""
        super().setup()
        self.server.track(self.connection)

    def finish(self) -> None:
        """Untrack the connection."""
        try:
            super().finish()
        finally:
            self.server.untrack(self.connection)

    def do_GET(self) -> None:
        """Handle GET."""
        self._dispatch("GET")

    def do_POST(self) -> None:
        """Handle POST."""
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        """Handle DELETE."""
        self._dispatch("DELETE")

    def log_message(self, format: str, *args: Any) -> None:
        """Log only in verbose mode; a benchmark makes per-request logs noise."""
        if self.server.verbose:
            super().log_message(format, *args)

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        body = self._read_body()
        state = self.server.state
        if url.path.startswith(CONTROL_PREFIX):
            self._send(answer_control(state, method, url.path, url.query, body))
            return
        if method != "GET":
            self._send(json_reply(404, error_body("Not Found", 404)))
            return
        host = self.headers.get("Host")
        request = ApiRequest(
            path=url.path,
            params=tuple(parse_qsl(url.query, keep_blank_values=True)),
            client_ip=self.client_address[0],
            base_url=f"http://{host}" if host else self.server.base_url,
            token=bearer_token(self.headers.get("Authorization")),
            if_none_match=self.headers.get("If-None-Match"),
        )
        reply = answer_api_request(state, request)
        if reply is None:
            self.close_connection = True
            return
        # Count before sending so a client that reads stats right after sees it.
        state.stats.record_response(reply.status, reply.rate_limited)
        self._send(reply)

    def _send(self, reply: Reply) -> None:
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        if reply.status != 304:
            self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        if reply.body:
            self.wfile.write(reply.body)


class FakeGitHub:
    """A fake GitHub search API served from a daemon thread on 127.0.0.1."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        latency_ms: int = 0,
        rate_limit_per_minute: int | None = None,
        rate_limit_window_seconds: float = 60.0,
        seed: int = DEFAULT_SEED,
        today: date | None = None,
        repos: int = DEFAULT_REPOSITORY_COUNT,
        faults: Iterable[Mapping[str, Any]] = (),
        verbose: bool = False,
    ) -> None:
        self.state = FakeState(
            seed=seed,
            repository_count=repos,
            today=today,
            latency_ms=latency_ms,
            rate_limit_per_minute=rate_limit_per_minute,
            rate_limit_window_seconds=rate_limit_window_seconds,
            faults=faults,
        )
        self._address = (host, port)
        self._verbose = verbose
        self._server: FakeGitHubHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Base URL of the running server, e.g. "http://127.0.0.1:54321"."""
        if self._server is None:
            raise RuntimeError("FakeGitHub is not running; call start() first")
        return self._server.base_url

    @property
    def today(self) -> date:
        """The date the dataset counts back from."""
        return self.state.today

    def start(self) -> FakeGitHub:
        """Bind the port and serve in a daemon thread."""
        if self._server is not None:
            raise RuntimeError("FakeGitHub is already running")
        self.state.stopping.clear()
        self._server = FakeGitHubHTTPServer(self._address, self.state, self._verbose)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": POLL_INTERVAL_SECONDS},
            name=f"fake-github-{self._server.server_address[1]}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, waking sleeping handlers and cutting open connections."""
        server, thread = self._server, self._thread
        if server is None:
            return
        self.state.stopping.set()
        server.shutdown()
        server.close_connections()
        server.server_close()
        if thread is not None:
            thread.join(STOP_JOIN_SECONDS)
        self._server = self._thread = None

    def __enter__(self) -> FakeGitHub:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    def add_fault(self, kind: str, *, page: int | None = None, times: int | None = None, **options: Any) -> None:
        """Append a fault rule; options are the kind's fields (status, body, seconds, reset_in)."""
        self.state.faults.add(FaultRule.from_mapping({"kind": kind, "page": page, "times": times, **options}))

    def add_faults(self, rules: Iterable[Mapping[str, Any]]) -> None:
        """Append fault rules given in their JSON form."""
        for raw in rules:
            self.state.faults.add(FaultRule.from_mapping(raw))

    def clear_faults(self) -> None:
        """Remove all fault rules."""
        self.state.faults.clear()

    def faults(self) -> list[dict[str, Any]]:
        """Current fault rules with their remaining times."""
        return self.state.faults.snapshot()

    def set_latency(self, latency_ms: int) -> None:
        """Delay every API request by this many milliseconds."""
        self.state.set_latency(latency_ms)

    def set_rate_limit(self, per_minute: int | None) -> None:
        """Allow this many API requests per token/IP per rolling minute (None: unlimited)."""
        self.state.set_rate_limit(per_minute)

    def set_rate_limit_window(self, seconds: float) -> None:
        """Count the rate limit over this many seconds instead of a minute."""
        self.state.set_rate_limit_window(seconds)

    def set_today(self, today: date) -> None:
        """Regenerate the dataset relative to another date."""
        self.state.set_today(today)

    def reset(self) -> None:
        """Clear faults, counters and rate-limit windows (settings are kept)."""
        self.state.reset()

    def stats(self) -> dict[str, Any]:
        """Counters, the same JSON as `GET /_fake/stats`."""
        return self.state.stats.snapshot()

    def expected_items(self, since: date, pages: int = 5, per_page: int = 100) -> list[dict[str, Any]]:
        """Items an honest client gets from pages 1..pages without faults."""
        return self.state.expected_items(since, pages, per_page)
