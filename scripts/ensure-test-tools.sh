#!/usr/bin/env bash
# The test suite starts its own redis-server and checks /metrics with promtool; install
# them (Debian packages redis-server and prometheus) when they are missing.
set -euo pipefail
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v promtool >/dev/null || missing+=(prometheus)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ]; then
    sudo=()
elif command -v sudo >/dev/null; then
    sudo=(sudo)
else
    echo "ensure-test-tools: missing ${missing[*]}; install them (apt-get install ${missing[*]})" >&2
    exit 1
fi
"${sudo[@]}" apt-get update -qq
# the packages start system services where systemd runs; the tests use their own servers
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
command -v redis-server >/dev/null && command -v promtool >/dev/null
