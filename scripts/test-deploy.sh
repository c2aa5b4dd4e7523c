#!/usr/bin/env bash
# The deploy tier: docker compose on a real engine. Starts the engine kit if no engine answers, runs
# `pytest -m deploy` (pass more pytest arguments after it), then stops the engine it started: the engine
# keeps the cores busy. Not part of scripts/test.sh: about 4 min of engine set-up on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."
ENGINE_KIT=${HOTREPOS_ENGINE_KIT:-../shared/containers/engine.sh}
scripts/bootstrap.sh

started_engine=no
if ! docker version >/dev/null 2>&1; then
  [ -x "$ENGINE_KIT" ] || { echo "test-deploy: no Docker engine answers and there is no engine kit at $ENGINE_KIT" >&2; exit 1; }
  begun=$SECONDS
  "$ENGINE_KIT" up "$PWD"
  echo "test-deploy: engine set-up took $((SECONDS - begun)) s"
  started_engine=yes
fi
stop_engine() { if [ "$started_engine" = yes ]; then "$ENGINE_KIT" down; fi; }
trap stop_engine EXIT

begun=$SECONDS
status=0
.venv/bin/python -m pytest -m deploy "$@" || status=$?
echo "test-deploy: the deploy tier took $((SECONDS - begun)) s"
exit "$status"
