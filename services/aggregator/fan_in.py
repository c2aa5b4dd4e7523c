"""Fan-in state in Redis: which pages of a report have arrived, shared by every aggregator replica."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import TypeAdapter

from shared.events import Repository

FAN_IN_TTL_SECONDS = 24 * 3600
# Pages go to and from Redis as JSON in one Rust pass each way, not item by item in Python.
_PAGE = TypeAdapter(list[Repository])

# Atomic across replicas: store the page once (and whether GitHub served it incomplete), and say
# whether the report is now complete.
_ADD_PAGE = """
local added = redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[4])
if added == 1 and ARGV[5] == '1' then
  redis.call('SADD', KEYS[2], ARGV[1])
end
redis.call('EXPIRE', KEYS[2], ARGV[4])
local count = redis.call('HLEN', KEYS[1])
if count >= tonumber(ARGV[3]) then
  return {added, count, redis.call('HGETALL', KEYS[1]), redis.call('SMEMBERS', KEYS[2])}
end
return {added, count, {}, {}}
"""


@dataclass(frozen=True)
class PageArrival:
    newly_stored: bool
    pages_stored: int
    complete_pages: dict[int, list[Repository]] | None
    incomplete_pages: tuple[int, ...] = ()  # of the complete report: pages GitHub served incomplete


class PageStore(Protocol):
    def add_page(
        self, report_id: str, page: int, pages: int, items: list[Repository], *, incomplete: bool = False
    ) -> PageArrival: ...


class RedisPageStore:
    """One Redis hash per report: page number -> its repositories as JSON."""

    def __init__(self, redis_client: Any, ttl_seconds: int = FAN_IN_TTL_SECONDS) -> None:
        self._redis = redis_client
        self._add_page = redis_client.register_script(_ADD_PAGE)
        self._ttl = ttl_seconds

    def add_page(
        self, report_id: str, page: int, pages: int, items: list[Repository], *, incomplete: bool = False
    ) -> PageArrival:
        payload = _PAGE.dump_json(items)
        added, count, flat, flagged = self._add_page(
            keys=[f"hotrepos:fan-in:{report_id}", f"hotrepos:fan-in-incomplete:{report_id}"],
            args=[page, payload, pages, self._ttl, "1" if incomplete else "0"],
        )
        complete = None
        if flat:
            pairs = dict(zip(flat[0::2], flat[1::2], strict=True))
            complete = {int(number): _PAGE.validate_json(body) for number, body in pairs.items()}
        return PageArrival(bool(added), int(count), complete, tuple(sorted(int(number) for number in flagged)))
