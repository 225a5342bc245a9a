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
# Exit: 0 the Windows build checks, 1 it does not, 3 NOT RUN (the cross compiler or the target's
# std could not be installed here) -- CI treats 3 as a skip.
set -euo pipefail
cd "$(dirname "$0")/.."
target=x86_64-pc-windows-gnu

if ! command -v x86_64-w64-mingw32-gcc >/dev/null; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  if ! { $sudo apt-get update -qq && $sudo apt-get install -y -qq gcc-mingw-w64-x86-64 >/dev/null; }; then
    echo "check-portability: NOT RUN (could not install gcc-mingw-w64-x86-64)"
    exit 3
  fi
fi
if ! rustup target list --installed | grep -qx "$target"; then
  if ! rustup target add "$target"; then
    echo "check-portability: NOT RUN (could not install the $target std)"
    exit 3
  fi
fi

# Warnings are errors: a helper left unused on Windows is a missed gate.
RUSTFLAGS="${RUSTFLAGS:-} -D warnings" cargo check --locked --target "$target" --bins --lib
echo "check-portability: $target OK"
