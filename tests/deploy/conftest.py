"""The deploy tier's stack: built once, brought up once, torn down with its volumes whatever happened."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy.stack import ROOT, UP, ComposeStack, EngineUnavailable, check_engine

FIGURES_FILE = ROOT / "test-artifacts" / "deploy-figures.json"


class Figures:
    """What the tier measured, in the order measured: printed at the end of the run, and kept as JSON."""

    def __init__(self) -> None:
        self.rows: dict[str, str] = {}

    def record(self, name: str, value: str) -> None:
        self.rows[name] = value

    def seconds(self, name: str, started: float) -> float:
        elapsed = time.monotonic() - started
        self.record(name, f"{elapsed:.1f} s")
        return elapsed


FIGURES = Figures()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not FIGURES.rows:
        return
    terminalreporter.section("deploy: what the stack did on this engine")
    width = max(len(name) for name in FIGURES.rows)
    for name, value in FIGURES.rows.items():
        terminalreporter.write_line(f"{name:<{width}}  {value}")
    Path(FIGURES_FILE).parent.mkdir(parents=True, exist_ok=True)
    FIGURES_FILE.write_text(json.dumps(FIGURES.rows, indent=2) + "\n")
    terminalreporter.write_line(f"(also in {FIGURES_FILE.relative_to(ROOT)})")


@pytest.fixture(scope="session")
def figures() -> Figures:
    return FIGURES


@pytest.fixture(scope="session")
def engine(figures: Figures) -> str:
    try:
        versions = check_engine()
    except EngineUnavailable as exc:
        unavailable = str(exc)
    else:
        figures.record("engine", versions)
        return versions
    pytest.fail(unavailable, pytrace=False)


@pytest.fixture(scope="session")
def stack(engine: str, figures: Figures, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComposeStack]:
    """The offline profile, every service healthy; built once, before anything starts."""
    tier_started = time.monotonic()
    stack = ComposeStack(tmp_path_factory.mktemp("compose"))
    figures.record("compose project", stack.project)
    try:
        started = time.monotonic()
        built = stack.compose("build", timeout=1200)
        figures.seconds("docker compose build", started)
        stack.build_log = built.stdout + built.stderr
        started = time.monotonic()
        stack.compose(*UP)
        stack.wait_healthy(stack.expected_containers())
        figures.seconds("up to every service healthy", started)
        yield stack
    finally:
        stack.compose("down", "--volumes", "--remove-orphans", "--timeout", "20", check=False)
        figures.seconds("whole tier (build, up, every check, down -v)", tier_started)
