"""Hostile AMQP messages, generated with hypothesis: garbage, lies about content, huge and deep
bodies, broken CloudEvents, schema violations, header injection and path tricks.

Every generated message is invalid on purpose; an oracle built on the contract discards the rare
one that happens to be valid, so that each message routed to a service queue must end in its
dead-letter queue.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st
from pydantic import ValidationError

from shared.events import EVENT_TYPES, CloudEvent
from shared.pipeline import MAX_BODY_BYTES
from tests.support.amqp import CLOUDEVENTS
from tests.support.chaos import REQUESTER

ACCEPTED_CONTENT_TYPES = {CLOUDEVENTS, "application/json"}
CONTRACT_KEYS = sorted(EVENT_TYPES)
INJECTED_EMAILS = (
    "a@example.com\r\nBcc: x@example.com",
    "a@example.com\nBcc: x@example.com",
    "a@example.com\r\n\r\nInjected body",
    "<a@example.com>\r\nCc: x@example.com",
    "a@example.com%0d%0aBcc:x@example.com",
    "a@example.com, x@example.com",
    '"a\r\nBcc: x@example.com" <a@example.com>',
)
INJECTED_LOCALES = (
    "fr\r\nBcc:",
    "fr\r\nBcc: x@example.com",
    "en\nX-Injected: 1",
    "de\r\n\r\nbody",
    "../../etc/passwd",
    "fr%0d%0aBcc:",
    "fr-FR\u2028Bcc:",
    "x" * 40,
)
BAD_CONTENT_TYPES = (
    None,
    "",
    "text/plain",
    "application/octet-stream",
    "application/xml",
    "application/cloudevents",
    "application/cloudevents-batch+json",
    "application/x-www-form-urlencoded",
    "application/cloudevents+json\r\nBcc: x@example.com",
    "text/html; charset=utf-8",
)
REQUIRED_ENVELOPE_KEYS = ("specversion", "id", "type", "source")


def path_tricks(marker: str) -> tuple[str, ...]:
    """Report ids that would write outside REPORTS_DIR; each carries the marker, so a stray file
    with it in its name anywhere is proof of an escape."""
    return (
        "../../etc/passwd",
        f"../../{marker}-passwd",
        f"..\\..\\{marker}",
        f"/tmp/{marker}",
        f"{marker}/../../../{marker}-escaped",
        f"{marker}/x",
        f"./{marker}",
        f"..{marker}",
        f"{marker}\x00.csv",
        f"{marker}\r\nBcc: x@example.com",
        f"%2e%2e%2f{marker}",
        f"{marker}" + "x" * 70,
    )


@dataclass(frozen=True)
class HostileMessage:
    category: str
    exchange: str
    routing_key: str
    body: bytes
    content_type: str | None = CLOUDEVENTS
    headers: dict[str, Any] | None = None


def valid_data(event_type: str, report_id: str) -> dict[str, Any]:
    """Data that passes the contract, for mutation into data that does not."""
    spec = {"period": "day", "since": "2026-11-21", "layout": "rows", "notify": REQUESTER}
    repository = {
        "id": 1,
        "full_name": "octo/hostile",
        "html_url": "https://github.com/octo/hostile",
        "description": None,
        "language": "Python",
        "stargazers_count": 1,
        "forks_count": 0,
        "created_at": "2026-11-21T00:00:00Z",
    }
    templates: dict[str, dict[str, Any]] = {
        "report.requested": {"report_id": report_id, "period": "day", "notify": REQUESTER},
        "report.page.fetched": {"report_id": report_id, "page": 1, "pages": 5, "spec": spec, "items": [repository]},
        "report.aggregated": {
            "report_id": report_id,
            "spec": spec,
            "total": 1,
            "languages": [{"language": "Python", "repositories": [repository]}],
        },
        "report.exported": {
            "report_id": report_id,
            "path": f"/reports/{report_id}.csv",
            "rows": 1,
            "sha256": "0" * 64,
            "layout": "rows",
            "spec": spec,
            "repositories": 1,
            "top_languages": [],
        },
        "report.failed": {"report_id": report_id, "stage": "fetch", "reason": "hostile", "spec": spec},
        "alert.raised": {
            "service": "hostile",
            "level": "ERROR",
            "logger": "hostile",
            "message": "m",
            "fingerprint": report_id[:64],
        },
        "report.cancel.requested": {"report_id": report_id},
    }
    return templates.get(event_type, {"report_id": report_id})


def envelope(event_type: str, data: Any, **extra: Any) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "type": event_type,
        "source": "chaos/hostile",
        "datacontenttype": "application/json",
        "data": data,
        **extra,
    }


def is_acceptable(message: HostileMessage, route_type: str | None) -> bool:
    """Whether a consumer whose queue takes `route_type` events should accept the message."""
    content_type = (message.content_type or "").split(";")[0].strip().lower()
    if len(message.body) > MAX_BODY_BYTES or content_type not in ACCEPTED_CONTENT_TYPES:
        return False
    try:
        raw = json.loads(message.body)
        if not isinstance(raw, dict):
            return False
        event = CloudEvent.model_validate(raw)
        if event.type != route_type or event.type not in EVENT_TYPES:
            return False
        event.data_as(EVENT_TYPES[event.type])
    except (ValueError, RecursionError, ValidationError):
        return False
    return True


json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
header_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.text(max_size=60)
    | st.sampled_from(INJECTED_LOCALES + INJECTED_EMAILS)
    | st.binary(max_size=30)
    | st.decimals(min_value=-1000, max_value=1000, places=2)
    | st.datetimes(min_value=dt.datetime(1970, 1, 2), max_value=dt.datetime(2100, 1, 1)),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=10), children, max_size=3),
    max_leaves=6,
)
amqp_headers = st.none() | st.dictionaries(
    st.sampled_from(
        [
            "x-hotrepos-retries",
            "x-hotrepos-reason",
            "x-death",
            "correlationid",
            "locale",
            "traceparent",
            "x-delivery-count",
            "x-hotrepos-original-exchange",
        ]
    )
    | st.text(min_size=1, max_size=20),
    header_values,
    max_size=4,
)


def deep(depth: int, leaf: Any = 0) -> Any:
    value: Any = leaf
    for level in range(depth):
        value = [value] if level % 2 else {"d": value}
    return value


def hostile_bodies(marker: str, event_type: str) -> st.SearchStrategy[tuple[str, bytes, str | None]]:
    """(category, body, content type) for a message on `event_type`'s routing key."""
    report_ids = st.sampled_from(path_tricks(marker)) | st.builds(lambda n: f"{marker}-h{n}", st.integers(0, 50))

    def encoded(value: Any) -> bytes:
        return json.dumps(value).encode()

    def mutate_envelope(draw: Callable[..., Any]) -> dict[str, Any]:
        event = envelope(event_type, valid_data(event_type, f"{marker}-env"))
        mutation = draw(
            st.sampled_from(
                [
                    "drop",
                    "specversion",
                    "id",
                    "type",
                    "source",
                    "locale",
                    "traceparent",
                    "time",
                    "datacontenttype",
                    "correlationid",
                ]
            )
        )
        if mutation == "drop":
            event.pop(draw(st.sampled_from(REQUIRED_ENVELOPE_KEYS)))
        elif mutation == "specversion":
            event["specversion"] = draw(st.sampled_from(["0.3", 1.0, None, "1.0\r\n", "2.0"]))
        elif mutation == "id":
            event["id"] = draw(st.sampled_from(["", "x" * 129, 42, None]))
        elif mutation == "type":
            event["type"] = draw(st.text(max_size=30) | st.integers() | st.sampled_from(CONTRACT_KEYS))
        elif mutation == "source":
            event["source"] = draw(st.sampled_from(["", None, "x" * 201]))
        elif mutation == "locale":
            event["locale"] = draw(st.sampled_from(INJECTED_LOCALES) | st.text(max_size=20))
        elif mutation == "traceparent":
            event["traceparent"] = draw(st.text(max_size=60))
        elif mutation == "time":
            event["time"] = draw(st.sampled_from(["yesterday", "2026-13-45T99:99:99Z", 12]))
        elif mutation == "datacontenttype":
            event["datacontenttype"] = draw(st.sampled_from(["text/xml", "application/cloudevents+json", ""]))
        else:
            event["correlationid"] = draw(st.sampled_from(["x" * 65, 1]))
        return event

    def mutate_data(draw: Callable[..., Any]) -> dict[str, Any]:
        data = dict(valid_data(event_type, draw(report_ids)))
        mutation = draw(st.sampled_from(["report_id", "notify", "field", "extra", "missing", "not-object"]))
        if mutation == "report_id":
            data["report_id"] = draw(st.sampled_from(path_tricks(marker)))
        elif mutation == "notify":
            injected = draw(st.sampled_from(INJECTED_EMAILS))
            if isinstance(data.get("spec"), dict):
                data["spec"] = {**data["spec"], "notify": injected}
            else:
                data["notify"] = injected
        elif mutation == "field" and data:
            data[draw(st.sampled_from(sorted(data)))] = draw(json_values)
        elif mutation == "extra":
            data[draw(st.sampled_from(["Bcc", "x-injected", "__proto__", "path"]))] = "x@example.com"
        elif mutation == "missing" and data:
            data.pop(draw(st.sampled_from(sorted(data))))
        else:
            return envelope(event_type, draw(json_values))
        return envelope(event_type, data)

    @st.composite
    def invalid_envelope(draw: Callable[..., Any]) -> tuple[str, bytes, str | None]:
        return "invalid-cloudevent", encoded(mutate_envelope(draw)), CLOUDEVENTS

    @st.composite
    def schema_violation(draw: Callable[..., Any]) -> tuple[str, bytes, str | None]:
        return "schema-violation", encoded(mutate_data(draw)), draw(st.sampled_from(sorted(ACCEPTED_CONTENT_TYPES)))

    @st.composite
    def wrong_content_type(draw: Callable[..., Any]) -> tuple[str, bytes, str | None]:
        body = encoded(envelope(event_type, valid_data(event_type, draw(report_ids))))
        return "wrong-content-type", body, draw(st.sampled_from(BAD_CONTENT_TYPES))

    @st.composite
    def other_type(draw: Callable[..., Any]) -> tuple[str, bytes, str | None]:
        # A well-formed event of another type, or of a type nobody knows, on this routing key.
        kind = draw(st.sampled_from([k for k in CONTRACT_KEYS if k != event_type]) | st.text(max_size=30))
        return "wrong-type", encoded(envelope(kind, valid_data(kind, draw(report_ids)))), CLOUDEVENTS

    @st.composite
    def deep_json(draw: Callable[..., Any]) -> tuple[str, bytes, str | None]:
        depth = draw(st.integers(200, 60_000))
        inside = draw(st.booleans())
        body = envelope(event_type, deep(depth)) if inside else deep(depth)
        try:
            return "deep-json", encoded(body), CLOUDEVENTS
        except RecursionError:  # too deep for json.dumps here: write the nesting by hand
            text = '{"d":' * depth + "0" + "}" * depth
            return "deep-json", text.encode(), CLOUDEVENTS

    @st.composite
    def garbage(draw: Callable[..., Any]) -> tuple[str, bytes, str | None]:
        body = draw(st.binary(max_size=2048) | json_values.map(encoded))
        content_type = draw(st.sampled_from(sorted(ACCEPTED_CONTENT_TYPES)) | st.sampled_from(BAD_CONTENT_TYPES))
        return "garbage", body, content_type

    return st.one_of(invalid_envelope(), schema_violation(), wrong_content_type(), other_type(), deep_json(), garbage())


random_routing_keys = st.text(min_size=1, max_size=60).filter(lambda k: len(k.encode()) <= 255)


def hostile_message(
    marker: str, exchange: str, routing_key: str, event_type: str | None
) -> st.SearchStrategy[HostileMessage]:
    """A hostile message on one route; `event_type` is what the route's queues accept."""

    @st.composite
    def message(draw: Callable[..., Any]) -> HostileMessage:
        category, body, content_type = draw(hostile_bodies(marker, event_type or routing_key))
        return HostileMessage(category, exchange, routing_key, body, content_type, draw(amqp_headers))

    return message()


def huge_messages(marker: str, count: int) -> list[HostileMessage]:
    """Valid events padded past the wrapper's body limit, on the first stages' routing keys."""
    messages = []
    for index in range(count):
        event_type = ("report.requested", "report.exported")[index % 2]
        event = envelope(event_type, valid_data(event_type, f"{marker}-huge-{index}"))
        event["padding"] = ""
        room = MAX_BODY_BYTES + 1 + index - len(json.dumps(event).encode())
        event["padding"] = "x" * room
        messages.append(HostileMessage("huge", "hotrepos.events", event_type, json.dumps(event).encode()))
    return messages


def injection_probes(marker: str) -> list[HostileMessage]:
    """Valid events whose free text would reach email headers: they must be handled, and the
    emails they cause must carry no injected header."""
    injected = "\r\nBcc: evil@example.com\r\nX-Injected: 1"
    failed = envelope(
        "report.failed",
        {
            "report_id": f"{marker}-probe-failed",
            "stage": "fetch\r\nBcc: evil@example.com",
            "reason": "reason" + injected,
            "spec": {"period": "day", "since": "2026-11-21", "notify": REQUESTER},
        },
        locale="fr",
    )
    alert = envelope(
        "alert.raised",
        {
            "service": "svc" + injected[:30],
            "level": "ERROR\r\nBcc: e@x.io",
            "logger": "l" + injected,
            "message": "first" + injected,
            "fingerprint": f"{marker}-probe",
        },
    )
    exported = envelope(
        "report.exported",
        {
            "report_id": f"{marker}-probe-exported",
            "path": "../../../etc/passwd\r\nBcc: evil@example.com",
            "rows": 1,
            "sha256": "0" * 64,
            "layout": "rows",
            "repositories": 1,
            "spec": {"period": "day", "since": "2026-11-21", "notify": REQUESTER},
            "top_languages": [{"language": "Py\r\nBcc: evil@example.com", "count": 1}],
        },
    )
    return [
        HostileMessage("probe", "hotrepos.events", "report.failed", json.dumps(failed).encode()),
        HostileMessage("probe", "hotrepos.alerts", "", json.dumps(alert).encode()),
        HostileMessage("probe", "hotrepos.events", "report.exported", json.dumps(exported).encode()),
    ]
