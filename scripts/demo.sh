#!/usr/bin/env bash
# One report end to end, offline: local broker and Redis, the bundled fake GitHub, a local SMTP sink.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec .venv/bin/python -m infra.demo "$@"
