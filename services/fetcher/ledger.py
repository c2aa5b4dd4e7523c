"""Report ids whose page fetches were already scheduled, in Redis."""

from __future__ import annotations

from typing import Any

LEDGER_TTL_SECONDS = 7 * 24 * 3600


class RedisRequestLedger:
    def __init__(self, redis_client: Any) -> None:
        self._redis = redis_client

    def already_scheduled(self, report_id: str) -> bool:
        return bool(self._redis.exists(f"hotrepos:fetcher:scheduled:{report_id}"))

    def mark_scheduled(self, report_id: str) -> None:
        self._redis.set(f"hotrepos:fetcher:scheduled:{report_id}", 1, ex=LEDGER_TTL_SECONDS)
