"""The event catalogue and the architecture's diagram: generated from shared/, valid AsyncAPI 3, never stale."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

from hotrepos_cli.__main__ import main
from hotrepos_cli.asyncapi import BEGIN_MARKER, END_MARKER, render_document, with_topology
from hotrepos_cli.catalogue import EXAMPLES, all_subscriptions, event_types_on, topic_matches, topology_mermaid
from shared.events import EVENT_TYPES, CloudEvent
from shared.topology import EXCHANGES, SUBSCRIPTIONS, exchange_of

ROOT = Path(__file__).resolve().parents[2]
CATALOGUE = ROOT / "docs" / "asyncapi.yaml"
ASYNCAPI_SCHEMA = ROOT / "tests" / "schemas" / "asyncapi-3.0.0.json"
DOCUMENT_URI = "urn:hotrepos:asyncapi"


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(CATALOGUE.read_text(encoding="utf-8"))
    return loaded


def asyncapi_errors(document: dict[str, Any]) -> list[str]:
    schema = json.loads(ASYNCAPI_SCHEMA.read_text(encoding="utf-8"))
    validator = jsonschema.Draft7Validator(schema, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER)
    return [f"{list(e.absolute_path)}: {e.message[:200]}" for e in validator.iter_errors(document)]


def payload_validator(document: dict[str, Any], event_type: str) -> jsonschema.Draft7Validator:
    """Validates against a message's payload schema, its references resolved inside the document."""
    registry: Registry[Any] = Registry().with_resource(
        DOCUMENT_URI, Resource.from_contents(document, default_specification=DRAFT7)
    )
    pointer = f"{DOCUMENT_URI}#/components/messages/{event_type}/payload"
    return jsonschema.Draft7Validator(
        {"$ref": pointer}, registry=registry, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER
    )


def test_the_checked_in_catalogue_is_the_one_the_code_generates() -> None:
    assert CATALOGUE.read_text(encoding="utf-8") == render_document(), (
        "docs/asyncapi.yaml is stale: run `hotrepos asyncapi`"
    )


def test_the_architecture_diagram_is_the_one_the_code_generates() -> None:
    page = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    assert page.count(BEGIN_MARKER) == 1 and page.count(END_MARKER) == 1
    assert with_topology(page) == page, "the architecture's topology is stale: run `hotrepos asyncapi`"


def test_the_catalogue_is_valid_asyncapi_3(document: dict[str, Any]) -> None:
    assert document["asyncapi"] == "3.0.0"
    assert asyncapi_errors(document) == []
    # The schema is live: a binding that is both a queue and a routing key is refused.
    broken = copy.deepcopy(document)
    broken["channels"]["report.requested"]["bindings"]["amqp"]["queue"] = {"name": "x"}
    assert asyncapi_errors(broken)


def test_the_catalogue_lists_every_exchange_routing_key_queue_and_message(document: dict[str, Any]) -> None:
    channels = document["channels"]
    exchanges = {
        c["bindings"]["amqp"]["exchange"]["name"]
        for c in channels.values()
        if c["bindings"]["amqp"]["is"] == "routingKey"
    }
    bindings = [b for c in channels.values() for b in c.get("x-hotrepos-bindings", [])]
    assert {e.name for e in EXCHANGES} <= exchanges | {b["exchange"] for b in bindings}
    for subscription in all_subscriptions():
        assert {"exchange": subscription.exchange.name, "bindingKey": subscription.binding_key} in bindings
    for event_type in EVENT_TYPES:
        channel = channels[event_type]
        assert channel["bindings"]["amqp"]["exchange"]["name"] == exchange_of(event_type).name
        if exchange_of(event_type).type == "topic":
            assert channel["address"] == event_type
        assert event_type in document["components"]["messages"]
    queues = {c["bindings"]["amqp"]["queue"]["name"] for c in channels.values() if "queue" in c["bindings"]["amqp"]}
    for subscription in all_subscriptions():
        assert subscription.dlq_name in queues
        if not subscription.exclusive:
            assert subscription.queue_name in queues
        assert f"{subscription.service}.receives.{subscription.name}" in document["operations"]


@pytest.mark.parametrize("event_type", list(EVENT_TYPES))
def test_every_message_has_an_example_that_is_a_valid_event(document: dict[str, Any], event_type: str) -> None:
    assert event_type in EXAMPLES, f"add an example of {event_type} to hotrepos_cli/catalogue.py"
    [example] = document["components"]["messages"][event_type]["examples"]
    payload = example["payload"]
    event = CloudEvent.model_validate(payload)
    assert event.type == event_type
    event.data_as(EVENT_TYPES[event_type])
    validator = payload_validator(document, event_type)
    assert [e.message for e in validator.iter_errors(payload)] == []
    # The payload schema is live: the same event with data of the wrong shape fails it.
    assert list(validator.iter_errors({**payload, "data": {"unexpected": True}}))
    assert list(validator.iter_errors({**payload, "type": "something.else"}))


def test_topic_matching_follows_amqp() -> None:
    assert topic_matches("report.#", "report.page.fetched")
    assert topic_matches("report.#", "report")
    assert topic_matches("report.*", "report.failed")
    assert not topic_matches("report.*", "report.page.fetched")
    assert not topic_matches("report.requested", "report.requested.again")
    assert topic_matches("#", "alert.raised")
    assert topic_matches("*.#.fetched", "report.page.fetched")


def test_a_wildcard_binding_lists_every_event_it_lets_through() -> None:
    progress = next(s for s in SUBSCRIPTIONS if s.binding_key == "report.#")
    expected = [t for t in EVENT_TYPES if t.startswith("report.") and exchange_of(t).type == "topic"]
    assert event_types_on(progress) == expected


def test_the_diagram_names_every_exchange_and_work_queue() -> None:
    diagram = topology_mermaid()
    for exchange in EXCHANGES:
        assert f'"{exchange.name}<br/>{exchange.type}"' in diagram
    for subscription in SUBSCRIPTIONS:
        assert f'[("{subscription.queue_name}")]' in diagram


def test_check_fails_on_a_stale_catalogue_and_passes_once_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "asyncapi.yaml"
    readme = tmp_path / "README.md"
    out.write_text("asyncapi: 3.0.0\n")
    readme.write_text(f"# hotrepos\n\n{BEGIN_MARKER}\nold diagram\n{END_MARKER}\n\nmore text\n")
    paths = ["--out", str(out), "--architecture", str(readme)]

    assert main(["asyncapi", "--check", *paths]) == 1
    assert "differs from the contract" in capsys.readouterr().err
    assert main(["asyncapi", *paths]) == 0
    assert main(["asyncapi", "--check", *paths]) == 0
    assert out.read_text() == render_document()
    assert readme.read_text().endswith("more text\n") and "old diagram" not in readme.read_text()
