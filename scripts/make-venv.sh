#!/usr/bin/env bash
# Create the project's virtual environment at $2 with the Python $1 (>= 3.11).
# Stock Debian ships Python without ensurepip; then python3-venv is installed with
# apt-get when we are root, or the command to run is printed.
set -euo pipefail
python=${1:-python3}
venv=${2:-.venv}

"$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' || {
  echo "scrapscan needs Python >= 3.11; $python is $("$python" --version 2>&1). Set PYTHON=python3.11." >&2
  exit 1
}
if "$python" -m venv "$venv" 2>/dev/null; then
  exit 0
fi
rm -rf "$venv"
version=$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "make-venv: $python cannot create virtual environments; installing python${version}-venv" >&2
  apt-get update -qq && apt-get install -y -qq "python${version}-venv" >/dev/null
  exec "$python" -m venv "$venv"
fi
echo "make-venv: $python cannot create virtual environments; run: sudo apt-get install python${version}-venv" >&2
exit 1
