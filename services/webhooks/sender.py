"""The HTTP adapter of webhook deliveries: one POST, no redirect, a capped read, the URL guarded again
at the moment of connecting, and the metrics of every attempt."""

from __future__ import annotations

import datetime as dt
import email.utils
import socket
import ssl
import time
from collections.abc import Iterator
from typing import Any

import requests
import requests.adapters
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.util import connection as urllib3_connection

from services.webhooks.handlers import SendResult, WebhookRequest
from shared import metrics
from shared.webhooks import UrlGuard, UrlRefused

# The answer's body says nothing we act on: read this much, so the connection ends cleanly, then drop it.
MAX_ANSWER_BYTES = 64 * 1024
USER_AGENT = "hotrepos-webhooks/1"


class HttpWebhookSender:
    """POSTs deliveries with requests; a refused URL, a timeout or a failed connection is a result."""

    def __init__(self, guard: UrlGuard, timeout_seconds: float, *, max_answer_bytes: int = MAX_ANSWER_BYTES) -> None:
        self._guard = guard
        self._timeout = timeout_seconds
        self._max_answer_bytes = max_answer_bytes
        session = requests.Session()
        # No proxy, .netrc or CA bundle from the environment: the guard checks the address it connects to.
        session.trust_env = False
        guarded = GuardedAdapter(guard)
        session.mount("http://", guarded)
        session.mount("https://", guarded)
        self._session = session

    def send(self, request: WebhookRequest) -> SendResult:
        started = time.perf_counter()
        result = self._send(request)
        metrics.WEBHOOK_SECONDS.labels(format=request.format).observe(time.perf_counter() - started)
        metrics.WEBHOOK_DELIVERIES.labels(format=request.format, outcome=outcome_label(result)).inc()
        return result

    def _send(self, request: WebhookRequest) -> SendResult:
        try:
            self._guard.check_unresolved(request.url)
            response = self._session.post(
                request.url,
                data=request.body,
                headers={"User-Agent": USER_AGENT, **request.headers},
                timeout=(self._timeout, self._timeout),
                allow_redirects=False,
                stream=True,
            )
        except UrlRefused as exc:
            return SendResult("refused", error=f"URL refused: {exc}")
        except requests.exceptions.Timeout:
            return SendResult("timeout", error=f"no answer within {self._timeout:g}s")
        except requests.exceptions.RequestException as exc:
            return SendResult("connection-error", error=connection_problem(exc))
        with response:
            self._drain(response)
            return SendResult(
                "answered", response.status_code, retry_after=retry_after_seconds(response.headers.get("Retry-After"))
            )

    def _drain(self, response: requests.Response) -> None:
        read = 0
        try:
            for chunk in response.iter_content(8192):
                read += len(chunk)
                if read >= self._max_answer_bytes:
                    return
        except requests.exceptions.RequestException:
            return  # the status is the answer; a body cut short changes nothing

    def close(self) -> None:
        self._session.close()


def outcome_label(result: SendResult) -> str:
    """The metric's outcome: the answer's status class, or what kept it from coming."""
    if result.outcome == "answered" and result.status_code is not None:
        return f"{result.status_code // 100}xx"
    return result.outcome


def retry_after_seconds(value: str | None, now: dt.datetime | None = None) -> float | None:
    """Retry-After as seconds from now: delta-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, (when - (now or dt.datetime.now(dt.UTC))).total_seconds())


_PROBLEMS: tuple[tuple[type[BaseException], str], ...] = (
    (ConnectionRefusedError, "connection refused"),
    (ConnectionResetError, "connection reset"),
    (ConnectionAbortedError, "connection aborted"),
    (socket.gaierror, "the host does not resolve"),
    (NameResolutionError, "the host does not resolve"),
    (ssl.SSLCertVerificationError, "TLS certificate not trusted"),
    (ssl.SSLError, "TLS handshake failed"),
)


def connection_problem(exc: BaseException) -> str:
    """What kept a connection from answering, in words that never carry the URL."""
    causes = list(_causes(exc))
    for kind, words in _PROBLEMS:
        for cause in causes:
            if isinstance(cause, kind):
                detail = getattr(cause, "verify_message", None)
                return f"{words}: {detail}" if detail else words
    if any("RemoteDisconnected" in type(cause).__name__ for cause in causes):
        return "the connection closed without an answer"
    return f"connection failed ({type(causes[-1]).__name__})"


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """The exception, then what it wraps: its cause, context, arguments and urllib3's `reason`."""
    pending: list[BaseException] = [exc]
    seen: set[int] = set()
    while pending and len(seen) < 20:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        linked = [current.__cause__, current.__context__, getattr(current, "reason", None), *current.args]
        pending.extend(item for item in linked if isinstance(item, BaseException))


class GuardedAdapter(requests.adapters.HTTPAdapter):
    """An adapter whose connections resolve the host themselves and connect only to addresses the
    guard accepts, so that a name which resolves elsewhere since its check gains nothing."""

    def __init__(self, guard: UrlGuard) -> None:
        self._pool_classes = guarded_pool_classes(guard)
        super().__init__(max_retries=0)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = self._pool_classes


def guarded_pool_classes(guard: UrlGuard) -> dict[str, type[HTTPConnectionPool]]:
    def new_conn(connection: HTTPConnection) -> socket.socket:
        # What urllib3's own _new_conn does, with the addresses the guard returned in place of its lookup.
        try:
            addresses = guard.public_addresses(connection.host, connection.port)
        except socket.gaierror as exc:
            raise NameResolutionError(connection.host, connection, exc) from exc
        last_error: OSError | None = None
        for address in addresses:
            try:
                return urllib3_connection.create_connection(
                    (address, connection.port),
                    connection.timeout,
                    source_address=connection.source_address,
                    socket_options=connection.socket_options,
                )
            except TimeoutError as exc:
                raise ConnectTimeoutError(
                    connection, f"connecting to {connection.host} timed out after {connection.timeout}s"
                ) from exc
            except OSError as exc:
                last_error = exc
        raise NewConnectionError(connection, f"failed to connect: {last_error}") from last_error

    class GuardedHTTPConnection(HTTPConnection):
        def _new_conn(self) -> socket.socket:
            return new_conn(self)

    class GuardedHTTPSConnection(HTTPSConnection):
        def _new_conn(self) -> socket.socket:
            return new_conn(self)

    class GuardedHTTPConnectionPool(HTTPConnectionPool):
        ConnectionCls = GuardedHTTPConnection

    class GuardedHTTPSConnectionPool(HTTPSConnectionPool):
        ConnectionCls = GuardedHTTPSConnection

    return {"http": GuardedHTTPConnectionPool, "https": GuardedHTTPSConnectionPool}
