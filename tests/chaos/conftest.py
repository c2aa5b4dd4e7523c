"""Chaos-tier fixtures: sizes, a RabbitMQ node of the test's own, figures names, and the services'
logs kept in test-artifacts/chaos/ when a test fails."""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Generator, Iterator
from typing import Any

import pytest

from tests.support.chaos import ARTIFACTS, ChaosSizes, chaos_sizes
from tests.support.pipeline import PIPELINE_LOG_DIRS
from tests.support.rabbit_node import RabbitNode, rabbitmq_available


@pytest.fixture(scope="session")
def sizes() -> ChaosSizes:
    return chaos_sizes()


@pytest.fixture
def rabbit_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitNode]:
    """A broker this test alone may stop and start; the shared one is never touched."""
    if not rabbitmq_available():
        pytest.fail("the broker-restart test needs rabbitmq-server and rabbitmqctl installed")
    node = RabbitNode(tmp_path_factory.mktemp("rabbit-node"))
    try:
        yield node.start()
    finally:
        node.stop()


@pytest.fixture
def figures_name(request: pytest.FixtureRequest) -> str:
    return str(request.node.name)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.stash[_FAILED] = report.failed and not hasattr(report, "wasxfail")


_FAILED = pytest.StashKey[bool]()


@pytest.fixture(autouse=True)
def chaos_logs(request: pytest.FixtureRequest) -> Iterator[None]:
    # Reconnection attempts during a deliberate outage are expected: pika need not log each one.
    pika_logger = logging.getLogger("pika")
    level = pika_logger.level
    pika_logger.setLevel(logging.CRITICAL)
    started_with = len(PIPELINE_LOG_DIRS)
    yield
    pika_logger.setLevel(level)
    if request.node.stash.get(_FAILED, False):
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", request.node.name).strip("_")
        shutil.rmtree(ARTIFACTS / f"{name}.logs", ignore_errors=True)  # no stale logs of an earlier run
        # This test's pipelines, or the module's shared one when it started none of its own.
        for log_dir in PIPELINE_LOG_DIRS[started_with:] or PIPELINE_LOG_DIRS[-1:]:
            if log_dir.exists():
                shutil.copytree(log_dir, ARTIFACTS / f"{name}.logs" / log_dir.parent.name, dirs_exist_ok=True)
