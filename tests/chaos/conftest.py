"""Chaos-tier fixtures: sizes, a RabbitMQ node of the test's own, and a per-test figures name."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.chaos import ChaosSizes, chaos_sizes
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
