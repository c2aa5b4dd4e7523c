"""GATEWAY_REQUESTS_PER_HOUR: how many reports one identity may request in any hour, on every replica.

A sliding window, kept in Redis so that every replica counts the same requests: one sorted set per
identity holds the times of its requests within the last hour. A Lua script checks and records in
one step, so two replicas cannot both take the last place.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from typing import Any, Protocol

WINDOW_SECONDS = 3600

# KEYS[1]: the identity's window; ARGV: now (ms), window (ms), limit, the request's id.
# Answers 0 when the request is counted (or was already), else the milliseconds until the oldest one
# leaves the window.
_TAKE = """
local now, window, limit = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZSCORE', KEYS[1], ARGV[4]) then
  return 0
end
if redis.call('ZCARD', KEYS[1]) < limit then
  redis.call('ZADD', KEYS[1], now, ARGV[4])
  redis.call('PEXPIRE', KEYS[1], window)
  return 0
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return math.max(1, tonumber(oldest[2]) + window - now)
"""


class RequestQuota(Protocol):
    def take(self, identity: str, request_id: str) -> float | None:
        """None when the request may go ahead (and is counted), else the seconds until one may.

        Counted once per request_id: a retry of the same request takes no second place.
        """
        ...

    def give_back(self, identity: str, request_id: str) -> None:
        """The request was not placed after all (the broker did not answer): it does not count."""
        ...


class Unlimited:
    """GATEWAY_REQUESTS_PER_HOUR=0: no limit."""

    def take(self, identity: str, request_id: str) -> float | None:
        return None

    def give_back(self, identity: str, request_id: str) -> None:
        return None


class RedisRequestQuota:
    def __init__(self, redis_client: Any, per_hour: int, *, clock: Callable[[], float] = time.time) -> None:
        self._redis = redis_client
        self._take = redis_client.register_script(_TAKE)
        self._limit = per_hour
        self._clock = clock

    def take(self, identity: str, request_id: str) -> float | None:
        now_ms = int(self._clock() * 1000)
        wait_ms = int(
            self._take(keys=[_window_key(identity)], args=[now_ms, WINDOW_SECONDS * 1000, self._limit, request_id])
        )
        return None if wait_ms == 0 else math.ceil(wait_ms / 1000)

    def give_back(self, identity: str, request_id: str) -> None:
        self._redis.zrem(_window_key(identity), request_id)


def _window_key(identity: str) -> str:
    return "hotrepos:gateway:quota:" + hashlib.sha256(identity.encode()).hexdigest()
