"""The event catalogue, generated from the contract: an AsyncAPI 3 document and a topology diagram.

A documentation generator, run by `hotrepos asyncapi`: no service imports it.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import re
from typing import Any

from kombu.entity import Exchange, Queue
from pydantic.json_schema import models_json_schema

from shared.events import (
    CONTENT_TYPE,
    EVENT_TYPES,
    AlertRaised,
    CloudEvent,
    EventData,
    LanguageCount,
    LanguageGroup,
    ReportAggregated,
    ReportCancelRequested,
    ReportExported,
    ReportFailed,
    ReportPageFetched,
    ReportQueued,
    ReportRequested,
    ReportSpec,
    Repository,
    derived_event_id,
)
from shared.pipeline import DELIVERY_LIMIT
from shared.topology import (
    ALERTS,
    CONTROL,
    DELAY,
    DELAYED,
    DLX,
    EVENTS,
    EXCHANGES,
    PUBLISHES,
    REASON_HEADER,
    SUBSCRIPTIONS,
    WEBHOOK_DELIVERIES,
    Subscription,
    delayed_binding_key,
    every_subscription,
    exchange_of,
)
from shared.webhooks import WEBHOOK_DELIVERY, WebhookDelivery

ASYNCAPI_VERSION = "3.0.0"
AMQP_BINDING_VERSION = "0.3.0"
SCHEMA_REF = "#/components/schemas/{model}"
# Who publishes outside the pipeline: the contract names them in prose, not in PUBLISHES.
ANY_CLIENT = "client"
EVERY_SERVICE = "every-service"
CONTEXT_HEADERS = ("correlationid", "locale", "traceparent")
# Every message type on the broker: the contract's events, then a service's own messages, which never
# leave that service but travel through the same pipeline (the webhooks service's deliveries).
MESSAGE_TYPES: dict[str, type[EventData]] = {**EVENT_TYPES, WEBHOOK_DELIVERY: WebhookDelivery}
# The contract's exchanges, then those a service keeps for its own messages.
ALL_EXCHANGES: tuple[Exchange, ...] = (*EXCHANGES, WEBHOOK_DELIVERIES)

# One example per event type, built with the models themselves so that an example cannot drift.
_REPORT_ID = "6f1c9a7e-1b2c"
_SPEC = ReportSpec(
    period="week",
    since=dt.date(2026, 11, 15),
    layout="rows",
    notify="reader@example.com",
    requested_at=dt.datetime(2026, 11, 22, 8, 0, 0, tzinfo=dt.UTC),
)
_REPOSITORY = Repository(
    id=123456789,
    full_name="octo/hello-world",
    html_url="https://github.com/octo/hello-world",
    description="A very hot new repository",
    language="Python",
    stargazers_count=4200,
    forks_count=310,
    created_at="2026-11-16T09:30:00Z",
)
EXAMPLES: dict[str, EventData] = {
    "report.requested": ReportRequested(
        report_id=_REPORT_ID, period="week", ref_date=dt.date(2026, 11, 22), notify="reader@example.com"
    ),
    "report.queued": ReportQueued(report_id=_REPORT_ID, priority="interactive", position=3, eta_seconds=42.0),
    "report.page.fetched": ReportPageFetched(report_id=_REPORT_ID, page=1, pages=5, spec=_SPEC, items=[_REPOSITORY]),
    "report.aggregated": ReportAggregated(
        report_id=_REPORT_ID,
        spec=_SPEC,
        total=1,
        languages=[LanguageGroup(language="Python", repositories=[_REPOSITORY])],
    ),
    "report.exported": ReportExported(
        report_id=_REPORT_ID,
        path=f"reports/hotrepos-week-2026-11-15-{_REPORT_ID}.csv",
        rows=1,
        sha256="9f2c" * 16,
        layout="rows",
        spec=_SPEC,
        repositories=1,
        top_languages=[LanguageCount(language="Python", count=1)],
    ),
    "report.failed": ReportFailed(
        report_id=_REPORT_ID,
        stage="fetch",
        reason="GitHub answered 422 on page 1: Validation Failed",
        spec=_SPEC,
    ),
    "alert.raised": AlertRaised(
        service="fetcher",
        level="ERROR",
        logger="hotrepos.fetcher",
        message="message.dead_lettered queue=fetcher.report.requested reason=body is not JSON",
        fingerprint="5d41402abc4b2a76b9719d911017c592",
        suppressed=0,
    ),
    "report.cancel.requested": ReportCancelRequested(report_id=_REPORT_ID),
}


def example_event(event_type: str) -> CloudEvent | None:
    """The example of an event type as it travels: a CloudEvent with our extension attributes."""
    data = EXAMPLES.get(event_type)
    if data is None:
        return None
    return CloudEvent(
        specversion="1.0",
        id=derived_event_id("example", event_type),
        type=event_type,
        source="hotrepos/example",
        time=dt.datetime(2026, 11, 22, 8, 0, 5, tzinfo=dt.UTC),
        data=data.model_dump(mode="json"),
        correlationid=None if event_type == "alert.raised" else _REPORT_ID,
        locale="en",
        traceparent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    )


# A delivery carries the event it delivers, as it went over the broker.
_EXPORTED_EXAMPLE = example_event("report.exported")
assert _EXPORTED_EXAMPLE is not None
EXAMPLES[WEBHOOK_DELIVERY] = WebhookDelivery(
    subscription_id="3f9d2c4e8a7b4e0f9c1d2e3f4a5b6c7d",
    event_id=_EXPORTED_EXAMPLE.id,
    event_type="report.exported",
    report_id=_REPORT_ID,
    body=_EXPORTED_EXAMPLE.model_dump_json(exclude_none=True),
)


def topic_matches(binding_key: str, routing_key: str) -> bool:
    """AMQP topic matching: `*` is exactly one word, `#` zero or more."""
    pattern = re.escape(binding_key).replace(r"\*", r"[^.]+").replace(r"\#", r".*")
    pattern = pattern.replace(r"\..*", r"(\..*)?").replace(r".*\.", r"(.*\.)?")
    return re.fullmatch(pattern, routing_key) is not None


def event_types_on(subscription: Subscription) -> list[str]:
    """The event types that a subscription's binding lets into its queue."""
    on_exchange = [t for t in MESSAGE_TYPES if exchange_of(t).name == subscription.exchange.name]
    if subscription.exchange.type == "fanout":
        return on_exchange
    if subscription.exchange.type == "topic":
        return [t for t in on_exchange if topic_matches(subscription.binding_key, t)]
    return [t for t in on_exchange if t == subscription.binding_key]


def all_subscriptions() -> list[Subscription]:
    """Every subscription; a service with queues also hears hotrepos.control on one per replica."""
    return list(every_subscription())


def publishers_of(event_type: str) -> list[str]:
    """Who publishes an event type: the principals of PUBLISHES, and the outside actors in the contract."""
    senders = [principal for principal, types in PUBLISHES.items() if event_type in types]
    if event_type in ("report.requested", "report.cancel.requested"):
        senders.append(ANY_CLIENT)
    if event_type == "alert.raised":
        senders.append(EVERY_SERVICE)
    return senders


def _ref(*parts: str) -> dict[str, str]:
    return {"$ref": "#/" + "/".join(part.replace("~", "~0").replace("/", "~1") for part in parts)}


def _exchange_binding(exchange: Exchange) -> dict[str, Any]:
    return {
        "amqp": {
            "is": "routingKey",
            "exchange": {
                "name": exchange.name,
                "type": exchange.type,
                "durable": bool(exchange.durable),
                "autoDelete": bool(exchange.auto_delete),
                "vhost": "/",
            },
            "bindingVersion": AMQP_BINDING_VERSION,
        }
    }


def queue_bindings(queue: Queue) -> list[tuple[str, str]]:
    """(exchange, binding key) of each binding that a queue is declared with, in a stable order."""
    pairs = {(b.exchange.name, b.routing_key or "") for b in (queue.bindings or ()) if b.exchange}
    if queue.exchange is not None and queue.exchange.name:
        pairs.add((queue.exchange.name, queue.routing_key or ""))
    return sorted(pairs)


def _queue_channel(subscription: Subscription, queue: Queue, role: str, description: str) -> dict[str, Any]:
    name = queue.name or ""
    return {
        "address": name or None,
        "title": f"{name or subscription.queue_name + ' (server-named)'}: {role}",
        "description": description,
        "messages": {t: _ref("components", "messages", t) for t in event_types_on(subscription)},
        "bindings": {
            "amqp": {
                "is": "queue",
                "queue": {
                    "name": name,
                    "durable": bool(queue.durable),
                    "exclusive": bool(queue.exclusive),
                    "autoDelete": bool(queue.auto_delete),
                    "vhost": "/",
                },
                "bindingVersion": AMQP_BINDING_VERSION,
            }
        },
        "x-hotrepos-bindings": [{"exchange": e, "bindingKey": k} for e, k in queue_bindings(queue)],
        "x-hotrepos-queue-arguments": dict(getattr(queue, "queue_arguments", None) or {}),
    }


def retries_of(subscription: Subscription) -> str:
    return (
        f"A message whose dependency is down is published to `{DELAY.name}` with a routing key that spells "
        f"its delay in binary, one word per delay level, then `{subscription.queue_name}`; the broker's "
        f"delay levels (`celery_delayed_<n>`, quorum queues holding 2^n seconds each) bring it out on "
        f"`{DELAYED.name}`, where this queue alone is bound with `{delayed_binding_key(subscription.queue_name)}`."
    )


def _channels_of(subscription: Subscription) -> dict[str, dict[str, Any]]:
    """A subscription's work queue, with the dead-letter queue that comes with it."""
    exchange, key = subscription.exchange.name, subscription.binding_key
    bound = f"bound to `{exchange}`" + (f" with binding key `{key}`" if key else "")
    dead_letters = (
        f"Rejected or poison messages go to `{subscription.dlq_name}` through `{DLX.name}`, with the "
        f"reason in the `{REASON_HEADER}` header; the broker dead-letters a message after "
        f"{DELIVERY_LIMIT} deliveries."
    )
    dead_letter_queue = subscription.dead_letter_queue()
    channels = {
        subscription.queue_name: _queue_channel(
            subscription,
            subscription.queue(),
            "one per replica" if subscription.exclusive else f"work queue of the {subscription.service}",
            (
                f"Each running replica's own exclusive, auto-delete queue, {bound}: a broadcast "
                f"reaches every replica of every service. {dead_letters}"
            )
            if subscription.exclusive
            else (
                f"Durable quorum queue {bound}; replicas of the {subscription.service} compete for its "
                f"messages. {dead_letters} {retries_of(subscription)}"
            ),
        ),
        subscription.dlq_name: _queue_channel(
            subscription,
            dead_letter_queue,
            "dead letters",
            f"Messages of `{subscription.queue_name}` that could not be handled, as they arrived "
            "(a dead letter need not be a valid event).",
        ),
    }
    return channels


def _message(event_type: str, model: type[EventData]) -> dict[str, Any]:
    exchange = exchange_of(event_type)
    message: dict[str, Any] = {
        "name": event_type,
        "title": model.__name__,
        "summary": (model.__doc__ or event_type).strip().splitlines()[0],
        "description": (
            f"Published on `{exchange.name}` ({exchange.type})"
            + (f" with routing key `{event_type}`" if exchange.type == "topic" else "")
            + f" by: {', '.join(publishers_of(event_type)) or 'nobody yet'}."
        ),
        "contentType": CONTENT_TYPE,
        "headers": {
            "type": "object",
            "description": "AMQP application headers: copies of the CloudEvent's extension attributes",
            "properties": {name: {"type": "string"} for name in CONTEXT_HEADERS},
        },
        "payload": {
            "allOf": [
                {"$ref": SCHEMA_REF.format(model="CloudEvent")},
                {
                    "type": "object",
                    "required": ["type", "data"],
                    "properties": {
                        "type": {"const": event_type},
                        "data": {"$ref": SCHEMA_REF.format(model=model.__name__)},
                    },
                },
            ]
        },
        "correlationId": {
            "description": "The report id, copied into every event caused by this one",
            "location": "$message.payload#/correlationid",
        },
        "bindings": {
            "amqp": {"contentEncoding": "utf-8", "messageType": event_type, "bindingVersion": AMQP_BINDING_VERSION}
        },
    }
    example = example_event(event_type)
    if example is not None:
        payload = example.model_dump(mode="json", exclude_none=True)
        headers = {name: payload[name] for name in CONTEXT_HEADERS if name in payload}
        message["examples"] = [{"name": event_type, "headers": headers, "payload": payload}]
    return message


def _schemas() -> dict[str, Any]:
    models = [(model, "validation") for model in (CloudEvent, *MESSAGE_TYPES.values())]
    _, top = models_json_schema(models, ref_template=SCHEMA_REF)  # type: ignore[arg-type]
    return dict(sorted(top.get("$defs", {}).items()))


def _operation(action: str, channel: str, event_types: list[str], actor: str, summary: str) -> dict[str, Any]:
    amqp: dict[str, Any] = {"bindingVersion": AMQP_BINDING_VERSION}
    if action == "send":
        amqp["deliveryMode"] = 2
    else:
        amqp["ack"] = True
    return {
        "action": action,
        "channel": _ref("channels", channel),
        "summary": summary,
        "messages": [_ref("channels", channel, "messages", t) for t in event_types],
        "tags": [{"name": actor}],
        "bindings": {"amqp": amqp},
    }


def build_document() -> dict[str, Any]:
    """The AsyncAPI 3 document of every exchange, routing key, queue, message schema and example."""
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for event_type in MESSAGE_TYPES:
        exchange = exchange_of(event_type)
        channels[event_type] = {
            "address": event_type if exchange.type == "topic" else "",
            "title": f"{event_type} on {exchange.name}",
            "messages": {event_type: _ref("components", "messages", event_type)},
            "bindings": _exchange_binding(exchange),
        }
        for actor in publishers_of(event_type):
            operations[f"{actor}.sends.{event_type}"] = _operation(
                "send", event_type, [event_type], actor, f"{actor} publishes {event_type}"
            )
    for subscription in all_subscriptions():
        channels.update(_channels_of(subscription))
        operations[f"{subscription.service}.receives.{subscription.name}"] = _operation(
            "receive",
            subscription.queue_name,
            event_types_on(subscription),
            subscription.service,
            f"{subscription.service} consumes {subscription.queue_name}",
        )
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "hotrepos",
            "version": _version(),
            "description": DESCRIPTION,
        },
        "defaultContentType": CONTENT_TYPE,
        "servers": {
            "broker": {
                "host": "{host}:{port}",
                "protocol": "amqp",
                "protocolVersion": "0.9.1",
                "pathname": "/",
                "description": "RabbitMQ; every exchange and queue lives in the vhost of AMQP_URL.",
                "variables": {"host": {"default": "localhost"}, "port": {"default": "5672"}},
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {
            "schemas": _schemas(),
            "messages": {t: _message(t, model) for t, model in MESSAGE_TYPES.items()},
        },
    }


_ROLES = {
    EVENTS.name: "events, with the event type as routing key",
    ALERTS.name: "alerts from every service",
    CONTROL.name: "commands that every replica obeys",
    DLX.name: "dead letters, with the name of the queue they left as routing key",
    WEBHOOK_DELIVERIES.name: "the webhooks service's own deliveries, one per subscription and event",
}
DESCRIPTION = (
    "The events of hotrepos: small services that never call each other and talk only through\n"
    "RabbitMQ. Generated from the code by `hotrepos asyncapi`: do not edit by hand.\n\n"
    f"Every message is a CloudEvents 1.0 event in JSON structured mode (`{CONTENT_TYPE}`),\n"
    "persistent (delivery mode 2), published with publisher confirms, with `message_id` = the event\n"
    "id. Extension attributes: `correlationid` (the report id), `locale` (BCP 47) and `traceparent`\n"
    "(W3C trace context: the CloudEvents distributed-tracing extension); they are also copied into\n"
    "AMQP headers. The context of the event being handled is copied into every event published\n"
    "while handling it, so one report is one correlation id and one trace.\n\n"
    "Exchanges:\n"
    + "".join(f"- `{e.name}` ({e.type}): {_ROLES.get(e.name, 'see its channels')}\n" for e in ALL_EXCHANGES)
)


def _version() -> str:
    try:
        return importlib.metadata.version("hotrepos")
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0"


def _node(prefix: str, name: str) -> str:
    return prefix + (re.sub(r"[^A-Za-z0-9]", "_", name) or "default")


def topology_mermaid() -> str:
    """The topology as a Mermaid flowchart: who publishes what, where it is routed, who consumes it."""
    lines = ["flowchart LR"]
    for exchange in ALL_EXCHANGES:
        lines.append(f'    {_node("x_", exchange.name)}{{{{"{exchange.name}<br/>{exchange.type}"}}}}')
    publishers: dict[tuple[str, str], list[str]] = {}
    for event_type in MESSAGE_TYPES:
        for actor in publishers_of(event_type):
            publishers.setdefault((actor, exchange_of(event_type).name), []).append(event_type)
    actors = dict.fromkeys(actor for actor, _ in publishers)
    actors.update(dict.fromkeys(s.service for s in SUBSCRIPTIONS))
    labels = {ANY_CLIENT: "any AMQP client", EVERY_SERVICE: "every service"}
    for actor in actors:
        text = labels.get(actor, actor)
        shape = f'(["{text}"])' if actor in labels else f'["{text}"]'
        lines.append(f"    {_node('s_', actor)}{shape}")
    for (actor, exchange_name), event_types in publishers.items():
        label = "<br/>".join(event_types)
        lines.append(f'    {_node("s_", actor)} -- "{label}" --> {_node("x_", exchange_name)}')
    for subscription in SUBSCRIPTIONS:
        queue = _node("q_", subscription.queue_name)
        source = _node("x_", subscription.exchange.name)
        arrow = f'-- "{subscription.binding_key}" -->' if subscription.binding_key else "-->"
        consumer = _node("s_", subscription.service)
        lines.append(f'    {source} {arrow} {queue}[("{subscription.queue_name}")] --> {consumer}')
    # One node stands for every replica's exclusive control queue: they are many, and nameless.
    controlled = [s for s in all_subscriptions() if s.exclusive]
    if controlled:
        source = _node("x_", controlled[0].exchange.name)
        listeners = " & ".join(_node("s_", s.service) for s in controlled)
        lines.append(f'    {source} --> q_control[("control: one exclusive<br/>queue per replica")]')
        lines.append(f"    q_control --> {listeners}")
    lines.extend(_plumbing())
    return "\n".join(lines) + "\n"


def _plumbing() -> list[str]:
    """Dead letters and delayed retries, drawn once for a queue that stands for every work queue."""
    sample = next(s for s in SUBSCRIPTIONS if not s.exclusive)
    dead_letters = {e for e, _ in queue_bindings(sample.dead_letter_queue())}
    lines = ['    any_queue[("each work queue Q")]']
    for exchange in sorted(dead_letters):
        lines.append(f'    any_queue -. "rejected / poison" .-> {_node("x_", exchange)} --> dead_letters[("Q.dlq")]')
    lines.append(
        f'    any_queue -. "retry later" .-> {_node("x_", DELAY.name)}{{{{"{DELAY.name}<br/>delay levels 27..0"}}}}'
        f' -. "after its delay" .-> {_node("x_", DELAYED.name)}{{{{"{DELAYED.name}<br/>topic"}}}} --> any_queue'
    )
    return lines
