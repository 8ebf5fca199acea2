#!/usr/bin/env bash
# The test suite starts its own redis-server, checks /metrics with promtool and drives the
# dashboard in headless Chromium; install them (Debian packages redis-server, prometheus,
# chromium and chromium-driver) when they are missing.
set -euo pipefail
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v promtool >/dev/null || missing+=(prometheus)
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
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
for tool in redis-server promtool chromium chromedriver; do command -v "$tool" >/dev/null; done
