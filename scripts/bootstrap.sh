#!/usr/bin/env bash
# Prepare a fresh machine: the local broker and Redis running, .venv holding exactly uv.lock.
set -euo pipefail
cd "$(dirname "$0")/.."

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  for _ in $(seq 1 60); do port_open "$1" && return 0; sleep 1; done
  echo "bootstrap: nothing answers on 127.0.0.1:$1" >&2; return 1
}

if [ -z "${AMQP_URL:-}" ]; then
  if ! port_open 5672; then
    echo "bootstrap: starting RabbitMQ"
    rabbitmq-server -detached
    wait_port 5672
  fi
  # The tests create a throwaway vhost per test through the management API.
  if ! port_open 15672; then
    rabbitmq-plugins enable rabbitmq_management >/dev/null
    wait_port 15672
  fi
fi
if [ -z "${REDIS_URL:-}" ] && ! port_open 6379; then
  echo "bootstrap: starting Redis"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
  wait_port 6379
fi

# The browser test drives Debian's Chromium; it is installed only where this script may install it.
if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "bootstrap: installing chromium for the browser test"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi

# Exactly the lock, runtime and dev groups: nothing is resolved here, so a release upstream changes
# nothing until scripts/lock.sh moves the lock. --frozen fails rather than re-lock a stale uv.lock.
scripts/uv.sh sync --frozen --quiet --python "${PYTHON:-python3}"
