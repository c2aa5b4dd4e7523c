"""The metrics port: /metrics for Prometheus, /healthz and /readyz for whoever runs the service."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import redis
import structlog
from kombu.connection import Connection
from prometheus_client import REGISTRY
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import CollectorRegistry

from shared.settings import CommonSettings

log = structlog.get_logger("hotrepos.observability")

CHECK_TIMEOUT_SECONDS = 2.0
PATHS = ("/metrics", "/healthz", "/readyz")

Check = Callable[[], object]  # raises when its dependency does not answer


def broker_check(connection: Connection, timeout: float = CHECK_TIMEOUT_SECONDS) -> Check:
    """Opens and closes a connection of its own, so a probe never disturbs the consumer's."""

    def check() -> None:
        probe = connection.clone(connect_timeout=timeout, heartbeat=0)
        try:
            probe.connect()
        finally:
            probe.release()

    return check


def redis_check(url: str, timeout: float = CHECK_TIMEOUT_SECONDS) -> Check:
    client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    return client.ping


class Readiness:
    """Runs every check on demand, and answers within a deadline even if a check hangs."""

    def __init__(self, checks: Mapping[str, Check], timeout: float = CHECK_TIMEOUT_SECONDS + 1) -> None:
        self.checks = dict(checks)
        self.timeout = timeout
        self._executor = ThreadPoolExecutor(max_workers=max(1, len(self.checks)), thread_name_prefix="readyz")
        self._running: dict[str, Future[object]] = {}
        self._lock = threading.Lock()

    def probe(self) -> dict[str, str]:
        """Each check's name -> "ok" or why it failed."""
        with self._lock:
            futures = {}
            for name, check in self.checks.items():
                future = self._running.get(name)
                # A check still hanging from an earlier probe is waited on, not started again:
                # a dead dependency then costs one thread, not one per probe.
                if future is None or future.done():
                    future = self._executor.submit(check)
                    self._running[name] = future
                futures[name] = future
        deadline = time.monotonic() + self.timeout
        results = {}
        for name, future in futures.items():
            try:
                future.result(timeout=max(0.0, deadline - time.monotonic()))
                results[name] = "ok"
            except Exception as exc:
                if future.done():
                    results[name] = f"{type(exc).__name__}: {exc}"[:300]
                else:
                    results[name] = f"no answer within {self.timeout:g}s"
        return results


class ObservabilityServer:
    """A small HTTP server on a daemon thread; it lives as long as the process."""

    def __init__(
        self,
        port: int,
        readiness: Readiness,
        *,
        host: str = "0.0.0.0",
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        self.readiness = readiness
        self.registry = registry
        self._server = ThreadingHTTPServer((host, port), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics-port", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> ObservabilityServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler_for(owner: ObservabilityServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = urlsplit(self.path).path
            if path == "/metrics":
                encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
                self._reply(200, encoder(owner.registry), content_type)
            elif path == "/healthz":
                self._reply_json(200, {"status": "ok"})
            elif path == "/readyz":
                checks = owner.readiness.probe()
                ready = all(result == "ok" for result in checks.values())
                self._reply_json(200 if ready else 503, {"ready": ready, "checks": checks})
            else:
                self._reply_json(404, {"error": f"no such path {path}", "paths": list(PATHS)})

        def _reply_json(self, status: int, body: object) -> None:
            self._reply(status, json.dumps(body).encode(), "application/json")

        def _reply(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # a scrape every few seconds would drown the service's own lines

    return Handler


def start_observability(settings: CommonSettings, connection: Connection) -> ObservabilityServer | None:
    """Serve the metrics port when METRICS_PORT is set: ready means the broker and Redis answer."""
    if not settings.metrics_port:
        return None
    readiness = Readiness({"broker": broker_check(connection), "redis": redis_check(settings.redis_url)})
    try:
        server = ObservabilityServer(settings.metrics_port, readiness).start()
    except OSError as exc:
        raise SystemExit(f"hotrepos: invalid setting METRICS_PORT: cannot listen on it: {exc}") from None
    log.info("metrics.serving", port=server.port, paths=list(PATHS))
    return server
