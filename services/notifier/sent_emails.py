"""Which emails were already sent (so a redelivery sends none twice), and alert throttling, in Redis."""

from __future__ import annotations

from typing import Any, Protocol

SENT_TTL_SECONDS = 7 * 24 * 3600


class SentEmails(Protocol):
    def was_sent(self, key: str) -> bool: ...

    def mark_sent(self, key: str) -> None: ...

    def first_in_interval(self, fingerprint: str, interval_seconds: float) -> bool: ...


class RedisSentEmails:
    def __init__(self, redis_client: Any) -> None:
        self._redis = redis_client

    def was_sent(self, key: str) -> bool:
        return bool(self._redis.exists(f"hotrepos:email-sent:{key}"))

    def mark_sent(self, key: str) -> None:
        self._redis.set(f"hotrepos:email-sent:{key}", 1, ex=SENT_TTL_SECONDS)

    def first_in_interval(self, fingerprint: str, interval_seconds: float) -> bool:
        """True for the first alert of its kind in the interval, across every notifier replica."""
        key = f"hotrepos:alert-throttle:{fingerprint}"
        return bool(self._redis.set(key, 1, nx=True, px=max(1, int(interval_seconds * 1000))))
