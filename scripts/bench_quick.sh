#!/usr/bin/env bash
# Model time of `monitor check --quick` against a full `monitor check`, same host, same run: the
# write-up's three cases (its prompts, seeds, steps 25/30/20, guidance, sizes 512x512, 512x768,
# 768x512; torch-cpu noise) on MODEL (default the bundled tiny model), R rounds alternating full
# and quick (default 3). Model time = seconds inside ONNX Runtime `run` calls, summed over cases.
# R = 0 (for a full-size export on a slow host): the full generations are the rebaseline's own,
# their model time read from the new baselines' metadata.json, then one quick check.
#   scripts/bench_quick.sh [MODEL] [R]     (needs target/release/monitor and ./.venv)
set -euo pipefail
cd "$(dirname "$0")/.."
model="$(realpath "${1:-onnx/tiny-sd15}")"
rounds="${2:-3}"
bin="${MONITOR_BIN:-$PWD/target/release/monitor}"
dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT
cat > "$dir/c.yaml" <<YAML
model: {path: $model}
storage: {baselines: b, database: m.db, reports: r}
cases:
  - {name: landscape, prompt: "a beautiful sunset over mountains, digital art, detailed", negative_prompt: "blurry, low quality, distorted", seed: 42, steps: 25, guidance_scale: 7.5, width: 512, height: 512, scheduler: pndm, noise: torch-cpu}
  - {name: portrait, prompt: "portrait of a wise old wizard with a long beard, fantasy art, highly detailed", negative_prompt: "ugly, deformed, cartoon, 3d", seed: 123, steps: 30, guidance_scale: 8.0, width: 512, height: 768, scheduler: pndm, noise: torch-cpu}
  - {name: architecture, prompt: "futuristic cityscape at night, neon lights, cyberpunk style, ultra detailed", negative_prompt: "daytime, sunny, traditional", seed: 456, steps: 20, guidance_scale: 7.0, width: 768, height: 512, scheduler: pndm, noise: torch-cpu}
YAML
"$bin" rebaseline --config "$dir/c.yaml" --reason bench --yes --runs 1 > /dev/null
sum() { python3 -c "import json,sys; d=json.load(sys.stdin); print(sum($1))"; }
full_of_baselines() {
  python3 -c "import json,glob; print(sum(json.load(open(p))['timings']['ort_run_s'] for p in glob.glob('$dir/b/*/v0001/metadata.json')))"
}
for r in $(seq 1 "$([ "$rounds" = 0 ] && echo 1 || echo "$rounds")"); do
  if [ "$rounds" = 0 ]; then
    full=$(full_of_baselines)
  else
    full=$("$bin" check --config "$dir/c.yaml" --json | sum "c['performance']['model_s'] for c in d['cases']")
  fi
  "$bin" check --quick --no-follow-up --config "$dir/c.yaml" --json > "$dir/q.json"
  quick=$(sum "c['model_s'] for c in d['quick']['cases'] if c['outcome'] == 'same'" < "$dir/q.json")
  vae=$(sum "c['vae_s'] for c in d['quick']['cases']" < "$dir/q.json")
  echo "round $r: full $full s, quick $quick s (VAE decode $vae s)"
done | tee "$dir/rounds"
python3 - "$dir/rounds" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
full = statistics.median(float(r[3]) for r in rows)
quick = statistics.median(float(r[6]) for r in rows)
vae = statistics.median(float(r[10]) for r in rows)
print(f"median model time: full {full:.3f} s, quick {quick:.3f} s (VAE decode {vae:.3f} s), "
      f"quick/full {quick / full:.3f}, without the VAE decodes {(quick - vae) / full:.3f}")
PY
