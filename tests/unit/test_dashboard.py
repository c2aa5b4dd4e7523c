"""The Grafana dashboard and the Prometheus configuration query only what the code exposes."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from infra.runner import OPTIONAL_SERVICES, SERVICES
from shared import metrics

ROOT = Path(__file__).resolve().parents[2]
OBSERVABILITY = ROOT / "infra" / "observability"
DASHBOARD = OBSERVABILITY / "grafana" / "dashboards" / "hotrepos.json"
PROMETHEUS = OBSERVABILITY / "prometheus.yml"
METRICS_PORT = 9100

# Not ours: the names the rabbitmq_prometheus plugin (per-object endpoint) and Prometheus itself expose.
EXTERNAL_METRICS: dict[str, set[str]] = {
    "rabbitmq_queue_messages": {"vhost", "queue"},
    "rabbitmq_queue_messages_ready": {"vhost", "queue"},
    "rabbitmq_queue_messages_unacked": {"vhost", "queue"},
    "up": set(),
}
# Labels that Prometheus adds to every scraped series.
TARGET_LABELS = {"job", "instance"}
NOT_METRICS = {
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "rate",
    "irate",
    "increase",
    "delta",
    "histogram_quantile",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "offset",
    "bool",
    "topk",
    "bottomk",
    "abs",
    "clamp_min",
    "clamp_max",
    "round",
    "vector",
    "scalar",
    "time",
    "absent",
    "label_replace",
    "sort",
    "sort_desc",
    "avg_over_time",
    "max_over_time",
    "min_over_time",
}


def exposed_metrics() -> dict[str, set[str]]:
    """Every series name the code exposes, with its label names, as Prometheus sees them."""
    exposed: dict[str, set[str]] = {}
    for metric in vars(metrics).values():
        if not isinstance(metric, MetricWrapperBase):
            continue
        name, labels = metric._name, set(metric._labelnames)
        suffixes = {"counter": ["_total"], "gauge": [""], "histogram": ["_bucket", "_sum", "_count"]}
        for suffix in suffixes[str(metric._type)]:
            exposed[name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return exposed


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (not functions, keywords, labels or variables)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]|\$\w+", " ", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = re.findall(r"(?<![\w:.])[A-Za-z_:][\w:]*\b(?!\s*\()", expr)
    return {name for name in names if name not in NOT_METRICS}


def label_names(expr: str) -> set[str]:
    """The label names an expression matches on or groups by."""
    found: set[str] = set()
    for body in re.findall(r"\{([^}]*)\}", expr):
        found |= set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", body))
    for body in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
        found |= {label.strip() for label in body.split(",") if label.strip()}
    return found


def load_dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return loaded


def queries() -> list[tuple[str, str]]:
    return [(panel["title"], target["expr"]) for panel in load_dashboard()["panels"] for target in panel["targets"]]


def test_the_extraction_sees_a_metric_that_does_not_exist() -> None:
    assert metric_names('sum by (job) (rate(hotrepos_nope_total{outcome="x"}[5m])) * 60') == {"hotrepos_nope_total"}
    assert label_names('sum by (job, le) (rate(a_total{outcome=~"x|y"}[5m]))') == {"job", "le", "outcome"}
    assert "hotrepos_nope_total" not in exposed_metrics()


@pytest.mark.parametrize(("title", "expr"), queries())
def test_every_query_reads_metrics_and_labels_that_exist(title: str, expr: str) -> None:
    known = {**exposed_metrics(), **EXTERNAL_METRICS}
    names = metric_names(expr)
    assert names, f"{title}: no metric found in {expr!r}"
    missing = names - set(known)
    assert not missing, f"{title}: {sorted(missing)} is exposed by no code (see shared/metrics.py)"
    allowed = set().union(*(known[name] for name in names)) | TARGET_LABELS
    unknown = label_names(expr) - allowed
    assert not unknown, f"{title}: no metric of {sorted(names)} has the labels {sorted(unknown)}"


def test_the_dashboard_shows_what_the_operators_asked_for() -> None:
    dashboard = load_dashboard()
    titles = " | ".join(panel["title"] for panel in dashboard["panels"]).lower()
    for wanted in (
        "reports per minute",
        "p50 / p95",
        "queue depths",
        "dead letters",
        "rate limit remaining",
        "errors by service",
    ):
        assert wanted in titles
    assert dashboard["uid"] == "hotrepos"


def test_the_dashboard_is_well_formed_for_grafana() -> None:
    dashboard = load_dashboard()
    datasources = yaml.safe_load(
        (OBSERVABILITY / "grafana" / "provisioning" / "datasources" / "prometheus.yaml").read_text()
    )["datasources"]
    [prometheus] = [d for d in datasources if d["type"] == "prometheus"]
    panels = dashboard["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    assert isinstance(dashboard["schemaVersion"], int)
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["w"] > 0 and grid["h"] > 0, panel["title"]
        assert panel["datasource"]["uid"] == prometheus["uid"], panel["title"]
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(set(ref_ids)) == len(ref_ids), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == prometheus["uid"]


def test_grafana_loads_the_dashboard_from_where_it_is_mounted() -> None:
    provider = yaml.safe_load(
        (OBSERVABILITY / "grafana" / "provisioning" / "dashboards" / "hotrepos.yaml").read_text()
    )["providers"][0]
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./infra/observability/grafana/dashboards:{provider['options']['path']}:ro" in mounts
    assert "./infra/observability/grafana/provisioning:/etc/grafana/provisioning:ro" in mounts
    assert (
        "./infra/observability/prometheus.yml:/etc/prometheus/prometheus.yml:ro"
        in (compose["services"]["prometheus"]["volumes"])
    )
    assert "observability" in compose["services"]["grafana"]["profiles"]


def test_prometheus_scrapes_every_service_and_the_broker() -> None:
    jobs = {job["job_name"]: job for job in yaml.safe_load(PROMETHEUS.read_text())["scrape_configs"]}
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
    with_metrics = {name for name, spec in compose.items() if "METRICS_PORT" in (spec.get("environment") or {})}
    assert set(SERVICES) | set(OPTIONAL_SERVICES) <= with_metrics
    for service in with_metrics:
        assert int(compose[service]["environment"]["METRICS_PORT"]) == METRICS_PORT
        [discovery] = jobs[service]["dns_sd_configs"]
        assert discovery["names"] == [service] and discovery["type"] == "A" and discovery["port"] == METRICS_PORT
    assert jobs["rabbitmq"]["metrics_path"] == "/metrics/per-object"
    assert jobs["rabbitmq"]["static_configs"][0]["targets"] == ["rabbitmq:15692"]
