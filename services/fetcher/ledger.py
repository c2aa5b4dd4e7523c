"""Report ids whose page fetches were already scheduled, or are being fetched, in Redis."""

from __future__ import annotations

import uuid
from typing import Any

LEDGER_TTL_SECONDS = 7 * 24 * 3600

# A report already scheduled is never claimed again, whatever the order two deliveries get here in.
_CLAIM = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return nil
end
return redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2])
"""
# Only the claim's holder lets it go: one that outlived its claim must not end a newer holder's.
_RELEASE = """
if ARGV[2] == '1' then
  redis.call('SET', KEYS[1], 1, 'EX', ARGV[3])
end
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('DEL', KEYS[2])
end
return 1
"""


class RedisRequestLedger:
    def __init__(self, redis_client: Any, *, claim_seconds: float = 40.0) -> None:
        self._redis = redis_client
        self._claim_ms = int(claim_seconds * 1000)
        self._claim = redis_client.register_script(_CLAIM)
        self._release = redis_client.register_script(_RELEASE)

    def already_scheduled(self, report_id: str) -> bool:
        return bool(self._redis.exists(_scheduled(report_id)))

    def claim(self, report_id: str) -> str | None:
        # Expires on its own: a replica that dies holding it must not keep the report from being fetched.
        token = uuid.uuid4().hex
        claimed = self._claim(keys=[_scheduled(report_id), _fetching(report_id)], args=[token, self._claim_ms])
        return token if claimed else None

    def release(self, report_id: str, token: str) -> None:
        self._release(keys=[_scheduled(report_id), _fetching(report_id)], args=[token, "0", LEDGER_TTL_SECONDS])

    def mark_scheduled(self, report_id: str, token: str) -> None:
        self._release(keys=[_scheduled(report_id), _fetching(report_id)], args=[token, "1", LEDGER_TTL_SECONDS])


def _scheduled(report_id: str) -> str:
    return f"hotrepos:fetcher:scheduled:{report_id}"


def _fetching(report_id: str) -> str:
    return f"hotrepos:fetcher:fetching:{report_id}"
