"""Idempotency-Key records: a retried POST finds the report its first try asked for."""

from __future__ import annotations

import hashlib
from typing import Any, Protocol

from pydantic import BaseModel, ValidationError

IDEMPOTENCY_TTL_SECONDS = 24 * 3600


class IdempotentRequest(BaseModel):
    """What a key stands for; published stays False until the broker confirmed the request."""

    report_id: str
    request_hash: str
    published: bool = False


class IdempotencyKeys(Protocol):
    def claim(self, key: str, candidate: IdempotentRequest) -> IdempotentRequest:
        """The request this key already stands for, or the candidate if the key is new."""
        ...

    def mark_published(self, key: str, request: IdempotentRequest) -> None: ...


class RedisIdempotencyKeys:
    def __init__(self, redis_client: Any, *, ttl_seconds: int = IDEMPOTENCY_TTL_SECONDS) -> None:
        self._redis = redis_client
        self._ttl = ttl_seconds

    def claim(self, key: str, candidate: IdempotentRequest) -> IdempotentRequest:
        """The request this key already stands for, or the candidate if the key is new."""
        redis_key = self._key(key)
        if self._redis.set(redis_key, candidate.model_dump_json(), nx=True, ex=self._ttl):
            return candidate
        raw = self._redis.get(redis_key)
        if raw is None:  # expired in between: claim it again
            return self.claim(key, candidate)
        try:
            return IdempotentRequest.model_validate_json(raw)
        except ValidationError:
            self._redis.set(redis_key, candidate.model_dump_json(), ex=self._ttl)
            return candidate

    def mark_published(self, key: str, request: IdempotentRequest) -> None:
        published = request.model_copy(update={"published": True})
        self._redis.set(self._key(key), published.model_dump_json(), ex=self._ttl)

    @staticmethod
    def _key(key: str) -> str:
        # Hashed: the header is client input of any shape, a Redis key should not be.
        return "hotrepos:gateway:idempotency:" + hashlib.sha256(key.encode()).hexdigest()


class RecentOrders(Protocol):
    """Each identity's latest report per distinct order: an identical order joins it while in flight."""

    def last(self, owner: str, order_hash: str) -> str | None: ...

    def remember(self, owner: str, order_hash: str, report_id: str) -> None: ...


class RedisRecentOrders:
    def __init__(self, redis_client: Any, *, ttl_seconds: int = IDEMPOTENCY_TTL_SECONDS) -> None:
        self._redis = redis_client
        self._ttl = ttl_seconds

    def last(self, owner: str, order_hash: str) -> str | None:
        raw = self._redis.get(self._key(owner, order_hash))
        return raw.decode() if isinstance(raw, bytes) else raw

    def remember(self, owner: str, order_hash: str, report_id: str) -> None:
        self._redis.set(self._key(owner, order_hash), report_id, ex=self._ttl)

    @staticmethod
    def _key(owner: str, order_hash: str) -> str:
        return "hotrepos:gateway:last-order:" + hashlib.sha256(f"{owner}\0{order_hash}".encode()).hexdigest()
