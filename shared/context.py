"""The scope of the event being handled, copied into every event published while handling it."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class EventContext:  # frozen, hence safe as a ContextVar default
    correlationid: str | None = None
    locale: str | None = None
    traceparent: str | None = None

    def as_headers(self) -> dict[str, str]:
        return {k: v for k, v in vars(self).items() if v}

    @classmethod
    def from_headers(cls, headers: Mapping[str, object] | None) -> EventContext:
        headers = headers or {}

        def text(key: str) -> str | None:
            value = headers.get(key)
            return value if isinstance(value, str) and value else None

        return cls(text("correlationid"), text("locale"), text("traceparent"))

    def merged(self, **changes: str | None) -> EventContext:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


_current: contextvars.ContextVar[EventContext] = contextvars.ContextVar(
    "hotrepos_event_context",
    default=EventContext(),  # noqa: B039
)


def current_context() -> EventContext:
    return _current.get()


@contextlib.contextmanager
def event_scope(context: EventContext) -> Iterator[EventContext]:
    token = _current.set(context)
    try:
        yield context
    finally:
        _current.reset(token)
