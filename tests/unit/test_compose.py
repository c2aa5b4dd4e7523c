"""compose.yaml, the image and the broker definitions, checked statically: no Docker engine needed."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from pydantic_settings import BaseSettings

from infra.rabbitmq.definitions import (
    DEFINITIONS_FILE,
    OPERATOR,
    VHOST,
    build_definitions,
    password_variable,
    principals,
    render,
    users_table,
)
from infra.runner import SCALABLE
from services.exporter.__main__ import ExporterSettings
from services.fetcher.__main__ import FetcherSettings
from services.gateway.__main__ import GatewaySettings
from services.notifier.__main__ import NotifierSettings
from services.webhooks.__main__ import WebhooksSettings
from shared.settings import CommonSettings

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "tests" / "support" / "compose-spec.json").read_text())
COMPOSE_FILES = ("compose.yaml", "compose.tls.yaml", "compose.cluster.yaml")
# The cluster's two extra nodes publish nothing: the first node's ports and management UI cover the cluster.
PUBLISHING_FILES = ("compose.yaml", "compose.tls.yaml")
CLUSTER_CONF = ROOT / "infra" / "rabbitmq" / "cluster.conf"
CLUSTER_SCRIPT = ROOT / "infra" / "rabbitmq" / "cluster-node.sh"
IMAGE = "hotrepos:local"
# Started by `docker compose run`, never by `up`: the command line, as the operator.
RUN_ONLY = {"cli"}
# A published port: 127.0.0.1, then the host port from a variable whose default is the container's port.
PUBLISHED = re.compile(r"^127\.0\.0\.1:\$\{(?P<variable>[A-Z0-9_]+_HOST_PORT):-(?P<default>\d+)\}:(?P<port>\d+)$")

SETTINGS_OF: dict[str, type[BaseSettings]] = {
    "fetcher": FetcherSettings,
    "fetcher-beat": FetcherSettings,
    "aggregator": CommonSettings,
    "exporter": ExporterSettings,
    "notifier": NotifierSettings,
    "gateway": GatewaySettings,
    "webhooks": WebhooksSettings,
}
# Settings a container may leave to their defaults, and why.
MAY_BE_ABSENT = {
    "AMQP_CA_FILE",
    "AMQP_CERT_FILE",
    "AMQP_KEY_FILE",  # given by compose.tls.yaml
    "LOG_DIR",  # containers log to stdout
    "TODAY",
    "GATEWAY_DEBUG_FAULTS",  # tests and demos only
}


def load(name: str) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((ROOT / name).read_text())
    return document


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load("compose.yaml")


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_compose_files_validate_against_the_compose_specification(name: str) -> None:
    validator = jsonschema.Draft201909Validator(SCHEMA)
    assert [error.message for error in validator.iter_errors(load(name))] == []


def test_the_schema_rejects_what_compose_would() -> None:
    validator = jsonschema.Draft201909Validator(SCHEMA)
    broken = {"services": {"fetcher": {"image": "x", "healthcheck": {"test": "true", "intervall": "5s"}}}}
    assert list(validator.iter_errors(broken))


def all_users() -> list[str]:
    return [user["name"] for user in build_definitions()["users"]]


def test_every_long_running_service_has_a_healthcheck(services: dict[str, dict[str, Any]]) -> None:
    one_shots = {
        name
        for spec in services.values()
        for name, dependency in (spec.get("depends_on") or {}).items()
        if dependency.get("condition") == "service_completed_successfully"
    }
    assert one_shots == {"rabbitmq-init"}
    for name, spec in services.items():
        if name in one_shots | RUN_ONLY:
            assert spec["restart"] == "no"
            continue
        healthcheck = spec.get("healthcheck") or {}
        assert healthcheck.get("test") and not healthcheck.get("disable"), name


def test_services_wait_for_a_healthy_broker_and_redis(services: dict[str, dict[str, Any]]) -> None:
    for name, spec in services.items():
        environment = spec.get("environment") or {}
        needs = {"rabbitmq": "AMQP_URL" in environment, "redis": "REDIS_URL" in environment}
        for dependency, needed in needs.items():
            if needed:
                condition = (spec.get("depends_on") or {}).get(dependency, {}).get("condition")
                assert condition == "service_healthy", (name, dependency)


def test_scalable_services_pin_no_container_name_and_no_host_port(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) >= SCALABLE
    for name in SCALABLE:
        assert "container_name" not in services[name], name
        assert "ports" not in services[name], name
        assert "hostname" not in services[name], name
    # Two beats share one lock in Redis: one fires each due run, the other takes over if it dies.
    assert "container_name" not in services["fetcher-beat"]
    assert services["fetcher-beat"]["deploy"]["replicas"] >= 2


def test_each_service_logs_in_as_its_own_broker_user(services: dict[str, dict[str, Any]]) -> None:
    with_broker = {name for name, spec in services.items() if "AMQP_URL" in (spec.get("environment") or {})}
    assert with_broker == {*principals(), "cli"}
    user_of = {service: service for service in principals()} | {"cli": OPERATOR}
    for service, user in user_of.items():
        url = services[service]["environment"]["AMQP_URL"]
        expected = (
            f"${{AMQP_SCHEME:-amqp}}://{user}:${{{password_variable(user)}:?set it in .env}}"
            f"@rabbitmq:${{AMQP_PORT:-5672}}/{VHOST}"
        )
        assert url == expected
    assert "guest" not in (ROOT / "compose.yaml").read_text()


def test_the_cli_service_runs_only_on_demand_as_the_operator(services: dict[str, dict[str, Any]]) -> None:
    cli = services["cli"]
    assert cli["profiles"] == ["cli"] and cli["restart"] == "no"
    assert cli["command"][0] == "hotrepos"
    assert "reports:/var/lib/hotrepos/reports:ro" in cli["volumes"]


def test_one_service_builds_the_image_and_the_others_never_pull_it(services: dict[str, dict[str, Any]]) -> None:
    builders = {name for name, spec in services.items() if "build" in spec}
    assert builders == {"rabbitmq-init"}
    assert services["rabbitmq-init"]["build"] == {"context": ".", "dockerfile": "infra/docker/Dockerfile"}
    ours = {name for name, spec in services.items() if spec.get("image") == IMAGE}
    assert ours >= {*principals(), "fake-github", "cli", "rabbitmq-init"}
    for name in ours:
        assert services[name]["pull_policy"] == "never", name
    # A service that runs the image but is not started after its build would find no image.
    for name in ours - builders - RUN_ONLY:
        assert name == "fake-github" or "rabbitmq" in services[name]["depends_on"], name


@pytest.mark.parametrize("name", PUBLISHING_FILES)
def test_every_published_host_port_comes_from_a_variable_defaulting_to_the_port(name: str) -> None:
    published = [
        (service, port) for service, spec in load(name)["services"].items() for port in (spec or {}).get("ports", ())
    ]
    assert published
    variables = []
    for service, port in published:
        found = PUBLISHED.match(port)
        assert found is not None, (service, port)
        assert found["default"] == found["port"], (service, port)
        variables.append(found["variable"])
    assert len(set(variables)) == len(variables)  # one variable per port, so each can move alone


def test_the_init_step_gets_every_users_password_and_nothing_else(services: dict[str, dict[str, Any]]) -> None:
    init = services["rabbitmq-init"]
    assert set(init["environment"]) == {password_variable(user) for user in all_users()}
    assert services["rabbitmq"]["depends_on"]["rabbitmq-init"]["condition"] == "service_completed_successfully"


def test_every_service_environment_names_the_settings_it_needs(services: dict[str, dict[str, Any]]) -> None:
    for service, settings in SETTINGS_OF.items():
        environment = set(services[service]["environment"])
        known = {name.upper() for name in settings.model_fields}
        assert environment <= known, (service, environment - known)
        assert known - MAY_BE_ABSENT <= environment, (service, known - MAY_BE_ABSENT - environment)


def test_the_tls_overlay_covers_every_service_with_a_broker_user() -> None:
    overlay = load("compose.tls.yaml")["services"]
    assert set(overlay) == {*principals(), "cli", "rabbitmq"}
    for service in (*principals(), "cli"):
        assert set(overlay[service]["environment"]) == {"AMQP_CA_FILE", "AMQP_CERT_FILE", "AMQP_KEY_FILE"}


def test_exporter_and_gateway_share_the_reports_volume(services: dict[str, dict[str, Any]]) -> None:
    for service, mode in (("exporter", ""), ("gateway", ":ro")):
        reports_dir = services[service]["environment"]["REPORTS_DIR"]
        assert f"reports:{reports_dir}{mode}" in services[service]["volumes"]


def test_every_variable_compose_reads_is_in_env_example() -> None:
    # Documented counts, commented out or not: an optional setting may stay unset.
    example = set(re.findall(r"^#? ?([A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), re.M))
    used = set()
    for name in COMPOSE_FILES:
        used |= set(re.findall(r"\$\{([A-Z0-9_]+)", (ROOT / name).read_text()))
    assert used - example == set()


def test_definitions_json_is_generated_from_the_contract() -> None:
    assert DEFINITIONS_FILE.read_text() == render(build_definitions()), (
        "stale: run python -m infra.rabbitmq.definitions"
    )
    committed = json.loads(DEFINITIONS_FILE.read_text())
    assert all(user["password_hash"] == "" for user in committed["users"])  # no secret in the repository
    assert "guest" not in {user["name"] for user in committed["users"]}


def test_the_compose_guide_shows_the_generated_users_table() -> None:
    assert users_table() in (ROOT / "docs" / "compose.md").read_text()


# ----------------------------------------------------------------------------------------------
# The broker cluster: compose.cluster.yaml on top of compose.yaml, with the profile "cluster"


def cluster_members() -> list[str]:
    """The node names infra/rabbitmq/cluster.conf lists, in its order."""
    found = re.findall(r"^cluster_formation\.classic_config\.nodes\.\d+ *= *(\S+)$", CLUSTER_CONF.read_text(), re.M)
    return list(found)


@pytest.fixture(scope="module")
def cluster() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = load("compose.cluster.yaml")["services"]
    return found


def cluster_nodes(services: dict[str, dict[str, Any]], cluster: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Each broker node's compose service and its host name, base and overlay merged."""
    nodes = {}
    for name, spec in cluster.items():
        merged = {**services.get(name, {}), **spec}
        if str(merged.get("image", "")).startswith("rabbitmq:"):
            nodes[name] = merged["hostname"]
    return nodes


def test_the_cluster_is_three_nodes_with_the_names_cluster_conf_lists(
    services: dict[str, dict[str, Any]], cluster: dict[str, dict[str, Any]]
) -> None:
    assert "cluster_formation.peer_discovery_backend = classic_config" in CLUSTER_CONF.read_text()
    nodes = cluster_nodes(services, cluster)
    assert list(nodes) == ["rabbitmq", "rabbitmq-2", "rabbitmq-3"]
    # A node's name decides where its data is: a host name that changed would start a blank node.
    assert cluster_members() == [f"rabbit@{host}" for host in nodes.values()]
    # The first is compose.yaml's own broker, clustered; the profile starts the two others.
    assert "profiles" not in cluster["rabbitmq"]
    for name in ("rabbitmq-2", "rabbitmq-3"):
        assert cluster[name]["profiles"] == ["cluster"]


def test_every_node_shares_the_cookie_the_settings_and_the_users_but_not_its_data(
    services: dict[str, dict[str, Any]], cluster: dict[str, dict[str, Any]]
) -> None:
    script = CLUSTER_SCRIPT.read_text()
    conf_target = re.search(r"^CLUSTER_CONF=(\S+)$", script, re.M)
    assert conf_target is not None
    data_volumes = set()
    for name in cluster_nodes(services, cluster):
        spec = cluster[name]
        mounts = {*services.get(name, {}).get("volumes", ()), *spec["volumes"]}
        targets = {mount.split(":")[1]: mount.split(":")[0] for mount in mounts}
        assert targets[conf_target[1]] == "./infra/rabbitmq/cluster.conf", name
        assert targets["/etc/rabbitmq/conf.d/20-hotrepos.conf"] == "./infra/rabbitmq/rabbitmq.conf", name
        assert targets["/etc/rabbitmq/hotrepos"] == "broker-definitions", name
        script_target = next(target for target, source in targets.items() if source.endswith("cluster-node.sh"))
        assert spec["command"] == ["sh", script_target, "start"], name
        assert spec["healthcheck"]["test"] == ["CMD", "sh", script_target, "healthy"], name
        assert spec["environment"]["HOTREPOS_ERLANG_COOKIE"].startswith("${RABBITMQ_ERLANG_COOKIE:?"), name
        # Each node's definitions come from the one-shot; no node waits for another in compose, so a
        # node with data that comes back first is never held behind one that waits for it.
        assert set(spec["depends_on"]) == {"rabbitmq-init"}, name
        data_volumes.add(targets["/var/lib/rabbitmq"])
    assert len(data_volumes) == 3


def test_in_the_cluster_every_service_has_every_node_and_waits_for_all_three(
    services: dict[str, dict[str, Any]], cluster: dict[str, dict[str, Any]]
) -> None:
    hosts = list(cluster_nodes(services, cluster).values())
    with_broker = {name for name, spec in services.items() if "AMQP_URL" in (spec.get("environment") or {})}
    assert with_broker <= set(cluster)
    for name in with_broker:
        single = services[name]["environment"]["AMQP_URL"]
        failover = cluster[name]["environment"]["AMQP_URL"]
        assert failover == ";".join(single.replace("@rabbitmq:", f"@{host}:") for host in hosts), name
        assert cluster[name]["depends_on"] == {host: {"condition": "service_healthy"} for host in hosts}, name


def test_the_services_settings_accept_the_clusters_failover_url(cluster: dict[str, dict[str, Any]]) -> None:
    url = re.sub(
        r"\$\{(\w+):[-?][^}]*\}",
        lambda m: {"AMQP_SCHEME": "amqp", "AMQP_PORT": "5672"}.get(m[1], "secret"),
        cluster["fetcher"]["environment"]["AMQP_URL"],
    )
    settings = CommonSettings(amqp_url=url)
    assert [part.split("@")[1].split("/")[0] for part in settings.amqp_url.split(";")] == [
        "rabbitmq:5672",
        "rabbitmq-2:5672",
        "rabbitmq-3:5672",
    ]
