#!/usr/bin/env bash
# Side-by-side generation time: monitor's Rust pipeline vs diffusers' OnnxStableDiffusionPipeline,
# same export, same ONNX Runtime library, same thread count, one run, interleaved so that machine
# load affects both alike. Prints both JSON lines and the ratio (target: monitor <= 0.95x diffusers).
#
# usage: PYTHON=/path/to/venv/bin/python scripts/bench_vs_diffusers.sh [reps] [threads]
#   PYTHON must have diffusers, transformers, torch and onnxruntime (the reference tooling venv).
set -euo pipefail
cd "$(dirname "$0")/.."
reps="${1:-5}"
threads="${2:-1}"
python="${PYTHON:-python3}"
capi=$("$python" -c "import onnxruntime, os; print(os.path.join(os.path.dirname(onnxruntime.__file__), 'capi'))")
export ORT_DYLIB_PATH=$(ls "$capi"/libonnxruntime.so.1.* | head -n 1)
cargo build --release --quiet
bin=${CARGO_TARGET_DIR:-target}/release/monitor
rust_totals=(); py_totals=()
for round in 1 2; do
  r=$("$bin" bench --json --runs "$reps" --steps 25 --size 256 --threads "$threads")
  p=$("$python" scripts/bench_diffusers.py --reps "$reps" --intra-op-threads "$threads" --steps 25 --size 256 2>/dev/null | tail -n 1)
  echo "monitor  round $round: $r"
  echo "diffusers round $round: $p"
  rust_totals+=("$(echo "$r" | "$python" -c 'import json,sys; print(json.load(sys.stdin)["total_s_median"])')")
  py_totals+=("$(echo "$p" | "$python" -c 'import json,sys; print(json.load(sys.stdin)["total_s_median"])')")
done
"$python" - "${rust_totals[@]}" "${py_totals[@]}" <<'PY'
import sys
v = [float(x) for x in sys.argv[1:]]
half = len(v) // 2
rust, py = min(v[:half]), min(v[half:])
print(f"monitor {rust:.4f}s  diffusers {py:.4f}s  ratio monitor/diffusers = {rust / py:.3f}")
PY
