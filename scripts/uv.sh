#!/usr/bin/env bash
# The project's pinned uv, installed by hash into .tools/uv on first use: scripts/uv.sh lock, sync, ...
set -euo pipefail
cd "$(dirname "$0")/.."
TOOL=.tools/uv
want="uv $(sed -n 's/^uv==\([^ ]*\).*/\1/p' scripts/uv-requirements.txt)"
if [ "$("$TOOL/bin/uv" --version 2>/dev/null | cut -d' ' -f1-2)" != "$want" ]; then
  rm -rf "$TOOL"
  "${PYTHON:-python3}" -m venv "$TOOL"
  "$TOOL/bin/python" -m pip install --quiet --disable-pip-version-check --require-hashes --no-deps \
    --requirement scripts/uv-requirements.txt
fi
# Never a downloaded interpreter: the venv uses the machine's Python, as the image uses its own.
export UV_PYTHON_DOWNLOADS=never
exec "$TOOL/bin/uv" "$@"
