"""Report ids whose page fetches were already scheduled, or are being fetched, in Redis."""

from __future__ import annotations

from typing import Any

LEDGER_TTL_SECONDS = 7 * 24 * 3600


class RedisRequestLedger:
    def __init__(self, redis_client: Any, *, claim_seconds: float = 40.0) -> None:
        self._redis = redis_client
        self._claim_ms = int(claim_seconds * 1000)

    def already_scheduled(self, report_id: str) -> bool:
        return bool(self._redis.exists(_scheduled(report_id)))

    def claim(self, report_id: str) -> bool:
        # Expires on its own: a replica that dies holding it must not keep the report from being fetched.
        return bool(self._redis.set(_fetching(report_id), 1, nx=True, px=self._claim_ms))

    def release(self, report_id: str) -> None:
        self._redis.delete(_fetching(report_id))

    def mark_scheduled(self, report_id: str) -> None:
        with self._redis.pipeline(transaction=True) as both:
            both.set(_scheduled(report_id), 1, ex=LEDGER_TTL_SECONDS)
            both.delete(_fetching(report_id))
            both.execute()


def _scheduled(report_id: str) -> str:
    return f"hotrepos:fetcher:scheduled:{report_id}"


def _fetching(report_id: str) -> str:
    return f"hotrepos:fetcher:fetching:{report_id}"
