"""Handlers are pure: importing a service's handlers loads no transport, no Redis client and no metrics."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support.services import ROOT

FORBIDDEN = ("kombu", "amqp", "redis", "celery", "prometheus_client")


@pytest.mark.parametrize("service", ["fetcher", "aggregator", "exporter", "notifier", "gateway", "webhooks"])
def test_a_service_s_handlers_import_no_transport_redis_or_metrics(service: str) -> None:
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import services.{service}.handlers"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    # -X importtime writes one line per module: "import time: self | cumulative | <indent>name".
    loaded = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert f"services.{service}.handlers" in loaded
    assert not {name for name in loaded if name.split(".")[0] in FORBIDDEN}, f"services.{service}.handlers loads them"
