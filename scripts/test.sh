#!/usr/bin/env bash
# Set up, then run every test tier (unit, integration, e2e, reduced chaos) against the real services.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec .venv/bin/python -m pytest "$@"
