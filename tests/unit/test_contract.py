"""The contract lives once: every event has a consumer, and the exported schemas match the code."""

from __future__ import annotations

from pathlib import Path

from hotrepos_cli.schemas import DEFAULT_DIR, render_schemas
from shared.events import EVENT_TYPES
from shared.topology import CONTROL, EVENTS, EXCHANGES, PUBLISHES, SUBSCRIPTIONS, control_of, exchange_of

ROOT = Path(__file__).resolve().parents[2]


def _matches(binding_key: str, routing_key: str) -> bool:
    """AMQP topic matching: * is one word, # is zero or more."""

    def match(pattern: list[str], words: list[str]) -> bool:
        if not pattern:
            return not words
        if pattern[0] == "#":
            return any(match(pattern[1:], words[i:]) for i in range(len(words) + 1))
        return bool(words) and pattern[0] in ("*", words[0]) and match(pattern[1:], words[1:])

    return match(binding_key.split("."), routing_key.split("."))


# News for whoever watches a report (the gateway, `hotrepos request --wait`), which no service acts on.
WATCHED_ONLY = frozenset({"report.queued"})


def test_every_event_type_has_a_bound_consumer() -> None:
    for event_type in EVENT_TYPES:
        exchange = exchange_of(event_type)
        if exchange is CONTROL:
            continue  # every service's replicas bind their own exclusive queue at start
        bound = [
            s
            for s in SUBSCRIPTIONS
            if s.exchange.name == exchange.name and (exchange.type == "fanout" or _matches(s.binding_key, event_type))
        ]
        if event_type in WATCHED_ONLY:
            assert {s.service for s in bound} == {"gateway"}, f"the gateway does not follow {event_type}"
            continue
        consumers = {s.service for s in bound} - {"gateway"}
        assert consumers, f"nobody but the gateway consumes {event_type}"


def test_every_published_event_type_exists() -> None:
    for principal, event_types in PUBLISHES.items():
        for event_type in event_types:
            if event_type in EVENT_TYPES:
                assert exchange_of(event_type) in (EVENTS, CONTROL), (principal, event_type)
                continue
            # A service's own message: on an exchange outside the contract, consumed by its publisher alone.
            exchange = exchange_of(event_type)
            consumers = {s.service for s in SUBSCRIPTIONS if s.exchange is exchange}
            assert exchange not in EXCHANGES and consumers == {principal}, (principal, event_type)


def test_queue_names_say_who_listens_to_what() -> None:
    for subscription in SUBSCRIPTIONS:
        assert subscription.queue_name == f"{subscription.service}.{subscription.name}"
        arguments = subscription.queue().queue_arguments
        assert arguments["x-queue-type"] == "quorum" and arguments["x-dead-letter-exchange"] == "hotrepos.dlx"
    assert control_of("fetcher").queue().exclusive


def test_checked_in_json_schemas_match_the_code() -> None:
    directory = ROOT / DEFAULT_DIR
    expected = render_schemas()
    assert sorted(p.name for p in directory.glob("*.json")) == sorted(expected), "run: hotrepos schemas"
    for name, content in expected.items():
        assert (directory / name).read_text(encoding="utf-8") == content, f"{name} drifted: run hotrepos schemas"
