#!/usr/bin/env bash
# Docker smoke test, offline: builds docker/Dockerfile on a Debian bookworm base made here with
# debootstrap (no registry pulls), with a monitor binary built on this host and the pinned CPU
# `onnxruntime` wheel downloaded into the build context (a wheelhouse), then inside the container,
# with --network none:
#   1. `monitor check --config configs/tiny.yaml` must exit 0 against the committed baselines;
#   2. `monitor snapshot` in the container and on the host, then `monitor compare host container`:
#      does Docker give the same result as the host? (skipped if the binary has no `snapshot`).
# Not part of `cargo test`. Needs root (debootstrap, dockerd) and Debian's apt for what is missing.
#
#   scripts/docker-smoke.sh
#
# Environment:
#   MONITOR_BIN=PATH          use this binary instead of `cargo build --release`
#   SMOKE_CACHE=DIR           rootfs tarball and wheels (default /var/cache/monitor-docker-smoke)
#   SMOKE_ORT_PACKAGE=NAME    onnxruntime (default) or onnxruntime-gpu (its CPU EP; 250 MB wheel)
#   SMOKE_KEEP=1              keep the work folder (host and container snapshots) and say where
#   DEBIAN_MIRROR=URL         for debootstrap (default http://deb.debian.org/debian)
# Exit: 0 all passed (container identical to or within tolerance of the host), 1 a step failed or
# the snapshots drifted, 3 NOT RUN: this machine cannot run the test (not root, no docker daemon,
# packages or the Debian mirror out of reach) -- a CI script may treat 3 as a skip.
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"
# shellcheck source=scripts/versions.env
. scripts/versions.env

cache="${SMOKE_CACHE:-/var/cache/monitor-docker-smoke}"
ort_package="${SMOKE_ORT_PACKAGE:-$PIN_ORT_CPU_PACKAGE}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
# unzip: the Dockerfile's ort stage; ca-certificates: what the runtime image is expected to carry.
base_include="ca-certificates,unzip"
base_key="$(printf '%s\n' bookworm minbase "$base_include" | sha256sum | cut -c1-12)"
base_image="monitor-smoke-base:bookworm-minbase-$base_key"
image="monitor:smoke"
container="monitor-smoke-$$"

# ---- reporting ------------------------------------------------------------------------------
summary=()
step_start=0
step() { step_name="$1"; step_start="${EPOCHREALTIME/,/.}"; echo; echo "=== $1"; }
elapsed() { awk -v a="$step_start" -v b="${EPOCHREALTIME/,/.}" 'BEGIN { printf "%.1fs", b - a }'; }
ok() { local line; line="$(printf 'PASS  %-34s %8s  %s' "$step_name" "$(elapsed)" "${1:-}")"; summary+=("$line"); echo "$line"; }
skipped() { local line; line="$(printf 'SKIP  %-34s %8s  %s' "$step_name" "$(elapsed)" "$1")"; summary+=("$line"); echo "$line"; }
print_summary() {
  echo; echo "=== summary (scripts/docker-smoke.sh)"
  printf '%s\n' "${summary[@]}"
}
fail() {
  local line; line="$(printf 'FAIL  %-34s %8s  %s' "${step_name:-setup}" "$(elapsed)" "$1")"
  summary+=("$line"); echo "$line" >&2; print_summary; exit 1
}
notrun() {
  local line; line="$(printf 'NOT RUN %-32s %8s  %s' "${step_name:-setup}" "$(elapsed)" "$1")"
  summary+=("$line"); echo "$line" >&2; print_summary; exit 3
}
human() { awk -v b="$1" 'BEGIN { printf "%.0f MB", b / 1e6 }'; }

# ---- cleanup: only what this run started or made ---------------------------------------------
work=""
started_dockerd=""
compose_project=""
cleanup() {
  docker rm -f "$container" >/dev/null 2>&1 || true
  if [ -n "$compose_project" ]; then dc down -v >/dev/null 2>&1 || true; fi
  if [ -n "$work" ] && [ -d "$work" ]; then
    if [ "${SMOKE_KEEP:-0}" = 1 ]; then echo "kept: $work"; else rm -rf "$work"; fi
  fi
  if [ -n "$started_dockerd" ]; then
    kill "$started_dockerd" 2>/dev/null || true
    wait "$started_dockerd" 2>/dev/null || true
  fi
}
trap cleanup EXIT
total_start="${EPOCHREALTIME/,/.}"

# ---- 1. pins --------------------------------------------------------------------------------
step "pinned versions"
for pair in "BUILDER_IMAGE=$PIN_BUILDER_IMAGE" "RUNTIME_IMAGE=$PIN_RUNTIME_IMAGE"; do
  grep -qx "ARG $pair" docker/Dockerfile \
    || fail "docker/Dockerfile's 'ARG ${pair%%=*}=' default differs from scripts/versions.env (${pair#*=})"
done
ok "ORT $PIN_ORT_VERSION ($ort_package), Dockerfile defaults = versions.env"

# ---- 2. docker and debootstrap --------------------------------------------------------------
step "docker daemon"
[ "$(id -u)" = 0 ] || notrun "needs root (debootstrap, dockerd)"
missing=()
command -v docker >/dev/null || missing+=(docker.io)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]}"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"; } \
    || notrun "could not install ${missing[*]}"
fi
if ! docker info >/dev/null 2>&1; then
  command -v dockerd >/dev/null || notrun "docker cannot reach a daemon and there is no dockerd"
  echo "starting dockerd (log: /tmp/monitor-smoke-dockerd.log)"
  dockerd >/tmp/monitor-smoke-dockerd.log 2>&1 &
  started_dockerd=$!
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  docker info >/dev/null 2>&1 || notrun "dockerd did not come up (see /tmp/monitor-smoke-dockerd.log)"
fi
ok "server $(docker version --format '{{.Server.Version}}')${started_dockerd:+ (started here, stopped at the end)}"

# ---- 3. base image: debootstrap --variant=minbase bookworm + docker import --------------------
step "base image (debootstrap)"
if docker image inspect "$base_image" >/dev/null 2>&1; then
  ok "reused $base_image"
else
  mkdir -p "$cache"
  tarball="$cache/bookworm-minbase-$base_key.tar"
  if [ ! -s "$tarball" ]; then
    rootfs="$(mktemp -d /tmp/monitor-smoke-rootfs.XXXXXX)"
    debootstrap --variant=minbase --include="$base_include" bookworm "$rootfs" "$mirror" \
      >/tmp/monitor-smoke-debootstrap.log 2>&1 \
      || { rm -rf "$rootfs"; notrun "debootstrap failed (see /tmp/monitor-smoke-debootstrap.log)"; }
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/*.log
    tar --numeric-owner -C "$rootfs" -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
    rm -rf "$rootfs"
  fi
  docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/bash"]' "$tarball" "$base_image" >/dev/null \
    || fail "docker import $tarball"
  ok "$base_image from $tarball"
fi

# ---- 4. the monitor binary, built on the host ------------------------------------------------
step "monitor binary (host build)"
if [ -n "${MONITOR_BIN:-}" ]; then
  bin="$(realpath "$MONITOR_BIN")"
  [ -x "$bin" ] || fail "MONITOR_BIN=$MONITOR_BIN is not an executable"
  how="MONITOR_BIN"
else
  cargo build --release --bin monitor >/tmp/monitor-smoke-cargo.log 2>&1 \
    || { tail -n 30 /tmp/monitor-smoke-cargo.log >&2; fail "cargo build --release (see /tmp/monitor-smoke-cargo.log)"; }
  bin="$(realpath "${CARGO_TARGET_DIR:-target}/release/monitor")"
  how="cargo build --release"
fi
ok "$("$bin" --version) ($how: $bin)"

# ---- 5. ONNX Runtime: host venv (for the host snapshot) and the wheelhouse --------------------
step "onnxruntime wheel (host pip)"
host_lib="$(scripts/install-ort.sh 2>/tmp/monitor-smoke-ort.log | tail -n 1)" \
  || fail "scripts/install-ort.sh (see /tmp/monitor-smoke-ort.log)"
host_lib="$repo/$host_lib"
mkdir -p "$cache/wheelhouse"
dist="${ort_package//-/_}"
wheel="$(ls "$cache/wheelhouse/$dist-$PIN_ORT_VERSION"-*_"$(uname -m)".whl 2>/dev/null | head -n 1 || true)"
if [ -z "$wheel" ]; then
  .venv/bin/python -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    -d "$cache/wheelhouse" "$ort_package==$PIN_ORT_VERSION" || fail "pip download $ort_package==$PIN_ORT_VERSION"
  wheel="$(ls "$cache/wheelhouse/$dist-$PIN_ORT_VERSION"-*_"$(uname -m)".whl | head -n 1)"
fi
ok "$(basename "$wheel") ($(human "$(stat -c %s "$wheel")"))"

# ---- 6. docker build -------------------------------------------------------------------------
step "docker build (--network none)"
work="$(mktemp -d /tmp/monitor-smoke.XXXXXX)"
ctx="$work/context"
mkdir -p "$ctx/docker/wheelhouse" "$ctx/scripts" "$ctx/prebuilt"
# Modification times kept: the legacy builder's cache keys include them, and a rerun with the same
# inputs should reuse every layer (and leave no new untagged stage images behind).
cp -p docker/Dockerfile "$ctx/docker/"
cp -p scripts/versions.env "$ctx/scripts/"
cp -p "$wheel" "$ctx/docker/wheelhouse/"
# The release profile keeps DWARF (debug = 1); the image does not need it (as in the Dockerfile's
# own build, symbols stay).
strip --strip-debug -o "$ctx/prebuilt/monitor" "$bin" 2>/dev/null || cp "$bin" "$ctx/prebuilt/monitor"
touch -r "$bin" "$ctx/prebuilt/monitor"
old_image="$(docker image inspect -f '{{.Id}}' "$image" 2>/dev/null || true)"
docker build --network none --force-rm -f "$ctx/docker/Dockerfile" -t "$image" \
  --build-arg BUILDER_IMAGE="$base_image" --build-arg RUNTIME_IMAGE="$base_image" \
  --build-arg PREBUILT_BINARY=prebuilt/monitor --build-arg ORT_PACKAGE="$ort_package" \
  "$ctx" >"$work/build.log" 2>&1 \
  || { tail -n 40 "$work/build.log" >&2; fail "docker build"; }
new_image="$(docker image inspect -f '{{.Id}}' "$image")"
# Idempotent: the previous run's image, now untagged, goes (unless a container still uses it).
if [ -n "$old_image" ] && [ "$old_image" != "$new_image" ]; then docker image rm "$old_image" >/dev/null 2>&1 || true; fi
base_size="$(docker image inspect -f '{{.Size}}' "$base_image")"
image_size="$(docker image inspect -f '{{.Size}}' "$image")"
ok "$image $(human "$image_size") (base $(human "$base_size"), +$(human $((image_size - base_size))))"

# ---- 7. monitor check inside the container ---------------------------------------------------
# Each side gets its own writable copy of what configs/tiny.yaml refers to (../onnx/tiny-sd15,
# ../baselines/tiny-sd15; the database and reports are written beside them).
copy_tiny() {
  mkdir -p "$1/onnx" "$1/baselines"
  cp -r configs "$1/"
  cp -r onnx/tiny-sd15 "$1/onnx/"
  cp -r baselines/tiny-sd15 "$1/baselines/"
  find "$1/baselines" -name .lock -delete
}
step "monitor check in container"
copy_tiny "$work/container"
uid="$(docker run --rm --network none --entrypoint id "$image" -u)"
chown -R "$uid" "$work/container"
docker_run() {
  docker run --rm --name "$container" --network none -v "$work/container:/data" "$image" "$@"
}
set +e
docker_run check --config /data/configs/tiny.yaml 2>&1 | tee "$work/check.log"
rc=${PIPESTATUS[0]}
set -e
[ "$rc" = 0 ] || fail "monitor check exited $rc in the container"
ok "exit 0: $(grep -E '^[0-9]+ cases?:' "$work/check.log" | tail -n 1)"

# ---- 8. snapshots: host vs container ---------------------------------------------------------
step "snapshot host vs container"
if ! "$bin" snapshot --help >/dev/null 2>&1; then
  skipped "SKIPPED: monitor snapshot not available in $("$bin" --version)"
else
  copy_tiny "$work/host"
  ORT_DYLIB_PATH="$host_lib" "$bin" snapshot --config "$work/host/configs/tiny.yaml" --label host --out "$work/host.tar" \
    >"$work/snapshot-host.log" 2>&1 || { cat "$work/snapshot-host.log" >&2; fail "monitor snapshot on the host"; }
  docker_run snapshot --config /data/configs/tiny.yaml --label docker --out /data/container.tar \
    >"$work/snapshot-container.log" 2>&1 \
    || { cat "$work/snapshot-container.log" >&2; fail "monitor snapshot in the container"; }
  "$bin" snapshot verify "$work/container/container.tar" || fail "monitor snapshot verify (container snapshot)"
  # Thresholds from the config (teapot has its own); the host snapshot is the reference.
  set +e
  "$bin" compare --config configs/tiny.yaml "$work/host.tar" "$work/container/container.tar" 2>&1 \
    | tee "$work/compare.log"
  rc=${PIPESTATUS[0]}
  set -e
  case "$rc" in
    0) ok "compare exit 0: container outputs identical to / within tolerance of the host" ;;
    1) fail "compare exit 1: the container drifted from the host (differences above)" ;;
    *) fail "compare exit $rc (error)" ;;
  esac
fi

# ---- 9. compose: `monitor run` as the service ------------------------------------------------
# docker/compose.yaml as it is for `config`; to run it here (no NVIDIA runtime), a copy without the
# GPU reservation, on the tiny model with a config that checks every 2 seconds.
step "compose: monitor run (CPU)"
compose=()
if docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
else
  command -v docker-compose >/dev/null \
    || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-compose >/dev/null 2>&1 \
    || true
  if command -v docker-compose >/dev/null; then compose=(docker-compose); fi
fi
if [ ${#compose[@]} = 0 ]; then
  skipped "SKIPPED: neither docker compose nor docker-compose is available"
else
  "${compose[@]}" -f docker/compose.yaml config -q || fail "${compose[*]} config: docker/compose.yaml is invalid"
  cdir="$work/compose"
  mkdir -p "$cdir/config" "$cdir/model"
  cp -r onnx/tiny-sd15/. "$cdir/model/"
  cat >"$cdir/config/monitor.yaml" <<'YAML'
model: {path: /models/sd15, execution_provider: cpu}
storage: {baselines: /var/lib/monitor/baselines, database: /var/lib/monitor/monitor.db, reports: /var/lib/monitor/reports, session_cache: /var/lib/monitor/session-cache}
schedule: "*/2 * * * * *"
cases:
  - {name: fox, prompt: "a red fox in the snow", seed: 42, steps: 4, guidance_scale: 7.5, width: 64, height: 64, scheduler: pndm, noise: numpy}
YAML
  sed '/^    deploy:/,/capabilities:/d' docker/compose.yaml >"$cdir/compose.yaml"
  compose_project="monitorsmoke$$"
  dc() {
    MONITOR_IMAGE="$image" MONITOR_CONFIG_DIR="$cdir/config" MONITOR_MODEL_DIR="$cdir/model" \
      "${compose[@]}" -p "$compose_project" -f "$cdir/compose.yaml" "$@"
  }
  dc run --rm monitor rebaseline --reason "docker smoke" --yes >"$work/compose.log" 2>&1 \
    || { cat "$work/compose.log" >&2; fail "compose run monitor rebaseline"; }
  dc up -d --no-build >>"$work/compose.log" 2>&1 || { cat "$work/compose.log" >&2; fail "compose up"; }
  rounds=0
  for _ in $(seq 1 60); do
    rounds="$(dc logs --no-color monitor 2>/dev/null | grep -c 'round done' || true)"
    [ "$rounds" -ge 2 ] && break
    sleep 0.5
  done
  cid="$(dc ps -q monitor)"
  stop_start="${EPOCHREALTIME/,/.}"
  dc stop >>"$work/compose.log" 2>&1
  stop_s="$(awk -v a="$stop_start" -v b="${EPOCHREALTIME/,/.}" 'BEGIN { printf "%.1f", b - a }')"
  code="$(docker inspect -f '{{.State.ExitCode}}' "$cid")"
  dc logs --no-color monitor | tail -n 4
  [ "$rounds" -ge 2 ] || fail "the service logged $rounds scheduled rounds in 30 s"
  [ "$code" = 0 ] || fail "the service exited $code on stop"
  ok "config valid; rebaseline, $rounds rounds, stop ${stop_s}s exit 0 (${compose[*]})"
fi

echo
echo "onnxruntime: host $(sha256sum "$host_lib" | cut -c1-16)  $host_lib"
echo "             image $(docker run --rm --network none --entrypoint sh "$image" -c \
  'sha256sum /opt/onnxruntime/lib/libonnxruntime.so.* | cut -c1-16; grep ^wheel /opt/onnxruntime/SOURCE' | tr '\n' ' ')"
docker image ls --format '{{.Repository}}:{{.Tag}}  {{.Size}}' | grep -E "^(monitor:smoke|monitor-smoke-base:)" || true
step_name="total"; step_start="$total_start"
ok ""
print_summary
