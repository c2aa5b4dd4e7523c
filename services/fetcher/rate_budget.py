"""GitHub's search budget, spent by every fetcher replica together through one record in Redis."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

WINDOW_SECONDS = 60.0
# Our grant and GitHub's count happen at slightly different moments: a second of slack keeps two
# requests granted 60 s apart from landing 59.9 s apart at GitHub.
SAFETY_MARGIN_SECONDS = 1.0

# A rolling log of grants, not a refilling bucket: a bucket of size B refilled at L per minute lets
# B + L through in some minute, while GitHub counts at most L in any minute. Server time (TIME) so
# that replicas on hosts with skewed clocks share one clock.
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local blocked = tonumber(redis.call('GET', KEYS[2]) or '0')
if blocked > now then
  return blocked - now
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) < limit then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], window)
  return 0
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return math.max(1, tonumber(oldest[2]) + window - now)
"""

_BLOCK = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local wait = tonumber(ARGV[1])
if tonumber(redis.call('GET', KEYS[1]) or '0') < now + wait then
  redis.call('SET', KEYS[1], now + wait, 'PX', wait)
end
return 0
"""


@dataclass(frozen=True)
class Grant:
    """The outcome of asking for one request: a slot, or how long until one frees up."""

    slot: str | None
    wait_seconds: float


class RedisRequestBudget:
    """At most `limit_per_minute` requests in any rolling minute, however many replicas ask."""

    def __init__(self, redis_client: Any, limit_per_minute: int, scope: str) -> None:
        self.limit_per_minute = limit_per_minute
        self._redis = redis_client
        self._log_key = f"hotrepos:github:budget:{scope}"
        self._blocked_key = f"{self._log_key}:blocked"
        self._window_ms = int((WINDOW_SECONDS + SAFETY_MARGIN_SECONDS) * 1000)
        self._take = redis_client.register_script(_TAKE)
        self._block = redis_client.register_script(_BLOCK)

    def take(self) -> Grant:
        slot = uuid.uuid4().hex
        wait_ms = int(
            self._take(keys=[self._log_key, self._blocked_key], args=[self.limit_per_minute, self._window_ms, slot])
        )
        return Grant(slot, 0.0) if wait_ms == 0 else Grant(None, wait_ms / 1000)

    def refund(self, slot: str) -> None:
        """Give a slot back: the request it paid for did not count against GitHub's limit (a 304)."""
        self._redis.zrem(self._log_key, slot)

    def block_for(self, seconds: float) -> None:
        """GitHub said the budget is spent (someone else uses the token too): every replica waits."""
        self._block(keys=[self._blocked_key], args=[max(1, int(seconds * 1000))])
