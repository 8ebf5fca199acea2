#!/usr/bin/env bash
# The test suite starts its own redis-server; install it when it is missing (Debian).
set -euo pipefail
command -v redis-server >/dev/null && exit 0
if [ "$(id -u)" -eq 0 ]; then
    apt-get update -qq && apt-get install -y -qq redis-server >/dev/null
elif command -v sudo >/dev/null; then
    sudo apt-get update -qq && sudo apt-get install -y -qq redis-server >/dev/null
else
    echo "ensure-redis: redis-server is missing; install it (apt-get install redis-server)" >&2
    exit 1
fi
# the package starts a system service on 6379; the tests use their own server instead
command -v redis-server >/dev/null
