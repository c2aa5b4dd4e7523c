"""Which emails were sent or are being sent (so none goes twice), and alert throttling, in Redis."""

from __future__ import annotations

from typing import Any, Protocol

SENT_TTL_SECONDS = 7 * 24 * 3600
# Longer than one SMTP conversation: a replica that died mid-send frees the email after this.
SENDING_LEASE_SECONDS = 60


class SentEmails(Protocol):
    def was_sent(self, key: str) -> bool: ...

    def start_sending(self, key: str) -> bool: ...

    def mark_sent(self, key: str) -> None: ...

    def abandon(self, key: str) -> None: ...

    def first_in_interval(self, fingerprint: str, interval_seconds: float, token: str) -> bool: ...


class RedisSentEmails:
    def __init__(self, redis_client: Any) -> None:
        self._redis = redis_client

    def was_sent(self, key: str) -> bool:
        return bool(self._redis.exists(f"hotrepos:email-sent:{key}"))

    def start_sending(self, key: str) -> bool:
        """A lease on one email: two replicas holding copies of one event never both send it."""
        return bool(self._redis.set(f"hotrepos:email-sending:{key}", 1, nx=True, ex=SENDING_LEASE_SECONDS))

    def mark_sent(self, key: str) -> None:
        self._redis.set(f"hotrepos:email-sent:{key}", 1, ex=SENT_TTL_SECONDS)
        self._redis.delete(f"hotrepos:email-sending:{key}")

    def abandon(self, key: str) -> None:
        self._redis.delete(f"hotrepos:email-sending:{key}")

    def first_in_interval(self, fingerprint: str, interval_seconds: float, token: str) -> bool:
        """True for the first alert of its kind in the interval across replicas, and for its retries."""
        key = f"hotrepos:alert-throttle:{fingerprint}"
        if self._redis.set(key, token, nx=True, px=max(1, int(interval_seconds * 1000))):
            return True
        holder = self._redis.get(key)
        return (holder.decode() if isinstance(holder, bytes) else holder) == token
