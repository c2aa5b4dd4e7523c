#!/usr/bin/env bash
# Re-lock after a change to pyproject.toml, or upgrade on purpose; then run scripts/test.sh.
#   scripts/lock.sh                              # lock what pyproject.toml now asks for
#   scripts/lock.sh --upgrade-package idna       # move one package to its newest allowed release
#   scripts/lock.sh --upgrade                    # move everything
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/uv.sh lock "$@"
# The installer is locked too: bootstrap.sh and the image install it by these hashes before anything else.
scripts/uv.sh export --frozen --only-group lock --no-emit-project --format requirements-txt \
  --output-file scripts/uv-requirements.txt >/dev/null
echo "lock: uv.lock and scripts/uv-requirements.txt written; scripts/bootstrap.sh installs them"
