"""Search pages shared by every fetcher replica through Redis: a short-lived cache, one fetch per page
in flight, and each page's ETag kept for conditional requests."""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from shared.events import Repository

# A page is served as is while fresh, then kept this long so that asking GitHub again costs a
# conditional request, which a 304 answers without spending the search budget.
RETAIN_SECONDS = 3600.0
# Longer than a request can take (connect and read timeouts): a crashed leader frees its page by then.
LEAD_SECONDS = 40.0
POLL_FIRST_SECONDS = 0.01
POLL_MAX_SECONDS = 0.1

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class _StoredPage(BaseModel):
    etag: str | None
    total_count: int
    items: list[Repository]


@dataclass(frozen=True)
class CachedPage:
    items: list[Repository]
    total_count: int
    etag: str | None
    fresh: bool


def github_scope(api_url: str, token: str | None) -> str:
    """Whose view of GitHub a page is (answers vary with the token); the token itself is never stored."""
    return hashlib.sha256(f"{api_url}\n{token or ''}".encode()).hexdigest()[:16]


class RedisPageCache:
    def __init__(
        self,
        redis_client: Any,
        fresh_seconds: float,
        *,
        retain_seconds: float = RETAIN_SECONDS,
        lead_seconds: float = LEAD_SECONDS,
    ) -> None:
        self.fresh_seconds = fresh_seconds
        self._redis = redis_client
        self._retain_ms = int(max(retain_seconds, fresh_seconds) * 1000)
        self._fresh_ms = int(fresh_seconds * 1000)
        self._lead_ms = int(lead_seconds * 1000)
        self._release = redis_client.register_script(_RELEASE)

    def key(self, scope: str, params: Mapping[str, str]) -> str:
        query = "&".join(f"{name}={params[name]}" for name in sorted(params))
        return f"hotrepos:github:page:{scope}:{hashlib.sha256(query.encode()).hexdigest()[:32]}"

    def get(self, key: str) -> CachedPage | None:
        pipe = self._redis.pipeline(transaction=False)
        pipe.get(key)
        pipe.pttl(key)
        body, ttl_ms = pipe.execute()
        if body is None:
            return None
        stored = _StoredPage.model_validate_json(body)
        # Age from the remaining TTL, the server's clock: replicas with skewed clocks agree.
        fresh = self._retain_ms - int(ttl_ms) < self._fresh_ms
        return CachedPage(stored.items, stored.total_count, stored.etag, fresh)

    def put(self, key: str, items: list[Repository], total_count: int, etag: str | None) -> None:
        body = _StoredPage(etag=etag, total_count=total_count, items=items).model_dump_json()
        self._redis.set(key, body, px=self._retain_ms)

    def refresh(self, key: str) -> bool:
        """GitHub confirmed the page (304): fresh again for another period."""
        return bool(self._redis.pexpire(key, self._retain_ms))

    def lead(self, key: str) -> str | None:
        """Become the one fetcher of this page right now; None if another already is."""
        token = uuid.uuid4().hex
        return token if self._redis.set(f"{key}:lead", token, nx=True, px=self._lead_ms) else None

    def release(self, key: str, token: str) -> None:
        self._release(keys=[f"{key}:lead"], args=[token])

    def wait(self, key: str) -> CachedPage | None:
        """Wait for the leader's answer: the fresh page, or None once nobody leads (it failed)."""
        delay = POLL_FIRST_SECONDS
        deadline = time.monotonic() + self._lead_ms / 1000
        while time.monotonic() < deadline:
            time.sleep(delay)
            delay = min(delay * 2, POLL_MAX_SECONDS)
            cached = self.get(key)
            if cached is not None and cached.fresh:
                return cached
            if not self._redis.exists(f"{key}:lead"):
                return None
        return None
