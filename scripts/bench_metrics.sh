#!/usr/bin/env bash
# Times `GET /metrics` of a running `monitor run` with N cases (default 50) checked once on the
# tiny model: the median of 30 scrapes (after 3 warm-up ones), beside the median of 30 `/healthz`
# requests in the same run, which is the HTTP round trip without the rendering.
#   scripts/bench_metrics.sh [N]        (needs target/release/monitor and ./.venv; uses port 19465)
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-50}"
bin="$PWD/target/release/monitor"
dir="$(mktemp -d)"
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$dir"' EXIT
{
  printf 'model: {path: %s, threads: 1}\n' "$PWD/onnx/tiny-sd15"
  printf 'storage: {baselines: b, database: m.db, reports: r}\n'
  printf 'schedule: "0 0 0 1 1 *"\nmetrics: {listen: "127.0.0.1:19465"}\ncases:\n'
  for i in $(seq 1 "$n"); do
    printf '  - {name: case%03d, prompt: "a red fox %d", seed: %d, steps: 2, width: 64, height: 64, scheduler: pndm, noise: numpy}\n' "$i" "$i" "$i"
  done
} > "$dir/c.yaml"
"$bin" rebaseline --config "$dir/c.yaml" --reason bench --yes --runs 1 > /dev/null
"$bin" check --config "$dir/c.yaml" | tail -n 1
"$bin" run --config "$dir/c.yaml" > "$dir/log" 2>&1 &
pid=$!
for _ in $(seq 1 50); do curl -sf -o /dev/null http://127.0.0.1:19465/healthz && break; sleep 0.1; done
for _ in 1 2 3; do curl -s -o /dev/null http://127.0.0.1:19465/metrics; done
bytes=$(curl -s http://127.0.0.1:19465/metrics | wc -c)
# Median of 30 timed requests of PATH, in ms.
median() {
  for _ in $(seq 1 30); do curl -s -o /dev/null -w '%{time_total}\n' "http://127.0.0.1:19465$1"; done |
    sort -n | awk '{a[NR]=$1*1000} END {printf "%.2f", a[int((NR+1)/2)]}'
}
m=$(median /metrics)
h=$(median /healthz)
# /healthz, measured in the same run, is the cost of the HTTP round trip alone.
awk -v n="$n" -v b="$bytes" -v m="$m" -v h="$h" 'BEGIN {printf "%d cases, %d bytes: /metrics median %.2f ms, /healthz median %.2f ms (HTTP alone), ratio %.1fx\n", n, b, m, h, m / h}'
