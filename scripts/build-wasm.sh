#!/usr/bin/env bash
# Builds a crate for wasm32-unknown-unknown with Debian's Rust and -Zbuild-std.
# Usage: scripts/build-wasm.sh <package> [extra cargo args]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/setup-wasm.sh"
pkg=$1; shift
cd "$root"
PATH=/usr/bin:$PATH RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}/wasm" \
  /usr/bin/cargo build --release -p "$pkg" --target wasm32-unknown-unknown \
  -Zbuild-std=std,panic_abort "$@"
