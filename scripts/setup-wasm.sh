#!/usr/bin/env bash
# Installs Debian's Rust with its std sources (needed for -Zbuild-std to wasm32), once.
set -euo pipefail
if [ -x /usr/bin/cargo ] && [ -x /usr/bin/rustc ] && [ -d /usr/lib/rustlib/src/rust/library ] \
  && [ -x /usr/bin/rust-lld ]; then
  exit 0
fi
sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"
echo "installing the wasm32 toolchain from Debian (rustc-web, rust-web-src, lld) ..." >&2
$sudo apt-get update -qq >&2
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq \
  rustc-web cargo-web rust-web-src rust-web-llvm lld-22 >&2
