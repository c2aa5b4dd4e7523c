"""What the gateway puts on every answer and holds every request to, whichever route it reaches.

- `SecurityHeaders`: one Content-Security-Policy and its companions on every answer, errors and streams too.
- `BodyLimit`: a body over the cap gets a 413 before any route reads or parses it.
- `RefusalLoggingCors`: CORS for the origins an operator listed (GATEWAY_CORS_ORIGINS), and for none by default.

Each refusal is logged with its reason; never with a header's value, so no token reaches the logs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Annotated
from urllib.parse import urlsplit

import structlog
from fastapi.responses import JSONResponse
from pydantic import AfterValidator, BeforeValidator
from pydantic_settings import NoDecode
from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = structlog.get_logger("hotrepos.gateway")

DEFAULT_MAX_BODY_BYTES = 64 * 1024

# The page, /docs and Swagger UI load only the gateway's own files and talk only to the gateway; nothing
# inline runs, no other site is reached, and no page of another site may frame these (clickjacking).
# data: images are the page's empty favicon and the icons inside Swagger UI's stylesheet.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
)
_SECURITY_HEADER_NAMES = frozenset(name for name, _ in SECURITY_HEADERS)

# What the API's clients send and read across origins; Authorization is for API tokens, never cookies,
# so credentials stay off and a cross-site page has nothing of the user's to ride on.
CORS_METHODS = ("GET", "POST", "DELETE")
CORS_REQUEST_HEADERS = ("Authorization", "Content-Type", "Idempotency-Key", "Last-Event-ID")
CORS_EXPOSED_HEADERS = ("Location", "Retry-After")
_UNSAFE_CHARACTERS = re.compile(r"[\x00-\x20\x7f]")


def log_refusal(scope: Scope, status: int, reason: str, **details: object) -> None:
    """One line per refused request: what and why, and never a header's value (tokens live there)."""
    client = scope.get("client")
    log.warning(
        "request.refused",
        status=status,
        reason=reason,
        method=scope.get("method"),
        path=scope.get("path"),  # without the query string, where a token could be
        client=client[0] if client else None,
        **details,
    )


class SecurityHeaders:
    """Sets the security headers on every answer: the page, the API, errors, streams, files and /docs."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                # One policy for the whole gateway: what a route set itself is replaced, not doubled.
                kept = [
                    (name, value)
                    for name, value in message.get("headers", ())
                    if name.lower() not in _SECURITY_HEADER_NAMES
                ]
                message = {**message, "headers": [*kept, *SECURITY_HEADERS]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class BodyLimit:
    """Refuses a request body over max_bytes with a 413, from its Content-Length or, without one, as it streams.

    A body within the cap is read here whole (it is small by definition) and handed on unchanged, so no
    route ever starts on a body that turns out too large halfway. The rest of a refused body is left to
    the server, which reads and drops it so that the client gets to read the 413.
    """

    def __init__(self, app: ASGIApp, max_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(scope, receive, send, f"Content-Length {declared} is over the limit")
            return

        read: list[Message] = []
        size = 0
        while True:
            message = await receive()
            read.append(message)
            if message["type"] != "http.request":
                break  # the client went away: the app hears of it as it would have
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                await self._refuse(scope, receive, send, f"body over the limit after {size} bytes")
                return
            if not message.get("more_body", False):
                break

        async def replay_then_receive() -> Message:
            return read.pop(0) if read else await receive()

        await self.app(scope, replay_then_receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, reason: str) -> None:
        log_refusal(scope, 413, reason, limit_bytes=self.max_bytes)
        response = JSONResponse(
            {"detail": f"request body too large: the limit is {self.max_bytes} bytes", "limit_bytes": self.max_bytes},
            status_code=413,
        )
        await response(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    value = Headers(scope=scope).get("content-length")
    return int(value) if value is not None and value.isdigit() else None


class RefusalLoggingCors(CORSMiddleware):
    """Starlette's CORS, for exactly the configured origins, logging each preflight it refuses."""

    def __init__(self, app: ASGIApp, origins: Iterable[str]) -> None:
        super().__init__(
            app,
            allow_origins=tuple(origins),
            allow_methods=CORS_METHODS,
            allow_headers=CORS_REQUEST_HEADERS,
            expose_headers=CORS_EXPOSED_HEADERS,
            allow_credentials=False,
        )

    # Starlette's own preflight check, repeated here because only here is the request's path at hand.
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = Headers(scope=scope) if scope["type"] == "http" else None
        if (
            headers is not None
            and scope["method"] == "OPTIONS"
            and "origin" in headers
            and "access-control-request-method" in headers
        ):
            response = self.preflight_response(request_headers=headers)
            if response.status_code >= 400:
                what = bytes(response.body).decode(errors="replace")
                log_refusal(scope, response.status_code, f"CORS preflight: {what}", origin=headers["origin"])
            await response(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def cors_origin(value: str) -> str:
    """An origin as browsers send it in `Origin`: scheme://host[:port], the port only if not the default.

    A wildcard is refused: reports are the users' own, and no site the operator did not name may read them.
    """
    text = value.strip()
    if _UNSAFE_CHARACTERS.search(text):
        raise ValueError(f"{text!r} is not an origin: it has a space or a control character")
    if text == "*":
        raise ValueError("'*' is not allowed: list each origin, like https://app.example.com")
    parts = urlsplit(text)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{text!r} is not an origin: it must look like https://host or https://host:port")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"{text!r} is not an origin: it must carry no user name or password")
    if parts.path not in ("", "/") or parts.query or parts.fragment or text.endswith(("?", "#")):
        raise ValueError(f"{text!r} is not an origin: it must have no path, query or fragment")
    if "*" in parts.hostname:
        raise ValueError(f"{text!r} is not an origin: wildcards are not allowed")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{text!r} is not an origin: its port is not a number from 0 to 65535") from None
    scheme = parts.scheme.lower()
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    default_port = {"http": 80, "https": 443}[scheme]
    return f"{scheme}://{host}" if port in (None, default_port) else f"{scheme}://{host}:{port}"


def _origin_list(value: object) -> object:
    if isinstance(value, str):
        return [part for part in value.split(",") if part.strip()]
    return value


def _checked_origins(origins: list[str]) -> list[str]:
    return list(dict.fromkeys(cors_origin(origin) for origin in origins))


# A settings field: GATEWAY_CORS_ORIGINS=https://app.example.com,http://localhost:3000 (empty: no CORS).
CorsOrigins = Annotated[list[str], NoDecode, BeforeValidator(_origin_list), AfterValidator(_checked_origins)]
