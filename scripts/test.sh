#!/usr/bin/env bash
# Set up, then check style and types, then run every test tier (unit, integration, e2e, reduced chaos)
# against the real services. Arguments go to pytest: scripts/test.sh -m unit, scripts/test.sh tests/e2e.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
echo "test: ruff check"
.venv/bin/ruff check .
echo "test: ruff format --check"
.venv/bin/ruff format --check .
echo "test: mypy"
.venv/bin/mypy
# Two workers, one per core: most of a test's time is spent waiting on processes, brokers and faults,
# so the tiers nearly halve their wall time. Each worker takes whole modules (their pipelines start once)
# and has a Redis database of its own. TEST_WORKERS=0 runs in one process.
exec .venv/bin/python -m pytest -n "${TEST_WORKERS:-2}" --dist loadscope "$@"
