#!/usr/bin/env bash
# Builds the proxy-wasm filter (package kvroute-wasm) as an optimized release module (LTO, O3):
# target/wasm/wasm32-unknown-unknown/release/kvroute_wasm.wasm
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/build-wasm.sh" kvroute-wasm \
  --config 'profile.release.opt-level=3' \
  --config 'profile.release.lto=true' \
  --config 'profile.release.codegen-units=1' \
  --config 'profile.release.panic="abort"' \
  --config 'profile.release.debug=false' \
  --config 'profile.release.strip=true'
ls -l "${CARGO_TARGET_DIR:-$root/target}/wasm/wasm32-unknown-unknown/release/kvroute_wasm.wasm" >&2
