"""Fixtures: a real broker (a vhost per test), Redis, an SMTP sink, the fake GitHub, the services."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fake_github import FakeGitHub
from tests.support.broker import Broker, test_broker, test_redis
from tests.support.pipeline import Pipeline, running_pipeline
from tests.support.smtp import SmtpSink

TODAY = dt.date(2026, 11, 22)


TIERS = ("unit", "integration", "e2e", "chaos", "deploy")
# Minutes of engine set-up and image builds: run on purpose (-m deploy, scripts/test-deploy.sh), never by default.
ON_PURPOSE_ONLY = "deploy"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        for tier in TIERS:
            if f"/tests/{tier}/" in str(item.fspath):
                item.add_marker(getattr(pytest.mark, tier))
    if _asked_for_on_purpose(config):
        return
    deselected = [item for item in items if item.get_closest_marker(ON_PURPOSE_ONLY)]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if not item.get_closest_marker(ON_PURPOSE_ONLY)]


def _asked_for_on_purpose(config: pytest.Config) -> bool:
    """-m names the tier (pytest's own -m filter then decides), or an argument is a path inside it."""
    if ON_PURPOSE_ONLY in (config.option.markexpr or ""):
        return True
    folder = Path(__file__).parent / ON_PURPOSE_ONLY
    named = (config.invocation_params.dir / arg.split("::")[0] for arg in config.args)
    return any(path.resolve().is_relative_to(folder) for path in named)


@pytest.fixture(scope="session")
def broker() -> Iterator[Broker]:
    with test_broker() as found:
        yield found


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    with test_redis() as url:
        yield url


@pytest.fixture
def vhost(broker: Broker) -> Iterator[str]:
    with broker.vhost() as name:
        yield name


@pytest.fixture
def amqp_url(broker: Broker, vhost: str) -> str:
    return broker.amqp_url(vhost)


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    sink = SmtpSink().start()
    yield sink
    sink.stop()


@pytest.fixture(scope="module")
def module_smtp_sink() -> Iterator[SmtpSink]:
    sink = SmtpSink().start()
    yield sink
    sink.stop()


@pytest.fixture(scope="module")
def module_fake_github() -> Iterator[FakeGitHub]:
    with FakeGitHub(port=0, seed=7, today=TODAY) as github:
        yield github


@pytest.fixture
def fake_github(module_fake_github: FakeGitHub) -> FakeGitHub:
    module_fake_github.reset()
    return module_fake_github


@pytest.fixture(scope="module")
def pipeline(
    broker: Broker,
    redis_url: str,
    module_fake_github: FakeGitHub,
    module_smtp_sink: SmtpSink,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Pipeline]:
    """All four pipeline services as processes, on a vhost of their own, shared by a test module."""
    with running_pipeline(
        broker, redis_url, module_fake_github.url, module_smtp_sink.port, tmp_path_factory.mktemp("pipeline"), TODAY
    ) as running:
        yield running
