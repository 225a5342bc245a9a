#!/usr/bin/env bash
# Cold start on a full-size export (scripts/make_full_model.py): `monitor check` of the write-up's
# landscape case (512x512, 25 PNDM steps) as a fresh process after dropping the page cache, three
# ways — session cache off, session cache being written (first cached run), session cache loaded
# — beside diffusers' OnnxStableDiffusionPipeline doing import + load + the same generation with
# the same ONNX Runtime. Model files are always hashed, beside session creation.
#   scripts/bench_cold_start.sh MODEL [STEPS]
#   (root, for drop_caches; needs target/release/monitor, ./.venv and PYTHON with diffusers)
set -euo pipefail
cd "$(dirname "$0")/.."
model="$(realpath "$1")"
steps="${2:-25}"
python="${PYTHON:-/work/venv/ref/bin/python}"
bin="${MONITOR_BIN:-$PWD/target/release/monitor}"
dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT
config() {
  cat > "$dir/c.yaml" <<YAML
model: {path: $model, session_cache: $1}
storage: {baselines: b, database: m.db, reports: r, session_cache: sc}
cases:
  - {name: landscape, prompt: "a beautiful sunset over mountains, digital art, detailed", negative_prompt: "blurry, low quality, distorted", seed: 42, steps: $steps, guidance_scale: 7.5, width: 512, height: 512, scheduler: pndm, noise: numpy}
YAML
}
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
# One cold check: wall time (process start -> verdict) and, from its JSON, the time before the
# first UNet call: everything outside the generation, plus its tokenizer and text encoder (an
# upper bound, as it also holds the comparison and history write after the generation).
cold() {
  drop
  local t0 t1
  t0=$(date +%s.%N)
  "$bin" check --config "$dir/c.yaml" --json > "$dir/out.json" || true
  t1=$(date +%s.%N)
  python3 - "$1" "$t0" "$t1" "$dir/out.json" <<'PY'
import json, sys
label, t0, t1, path = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
d = json.load(open(path)); c = d["cases"][0]; p = c.get("performance") or {}
after_text = (p.get("generation_s") or 0) - (p.get("text_encoder_s") or 0)
wall = t1 - t0
print(json.dumps({"run": label, "wall_s": round(wall, 3), "before_first_unet_s": round(wall - after_text, 3),
                  "load_s": p.get("load_s"), "session_cache": p.get("session_cache"),
                  "verdict": c["verdict"]}))
PY
}
config false
"$bin" rebaseline --config "$dir/c.yaml" --reason bench --yes > /dev/null
cold "monitor, session cache off"
config true
cold "monitor, session cache written (first cached run)"
cold "monitor, session cache loaded"
drop
BENCH_T0=$(date +%s.%N) "$python" scripts/bench_cold_diffusers.py "$model" "$steps" 2>/dev/null | tail -n 1
