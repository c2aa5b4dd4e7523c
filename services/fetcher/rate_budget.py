"""GitHub's search budget, spent by every fetcher replica together, in priority order, through Redis.

Two records in Redis, shared by every replica of every fetcher:
- the log of grants: at most `limit` requests in any window of `window_seconds`, as GitHub counts;
- the line: every page that asked for budget and did not get it yet, ordered by its report's priority,
  then by the time its report arrived. A page is granted only when every page ahead of it in the line
  can be granted too, so a page that arrives later never takes the budget from one that waits.

A waiting page keeps its place in the line while its task sits in the broker's delay queues, holding no
thread and no prefetch slot; its lease says how soon it promised to come back, and a page that never
does (its task was lost) is dropped from the head of the line instead of blocking it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from services.fetcher.search import BudgetTicket, ticket_id
from shared.events import PAGES_PER_REPORT, PRIORITIES
from shared.handling import Cancellations

WINDOW_SECONDS = 60.0
# Our grant and GitHub's count happen at slightly different moments (one request's way there): a
# little slack keeps two requests granted one window apart from landing just inside one at GitHub.
# A request may leave a busy fetcher a few hundred milliseconds after its grant, so never less than a
# quarter of a second, whatever the window.
MAX_SAFETY_MARGIN_SECONDS = 1.0
MIN_SAFETY_MARGIN_SECONDS = 0.25
SAFETY_MARGIN_SHARE = 0.02
# A waiting page that has not come back this long after its turn is taken to be lost.
LEASE_GRACE_SECONDS = 30.0
# How long a granted request may hold back lower priorities if it never says it finished.
DEFAULT_HOLD_SECONDS = 40.0
# A cancelled report's pages may still be on their way for this long (a retry in the delay levels).
WITHDRAWN_SECONDS = 24 * 3600
# Within one priority, pages are ordered by the millisecond their report arrived.
_PRIORITY_SPAN = 10**13
_RANK = {priority: rank for rank, priority in enumerate(PRIORITIES)}

# The shared part of every script: the time (the server's, so replicas with skewed clocks share one
# clock), and how a ticket leaves the line, keeping the per-report line in step.
_COMMON = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function report_of(ticket)
  return string.match(ticket, '^(.*:)[^:]*$')
end
-- The line's keys outlive any lease, and go when nobody has asked for a day.
local function keep_line()
  for i = 1, 4 do redis.call('PEXPIRE', KEYS[i], 86400000) end
end
local function leave(ticket)
  if redis.call('ZREM', KEYS[1], ticket) == 1 then
    redis.call('HDEL', KEYS[2], ticket)
    local report = report_of(ticket)
    if redis.call('HINCRBY', KEYS[4], report, -1) <= 0 then
      redis.call('HDEL', KEYS[4], report)
      redis.call('ZREM', KEYS[3], report)
    end
  end
end
"""

# KEYS: line, leases, reports, tickets per report, log, blocked, in flight, the report's withdrawal
# ARGV: limit, window ms, ticket, score, slot, hold ms, grace ms
_TAKE = (
    _COMMON
    + """
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local ticket, score, slot = ARGV[3], tonumber(ARGV[4]), ARGV[5]
local hold, grace = tonumber(ARGV[6]), tonumber(ARGV[7])
local rank_of_class = function(s) return math.floor(s / 1e13) end
local report = report_of(ticket)
-- A cancelled report's page asking again (it was already on its way) does not take a place back.
if redis.call('EXISTS', KEYS[8]) == 1 then
  return {'', 1000, 0, 1000, 0}
end

-- Pages whose task never came back leave the head of the line, so that they cannot block it.
for _, head in ipairs(redis.call('ZRANGE', KEYS[1], 0, limit - 1)) do
  if head ~= ticket and tonumber(redis.call('HGET', KEYS[2], head) or '0') < now then
    leave(head)
  end
end
-- Join the line, or keep the place already held.
if redis.call('ZADD', KEYS[1], 'NX', score, ticket) == 1 then
  redis.call('ZADD', KEYS[3], 'NX', score, report)
  redis.call('HINCRBY', KEYS[4], report, 1)
end
keep_line()
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now - window)
redis.call('ZREMRANGEBYSCORE', KEYS[7], '-inf', now)
local blocked = tonumber(redis.call('GET', KEYS[6]) or '0')
local free = limit - redis.call('ZCARD', KEYS[5])
local rank = redis.call('ZRANK', KEYS[1], ticket)
local class = rank_of_class(score)

if blocked <= now and rank < free then
  -- A lower priority starts only when no higher one waits ahead or is still being fetched, so
  -- that a person's report is finished before a scheduled one that waited behind it.
  local head = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  local clear = rank_of_class(tonumber(head[2])) == class
  if clear then
    for _, flight in ipairs(redis.call('ZRANGE', KEYS[7], 0, -1)) do
      if tonumber(string.sub(flight, 1, 1)) < class then clear = false break end
    end
  end
  if clear then
    leave(ticket)
    local granted = class .. '|' .. slot
    redis.call('ZADD', KEYS[5], now, granted)
    redis.call('PEXPIRE', KEYS[5], window)
    redis.call('ZADD', KEYS[7], now + hold, granted)
    redis.call('PEXPIRE', KEYS[7], hold)
    return {granted, 0, 0, 0, 0, redis.call('ZCARD', KEYS[1])}
  end
end

-- When the page at a rank of the line gets its slot: the slots taken now free up one window after
-- they were granted, the free ones are granted now, and so on, window after window.
local taken = redis.call('ZRANGE', KEYS[5], 0, -1, 'WITHSCORES')
local function turn(at_rank)
  local j = at_rank - free
  if j < 0 then return now + 200 end
  local cycle = math.floor(j / limit)
  local k = j % limit
  local base = now
  if k * 2 + 2 <= #taken then base = tonumber(taken[k * 2 + 2]) end
  return base + window * (cycle + 1)
end
-- GitHub said to hold off: nothing is granted before then, whatever the log allows.
local delay = math.max(0, blocked - now)
local wait = math.max(1, turn(rank) - now, delay)
local previous = rank > 0 and redis.call('ZRANGE', KEYS[1], rank - 1, rank - 1)[1] or nil
local first = (previous == nil or report_of(previous) ~= report) and 1 or 0
local position, report_wait = 0, wait
if first == 1 then
  position = redis.call('ZRANK', KEYS[3], report) or 0
  local pages = tonumber(redis.call('HGET', KEYS[4], report) or '1')
  report_wait = math.max(1, turn(rank + pages - 1) - now, delay)
end
redis.call('HSET', KEYS[2], ticket, now + wait + grace)
return {'', wait, position, report_wait, first, redis.call('ZCARD', KEYS[1])}
"""
)

# KEYS: line, leases, reports, tickets per report, the report's withdrawal
# ARGV: grace ms, then ticket and score pairs
_JOIN = (
    _COMMON
    + """
if redis.call('EXISTS', KEYS[5]) == 1 then
  return redis.call('ZCARD', KEYS[1])
end
local lease = now + tonumber(ARGV[1])
for i = 2, #ARGV, 2 do
  local ticket, score = ARGV[i], tonumber(ARGV[i + 1])
  if redis.call('ZADD', KEYS[1], 'NX', score, ticket) == 1 then
    local report = report_of(ticket)
    redis.call('ZADD', KEYS[3], 'NX', score, report)
    redis.call('HINCRBY', KEYS[4], report, 1)
    redis.call('HSET', KEYS[2], ticket, lease)
  end
end
keep_line()
return redis.call('ZCARD', KEYS[1])
"""
)

# KEYS: line, leases, reports, tickets per report, and a report's withdrawal when it is cancelled
# ARGV: how long the withdrawal holds (ms, 0 for none), then tickets
_WITHDRAW = (
    _COMMON
    + """
local holds = tonumber(ARGV[1])
if holds > 0 then
  redis.call('SET', KEYS[5], 1, 'PX', holds)
end
for i = 2, #ARGV do leave(ARGV[i]) end
return redis.call('ZCARD', KEYS[1])
"""
)

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
    """The outcome of asking for one request: a slot, or the wait for one and the place in line."""

    slot: str | None
    wait_seconds: float
    position: int = 0
    report_wait_seconds: float = 0.0
    first_of_report: bool = False
    pages_waiting: int = 0


class RedisRequestBudget:
    """At most `limit` requests in any `window_seconds`, however many replicas ask, in priority order."""

    def __init__(
        self,
        redis_client: Any,
        limit: int,
        scope: str,
        window_seconds: float = WINDOW_SECONDS,
        hold_seconds: float = DEFAULT_HOLD_SECONDS,
        lease_grace_seconds: float = LEASE_GRACE_SECONDS,
    ) -> None:
        self.limit = limit
        self.window_seconds = window_seconds
        self._redis = redis_client
        prefix = f"hotrepos:github:budget:{scope}"
        self._line_keys = [f"{prefix}:line", f"{prefix}:leases", f"{prefix}:reports", f"{prefix}:tickets"]
        self._log_key, self._blocked_key, self._flight_key = prefix, f"{prefix}:blocked", f"{prefix}:flight"
        margin = min(MAX_SAFETY_MARGIN_SECONDS, max(MIN_SAFETY_MARGIN_SECONDS, window_seconds * SAFETY_MARGIN_SHARE))
        self._window_ms = int((window_seconds + margin) * 1000)
        self._hold_ms = int(hold_seconds * 1000)
        self._grace_ms = int(lease_grace_seconds * 1000)
        self._take = redis_client.register_script(_TAKE)
        self._withdraw = redis_client.register_script(_WITHDRAW)
        self._join = redis_client.register_script(_JOIN)
        self._block = redis_client.register_script(_BLOCK)

    def join(self, tickets: list[BudgetTicket]) -> None:
        """Pages take their place in line as their report arrives, before their fetches even start, so
        that pages whose tasks run sooner cannot pass them."""
        if tickets:
            pairs = [value for ticket in tickets for value in (ticket.id, _score(ticket))]
            self._join(
                keys=[*self._line_keys, self._withdrawn_key(tickets[0].report_id)], args=[self._grace_ms, *pairs]
            )

    def take(self, ticket: BudgetTicket) -> Grant:
        score = _score(ticket)
        granted, wait_ms, position, report_wait_ms, first, *waiting = self._take(
            keys=[
                *self._line_keys,
                self._log_key,
                self._blocked_key,
                self._flight_key,
                self._withdrawn_key(ticket.report_id),
            ],
            args=[
                self.limit,
                self._window_ms,
                ticket.id,
                score,
                uuid.uuid4().hex,
                self._hold_ms,
                self._grace_ms,
            ],
        )
        pages_waiting = int(waiting[0]) if waiting else 0
        if granted:
            return Grant(
                granted.decode() if isinstance(granted, bytes) else str(granted), 0.0, pages_waiting=pages_waiting
            )
        return Grant(None, int(wait_ms) / 1000, int(position), int(report_wait_ms) / 1000, bool(first), pages_waiting)

    def finish(self, slot: str, *, counted: bool = True) -> None:
        """The request a slot paid for is over; one GitHub did not count (a 304) gives its slot back."""
        with self._redis.pipeline(transaction=False) as pipe:
            pipe.zrem(self._flight_key, slot)
            if not counted:
                pipe.zrem(self._log_key, slot)
            pipe.execute()

    def withdraw(self, tickets: list[str]) -> int:
        """Take pages out of the line (served from the cache); the line's length."""
        if not tickets:
            return 0
        return int(self._withdraw(keys=[*self._line_keys, self._withdrawn_key("-")], args=[0, *tickets]))

    def withdraw_report(self, report_id: str, pages: int) -> int:
        """A cancelled report leaves the line for good: a page of it still on its way cannot join again."""
        tickets = [ticket_id(report_id, page) for page in range(1, pages + 1)]
        keys = [*self._line_keys, self._withdrawn_key(report_id)]
        return int(self._withdraw(keys=keys, args=[WITHDRAWN_SECONDS * 1000, *tickets]))

    def _withdrawn_key(self, report_id: str) -> str:
        return f"{self._log_key}:withdrawn:{report_id}"

    def waiting(self) -> int:
        """Pages in the line."""
        return int(self._redis.zcard(self._line_keys[0]))

    def block_for(self, seconds: float) -> None:
        """GitHub said the budget is spent (someone else uses the token too): every replica waits."""
        self._block(keys=[self._blocked_key], args=[max(1, int(seconds * 1000))])


def _score(ticket: BudgetTicket) -> int:
    return _RANK[ticket.priority] * _PRIORITY_SPAN + int(ticket.queued_at.timestamp() * 1000)


class CancellationsLeavingTheLine:
    """A cancelled report also leaves the line for budget at once, so that the reports behind it move up."""

    def __init__(self, cancellations: Cancellations, budget: RedisRequestBudget) -> None:
        self._cancellations = cancellations
        self._budget = budget

    def cancel(self, report_id: str) -> None:
        self._cancellations.cancel(report_id)
        self._budget.withdraw_report(report_id, PAGES_PER_REPORT)

    def is_cancelled(self, report_id: str) -> bool:
        return self._cancellations.is_cancelled(report_id)
