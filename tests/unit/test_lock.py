"""One lock for every environment: uv.lock matches pyproject.toml, and the venv and the image install it."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
UV = Path(sys.executable).with_name("uv")
PYPROJECT: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())
LOCK: dict[str, Any] = tomllib.loads((ROOT / "uv.lock").read_text())


def uv(*args: str) -> subprocess.CompletedProcess[str]:
    # Offline: whether the lock fits pyproject.toml is a question about this repository, not about PyPI today.
    return subprocess.run(
        [str(UV), *args, "--offline"], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )


def locked() -> dict[str, dict[str, Any]]:
    return {canonicalize_name(package["name"]): package for package in LOCK["package"]}


def test_the_lock_matches_pyproject() -> None:
    result = uv("lock", "--check")
    assert result.returncode == 0, f"uv.lock is stale: run scripts/lock.sh\n{result.stderr}"


def test_the_installer_is_the_locked_uv_installed_by_its_hashes() -> None:
    exported = uv("export", "--frozen", "--only-group", "lock", "--no-emit-project", "--format", "requirements-txt")
    assert exported.returncode == 0, exported.stderr
    committed = (ROOT / "scripts" / "uv-requirements.txt").read_text()
    assert _requirements(committed) == _requirements(exported.stdout), "stale: run scripts/lock.sh"
    assert "--hash=sha256:" in committed
    required = PYPROJECT["tool"]["uv"]["required-version"]
    assert required == f"=={locked()['uv']['version']}"


def test_the_venv_holds_exactly_the_locked_versions() -> None:
    packages = locked()
    for distribution in metadata.distributions():
        name = canonicalize_name(distribution.metadata["Name"])
        if name == "hotrepos":
            continue
        assert name in packages, f"{name} is installed but not locked: install with scripts/bootstrap.sh"
        assert distribution.version == packages[name]["version"], name


def test_every_direct_dependency_is_pinned_and_locked_at_its_pin() -> None:
    packages = locked()
    groups = PYPROJECT["dependency-groups"]
    declared = [*PYPROJECT["project"]["dependencies"]]
    declared += [line for group in groups.values() for line in group if isinstance(line, str)]
    for line in declared:
        requirement = Requirement(line)
        pins = [spec.version for spec in requirement.specifier if spec.operator == "=="]
        assert pins, f"{line}: pin it with ==, the lock then holds what the tests ran with"
        assert packages[canonicalize_name(requirement.name)]["version"] == pins[0], line


@pytest.mark.parametrize("python", ["3.11.0", "3.11.2", "3.11.7", "3.12.0", "3.13.0"])
def test_every_interpreter_that_requires_python_admits_gets_what_its_packages_need(python: str) -> None:
    # redis needs async-timeout below 3.11.3: the image's Python 3.11.2 died without it.
    environment = {"python_full_version": python, "python_version": ".".join(python.split(".")[:2])}
    packages = locked()
    wanted = {canonicalize_name(Requirement(line).name) for line in PYPROJECT["project"]["dependencies"]}
    closure: set[str] = set()
    while wanted:
        name = wanted.pop()
        if name in closure:
            continue
        closure.add(name)
        for dependency in packages[name].get("dependencies", []):
            marker = dependency.get("marker")
            if marker is None or Marker(marker).evaluate({**_linux(), **environment}):
                assert canonicalize_name(dependency["name"]) in packages, dependency
                wanted.add(canonicalize_name(dependency["name"]))
    assert ("async-timeout" in closure) == (tuple(map(int, python.split("."))) < (3, 11, 3))
    assert LOCK["requires-python"] == PYPROJECT["project"]["requires-python"]


def test_the_image_installs_the_lock_and_nothing_else() -> None:
    dockerfile = (ROOT / "infra" / "docker" / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim", dockerfile, re.M)
    assert "pip install --require-hashes --no-deps --requirement /tmp/uv-requirements.txt" in dockerfile
    assert "uv sync --frozen --no-dev --no-install-project" in dockerfile
    assert "pip install" not in dockerfile.replace(
        "pip install --require-hashes --no-deps --requirement /tmp/uv-requirements.txt", ""
    )
    users = re.findall(r"^USER (\S+)", dockerfile, re.M)
    assert users and users[-1] not in ("root", "0")
    assert not re.search(r"(PASSWORD|TOKEN)\s*=", dockerfile)


def test_bootstrap_installs_the_lock_without_resolving() -> None:
    bootstrap = (ROOT / "scripts" / "bootstrap.sh").read_text()
    assert "scripts/uv.sh sync --frozen" in bootstrap
    assert "pip install" not in bootstrap


def _requirements(text: str) -> str:
    # The header names the command that wrote the file; the pins and hashes are what must agree.
    return "\n".join(line for line in text.splitlines() if not line.startswith("#"))


def _linux() -> dict[str, str]:
    return {
        "sys_platform": "linux",
        "platform_system": "Linux",
        "os_name": "posix",
        "platform_machine": "x86_64",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
    }
