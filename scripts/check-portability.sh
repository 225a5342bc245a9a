#!/usr/bin/env bash
# Compile-checks monitor for Windows (x86_64-pc-windows-gnu) from a Linux host, so that Unix-only
# code (signals, process groups, /proc, flock, sd_notify) that slips out of its cfg(unix) gates
# fails here rather than on a Windows machine. Checks only: nothing is linked or run.
#
# Installs what it needs when missing: the MinGW C cross compiler (rusqlite's `bundled` feature
# compiles SQLite in its build script; needs apt-get, so root or sudo) and the Rust std for the
# target.
#
# usage: scripts/check-portability.sh        (honours CARGO_TARGET_DIR)
set -euo pipefail
cd "$(dirname "$0")/.."
target=x86_64-pc-windows-gnu

if ! command -v x86_64-w64-mingw32-gcc >/dev/null; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq gcc-mingw-w64-x86-64 >/dev/null
fi
if ! rustup target list --installed | grep -qx "$target"; then
  rustup target add "$target"
fi

# Warnings are errors: a helper left unused on Windows is a missed gate.
RUSTFLAGS="${RUSTFLAGS:-} -D warnings" cargo check --locked --target "$target" --bins --lib
echo "check-portability: $target OK"
