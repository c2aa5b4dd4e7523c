"""Who is asking (GATEWAY_AUTH), and what they may see.

- `token`: `Authorization: Bearer <token>`, a token made by `hotrepos tokens create`, read from Redis on
  every request, so that a revoked one is refused at once by every replica.
- `proxy`: `X-Forwarded-User` (and `X-Forwarded-Email`, the default `notify`) as an authenticating proxy
  in front sets them, believed only from the addresses in GATEWAY_TRUSTED_PROXIES.
- `none`: the demo's; everyone is one anonymous admin, so it is allowed on a loopback address only.

A request without an identity gets a 401, logged with its reason; never with a header's value.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Literal, Protocol

import structlog
from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BeforeValidator, EmailStr, TypeAdapter, ValidationError
from pydantic_settings import NoDecode

from services.gateway.hardening import log_refusal
from shared.api_tokens import ApiToken, token_digest
from shared.ownership import is_scheduled_report
from shared.progress import ReportStatus

AuthMode = Literal["token", "proxy", "none"]
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
log = structlog.get_logger("hotrepos.gateway")
# A token check that takes longer is abandoned until the next sweep.
CHECK_TIMEOUT_SECONDS = 2.0

LOOPBACK_NAMES = frozenset({"localhost"})
PROXY_USER_HEADER = "X-Forwarded-User"
PROXY_EMAIL_HEADER = "X-Forwarded-Email"
_emails: TypeAdapter[str] = TypeAdapter(EmailStr)


@dataclass(frozen=True)
class Identity:
    """Who a request is from: the name its reports are recorded under, and whether it sees everything."""

    name: str
    admin: bool = False
    email: str | None = None  # the proxy's X-Forwarded-Email: where reports go unless the order says
    # The SHA-256 of the token it came with, to check again while a stream stays open; never the token.
    token_digest: str | None = None


ANONYMOUS = Identity(name="anonymous", admin=True)


class TokenLookup(Protocol):
    async def lookup_digest(self, digest: str) -> ApiToken | None: ...


def is_loopback(host: str) -> bool:
    """A listening address that only this machine reaches: 127.0.0.0/8, ::1 or localhost."""
    if host.strip().lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False  # a name other than localhost may resolve anywhere


def none_only_on_loopback(mode: AuthMode, host: str) -> AuthMode:
    """Raises ValueError when `none` would let anyone on the network read and cancel every report."""
    if mode == "none" and not is_loopback(host):
        raise ValueError(
            f"'none' lets anyone who reaches the gateway see, download and cancel every report, so it is "
            f"allowed only on a loopback address, and GATEWAY_HOST is {host!r}: use token or proxy, or "
            f"GATEWAY_HOST=127.0.0.1 for a demo"
        )
    return mode


def _network_list(value: object) -> object:
    if isinstance(value, str):
        return [ipaddress.ip_network(part.strip(), strict=False) for part in value.split(",") if part.strip()]
    return value


# A settings field: GATEWAY_TRUSTED_PROXIES=10.0.0.5,172.18.0.0/16 (addresses or networks, comma-separated).
TrustedProxies = Annotated[list[IpNetwork], NoDecode, BeforeValidator(_network_list)]


@dataclass(frozen=True)
class Authentication:
    """How the gateway finds out who is asking; the composition root builds it from the settings."""

    mode: AuthMode = "none"
    tokens: TokenLookup | None = None
    trusted_proxies: tuple[IpNetwork, ...] = ()

    async def still_valid(self, identity: Identity) -> bool:
        """False once the token the identity came with is revoked: an open stream then ends."""
        if identity.token_digest is None or self.tokens is None:
            return True
        record = await self.tokens.lookup_digest(identity.token_digest)
        return record is not None and not record.revoked


OPEN = Authentication()


class Wakeable(Protocol):
    def wake(self) -> None: ...


@dataclass(eq=False)
class TokenWatch:
    """One open stream's token: revoked turns true, and the stream is woken, once the token is revoked."""

    identity: Identity
    stream: Wakeable
    revoked: bool = False


class StreamTokens:
    """The tokens of the open streams, checked once a second each, whatever the number of streams.

    One task per process reads each token's record once a second and wakes the streams whose token
    was revoked: an idle stream costs nothing in between, and a thousand streams on one token cost
    the store one read a second, not a thousand.
    """

    def __init__(self, authentication: Authentication, every_seconds: float = 1.0) -> None:
        self._authentication = authentication
        self._every = every_seconds
        self._watches: dict[str, set[TokenWatch]] = {}
        self._checking: asyncio.Task[None] | None = None

    @contextlib.contextmanager
    def watching(self, identity: Identity, stream: Wakeable) -> Iterator[TokenWatch]:
        watch = TokenWatch(identity, stream)
        digest = identity.token_digest
        if digest is None:  # no token, nothing to revoke
            yield watch
            return
        self._watches.setdefault(digest, set()).add(watch)
        if self._checking is None or self._checking.done():
            self._checking = asyncio.ensure_future(self._check_every_second())
        try:
            yield watch
        finally:
            watches = self._watches.get(digest)
            if watches is not None:
                watches.discard(watch)
                if not watches:
                    del self._watches[digest]

    async def _check_every_second(self) -> None:
        while self._watches:
            await asyncio.sleep(self._every)
            failed: list[str] = []
            for watches in list(self._watches.values()):
                if not watches:
                    continue
                try:
                    # Bounded: a read stuck on a dead connection must not stop every later check.
                    async with asyncio.timeout(CHECK_TIMEOUT_SECONDS):
                        valid = await self._authentication.still_valid(next(iter(watches)).identity)
                except Exception as exc:  # the store down, or slow: retried at the next sweep
                    failed.append(repr(exc))
                    continue
                if not valid:
                    for watch in list(watches):
                        watch.revoked = True
                        watch.stream.wake()
            if failed:
                # The streams stay open meanwhile, as the store that would say otherwise does not answer.
                log.warning("stream_tokens.check_failed", tokens=len(failed), error=failed[0])

    async def close(self) -> None:
        if self._checking is not None:
            self._checking.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checking


def _refuse(request: Request, reason: str, *, bearer: bool, **details: object) -> HTTPException:
    log_refusal(request.scope, 401, reason, **details)
    headers = {"WWW-Authenticate": "Bearer"} if bearer else None
    return HTTPException(status_code=401, detail=f"not authenticated: {reason}", headers=headers)


async def _token_identity(
    tokens: TokenLookup | None, request: Request, credentials: HTTPAuthorizationCredentials | None
) -> Identity:
    if credentials is None:
        raise _refuse(request, "no bearer token", bearer=True)
    digest = token_digest(credentials.credentials)
    record = await tokens.lookup_digest(digest) if tokens is not None else None
    if record is None:
        raise _refuse(request, "unknown token", bearer=True)
    if record.revoked:
        raise _refuse(request, "revoked token", bearer=True, identity=record.name)
    return Identity(name=record.name, admin=record.admin, token_digest=digest)


def _proxy_identity(auth: Authentication, request: Request) -> Identity:
    client = request.client.host if request.client else None
    user = request.headers.get(PROXY_USER_HEADER, "").strip()
    if not _trusted(client, auth.trusted_proxies):
        # From anyone else the header is a claim anybody can make: ignored, never believed.
        reason = f"{PROXY_USER_HEADER} ignored from an untrusted address" if user else "no identity"
        raise _refuse(request, reason, bearer=False)
    if not user:
        raise _refuse(request, f"the proxy sent no {PROXY_USER_HEADER}", bearer=False)
    return Identity(name=user, admin=False, email=_email_or_none(request.headers.get(PROXY_EMAIL_HEADER)))


def _email_or_none(value: str | None) -> str | None:
    """The proxy's X-Forwarded-Email, if it is an address at all: a default notify must be one."""
    try:
        return _emails.validate_python(value.strip()) if value and value.strip() else None
    except ValidationError:
        return None


# auto_error off: the refusal is ours, a 401 with its reason logged, not HTTPBearer's 403. Declared
# whatever the mode, so that /docs always offers to send a token.
_bearer = HTTPBearer(auto_error=False, description="An API token, from `hotrepos tokens create NAME`")


async def current_identity(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Identity:
    """Who is asking, as the app's Authentication (create_app puts it in app.state) finds out; or a 401."""
    auth: Authentication = request.app.state.authentication
    if auth.mode == "none":
        return ANONYMOUS
    if auth.mode == "proxy":
        return _proxy_identity(auth, request)
    return await _token_identity(auth.tokens, request, credentials)


# What every API route takes its caller from.
Caller = Annotated[Identity, Depends(current_identity)]


def _trusted(client: str | None, proxies: tuple[IpNetwork, ...]) -> bool:
    if client is None:
        return False
    try:
        address = ipaddress.ip_address(client)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in proxies)


def may_see(identity: Identity, status: ReportStatus, owner: str | None) -> bool:
    """Its owner, an admin, or anyone for a scheduled report; to everyone else it does not exist."""
    return (
        identity.admin
        or owner == identity.name
        or (owner is None and is_scheduled_report(status.report_id, status.priority))
    )
