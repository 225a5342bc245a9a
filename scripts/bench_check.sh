#!/usr/bin/env bash
# Overhead of `monitor check` beyond the model run, on the bundled tiny model: runs the check N
# times and prints the median of each timing and of the share spent outside the worker process
# (config, baselines, comparison, history, reports). Target: outside share <= 2%.
#
# usage: scripts/bench_check.sh [runs] [config]     (needs ONNX Runtime, see scripts/install-ort.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-10}"
config="${2:-configs/tiny.yaml}"
cargo build --release --quiet
bin=${CARGO_TARGET_DIR:-target}/release/monitor
for _ in $(seq "$runs"); do
  "$bin" check --config "$config" --json || true
done | python3 -c '
import json, statistics, sys
dec = json.JSONDecoder()
text = sys.stdin.read()
runs, i = [], 0
while i < len(text):
    if text[i].isspace():
        i += 1
        continue
    obj, i = dec.raw_decode(text, i)
    runs.append(obj)
t = [r["timings"] for r in runs]
med = lambda k: statistics.median(x[k] for x in t)
share = statistics.median(x["outside_worker_s"] / x["total_s"] for x in t)
verdicts = sorted({c["verdict"] for r in runs for c in r["cases"]})
ncases = len(runs[0]["cases"])
print(f"{len(runs)} checks of {ncases} cases, verdicts {verdicts}")
for k in ["total_s", "worker_s", "load_s", "generation_s", "outside_worker_s"]:
    print(f"  {k:<18} {med(k):8.4f} s (median)")
print(f"  outside-worker share {100 * share:.2f}% (median; target <= 2%)")
'
