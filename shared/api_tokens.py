"""API tokens: created and revoked by `hotrepos tokens`, checked by the gateway on every request.

Only a token's SHA-256 is stored, in Redis (append-only in compose, so tokens survive a restart). A
token is 32 random bytes, far beyond guessing, so a fast hash is enough: a slow one (bcrypt, argon2)
protects guessable passwords, and would only slow every request down. Nothing is cached: the gateway
reads the record on each request, so a revoked token stops working at once, on every replica.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets
from typing import Any

from pydantic import BaseModel, ConfigDict

from shared.stored import decode_stored

TOKEN_PREFIX = "hr_"
TOKEN_BYTES = 32
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}")
# Every token ever made, revoked ones too, by digest: a revoked token is refused as revoked, by name.
_TOKENS_KEY = "hotrepos:auth:tokens"
# The digest of each name's live token: one live token per name.
_NAMES_KEY = "hotrepos:auth:token-names"


class TokenNameTaken(ValueError):
    """A live token already has that name."""


class ApiToken(BaseModel):
    """What a token stands for; never the token itself."""

    model_config = ConfigDict(frozen=True)

    name: str
    admin: bool = False
    created_at: dt.datetime
    revoked_at: dt.datetime | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_name(name: str) -> str:
    """A token's name: what the logs and the reports' owners show. Raises ValueError."""
    if not NAME_PATTERN.fullmatch(name):
        raise ValueError(
            f"{name!r} is not a token name: 1 to 64 letters, digits and . _ @ + -, starting with a letter or digit"
        )
    return name


class RedisTokenLookup:
    """The records read on asyncio, for the gateway: a request waits on Redis without taking a thread."""

    def __init__(self, redis_client: Any) -> None:
        self._redis = redis_client

    async def lookup_digest(self, digest: str) -> ApiToken | None:
        return decode_stored(ApiToken, await self._redis.hget(_TOKENS_KEY, digest))


class RedisApiTokens:
    """The tokens in two Redis hashes: records by digest, and each name's live digest."""

    def __init__(self, redis_client: Any) -> None:
        self._redis = redis_client

    def create(self, name: str, *, admin: bool, now: dt.datetime | None = None) -> str:
        """A new token for that name, returned once and never stored. Raises TokenNameTaken."""
        check_name(name)
        token = TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)
        digest = token_digest(token)
        # The name is claimed first and atomically: two concurrent creates cannot both win it.
        if not self._redis.hsetnx(_NAMES_KEY, name, digest):
            raise TokenNameTaken(f"a token named {name!r} exists: revoke it first, or pick another name")
        record = ApiToken(name=name, admin=admin, created_at=now or dt.datetime.now(dt.UTC))
        self._redis.hset(_TOKENS_KEY, digest, record.model_dump_json())
        return token

    def lookup(self, token: str) -> ApiToken | None:
        """The token's record, revoked or not; None for a token never made here."""
        return self.lookup_digest(token_digest(token))

    def lookup_digest(self, digest: str) -> ApiToken | None:
        return decode_stored(ApiToken, self._redis.hget(_TOKENS_KEY, digest))

    def live(self) -> list[ApiToken]:
        """Every token not revoked, by name."""
        digests = self._redis.hvals(_NAMES_KEY)
        if not digests:
            return []
        found = (decode_stored(ApiToken, raw) for raw in self._redis.hmget(_TOKENS_KEY, digests))
        return sorted((t for t in found if t is not None and not t.revoked), key=lambda t: t.name)

    def revoke(self, name: str, *, now: dt.datetime | None = None) -> bool:
        """False when no live token has that name. The record stays, marked revoked, so that a request
        still carrying the token is refused as revoked, and the name is free for a new token."""
        digest = self._redis.hget(_NAMES_KEY, name)
        if digest is None:
            return False
        record = decode_stored(ApiToken, self._redis.hget(_TOKENS_KEY, digest))
        if record is not None:
            revoked = record.model_copy(update={"revoked_at": now or dt.datetime.now(dt.UTC)})
            self._redis.hset(_TOKENS_KEY, digest, revoked.model_dump_json())
        self._redis.hdel(_NAMES_KEY, name)
        return True
