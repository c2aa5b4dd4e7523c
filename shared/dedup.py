"""Which events a queue has already handled, kept in Redis with a TTL."""

from __future__ import annotations

from typing import Any

PROCESSED_TTL_SECONDS = 7 * 24 * 3600


class RedisProcessedEvents:
    """Event ids handled per queue; a redelivery of one of them is acked without its effect."""

    def __init__(self, redis_client: Any, ttl_seconds: int = PROCESSED_TTL_SECONDS) -> None:
        self._redis = redis_client
        self._ttl = ttl_seconds

    def seen(self, queue: str, event_id: str) -> bool:
        return bool(self._redis.exists(self._key(queue, event_id)))

    def remember(self, queue: str, event_id: str) -> None:
        self._redis.set(self._key(queue, event_id), 1, ex=self._ttl)

    @staticmethod
    def _key(queue: str, event_id: str) -> str:
        return f"hotrepos:processed:{queue}:{event_id}"
