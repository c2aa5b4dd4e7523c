"""Fan-in state in Redis: which pages of a report have arrived, shared by every aggregator replica."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import TypeAdapter

from shared.events import Repository

FAN_IN_TTL_SECONDS = 24 * 3600
# Pages go to and from Redis as JSON in one Rust pass each way, not item by item in Python.
_PAGE = TypeAdapter(list[Repository])

# Atomic across replicas: store the page once, and say whether the report is now complete.
_ADD_PAGE = """
local added = redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[4])
local count = redis.call('HLEN', KEYS[1])
if count >= tonumber(ARGV[3]) then
  return {added, count, redis.call('HGETALL', KEYS[1])}
end
return {added, count, {}}
"""


@dataclass(frozen=True)
class PageArrival:
    newly_stored: bool
    pages_stored: int
    complete_pages: dict[int, list[Repository]] | None


class PageStore(Protocol):
    def add_page(self, report_id: str, page: int, pages: int, items: list[Repository]) -> PageArrival: ...


class RedisPageStore:
    """One Redis hash per report: page number -> its repositories as JSON."""

    def __init__(self, redis_client: Any, ttl_seconds: int = FAN_IN_TTL_SECONDS) -> None:
        self._redis = redis_client
        self._add_page = redis_client.register_script(_ADD_PAGE)
        self._ttl = ttl_seconds

    def add_page(self, report_id: str, page: int, pages: int, items: list[Repository]) -> PageArrival:
        payload = _PAGE.dump_json(items)
        added, count, flat = self._add_page(
            keys=[f"hotrepos:fan-in:{report_id}"], args=[page, payload, pages, self._ttl]
        )
        complete = None
        if flat:
            pairs = dict(zip(flat[0::2], flat[1::2], strict=True))
            complete = {int(number): _PAGE.validate_json(body) for number, body in pairs.items()}
        return PageArrival(bool(added), int(count), complete)
