#!/usr/bin/env bash
# Fuzzes the readers of untrusted bytes (fuzz/fuzz_targets/) with cargo-fuzz / libFuzzer, one
# target at a time, one process, and prints one summary line per target.
#
# Usage: scripts/fuzz.sh [TARGET|all] [SECONDS]     (defaults: all, 60)
#   TARGET: npy png scheduler_config tokenizer config generation onnx_graph journal snapshot stages
#           service_answer
# Output: one line per target: seconds actually run (less than SECONDS when it stopped on a
# crash), executions, libFuzzer's last cov/ft/corp (corpus entries in use), files in the corpus
# folder, and the crash/hang/oom inputs saved by this run.
# Environment:
#   FUZZ_SANITIZER    address (default; falls back to none if an ASan build fails) or none
#   FUZZ_TIMEOUT      seconds one input may run before it counts as a hang (default 10)
#   CARGO_TARGET_DIR  build folder (default fuzz/target)
#
# Only a stable toolchain is needed: cargo-fuzz's nightly flags (-Zsanitizer, sanitizer coverage
# passes) are enabled with RUSTC_BOOTSTRAP=1. Seeds in fuzz/seeds/TARGET are copied into the
# working corpus fuzz/corpus/TARGET (not committed); crashes land in fuzz/artifacts/TARGET and
# full libFuzzer output in fuzz/logs/TARGET.log. Exit status 1 if any target found a crash.
set -euo pipefail
cd "$(dirname "$0")/.."

all_targets=(npy png scheduler_config tokenizer config generation onnx_graph journal snapshot stages service_answer)
which="${1:-all}"
seconds="${2:-60}"
timeout_s="${FUZZ_TIMEOUT:-10}"
sanitizer="${FUZZ_SANITIZER:-address}"
target_dir="${CARGO_TARGET_DIR:-$PWD/fuzz/target}"
export RUSTC_BOOTSTRAP=1

if [ "$which" = all ]; then
  targets=("${all_targets[@]}")
elif [[ " ${all_targets[*]} " == *" $which "* ]]; then
  targets=("$which")
else
  echo "unknown target '$which' (expected one of: ${all_targets[*]} all)" >&2
  exit 2
fi
if ! [[ "$seconds" =~ ^[1-9][0-9]*$ ]]; then
  echo "seconds must be a positive integer, got '$seconds'" >&2
  exit 2
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install --locked cargo-fuzz
fi

# Release build with debug assertions and overflow checks: an overflow is a finding too.
fuzz_flags=(-O -a --target-dir "$target_dir" --fuzz-dir fuzz)
build() {
  # No target name builds them all.
  if [ "$which" = all ]; then
    cargo fuzz build "${fuzz_flags[@]}" -s "$1"
  else
    cargo fuzz build "${fuzz_flags[@]}" -s "$1" "$which"
  fi
}
if ! build "$sanitizer"; then
  if [ "$sanitizer" = none ]; then
    exit 1
  fi
  echo "fuzz.sh: build with sanitizer $sanitizer failed; retrying with --sanitizer none" >&2
  sanitizer=none
  build none
fi

# Inputs libFuzzer saved as failures (not slow-unit-* notes).
findings() {
  find "$1" -type f \( -name 'crash-*' -o -name 'timeout-*' -o -name 'oom-*' -o -name 'leak-*' \) | sort
}
bin_dir="$target_dir/$(rustc -vV | sed -n 's/^host: //p')/release"
mkdir -p fuzz/logs
summary=()
found_any=0
for t in "${targets[@]}"; do
  corpus="fuzz/corpus/$t"
  artifacts="fuzz/artifacts/$t"
  mkdir -p "$corpus" "$artifacts"
  cp -n fuzz/seeds/"$t"/* "$corpus"/ 2>/dev/null || true
  before=$(findings "$artifacts")
  dict=()
  if [ -f "fuzz/dicts/$t.dict" ]; then
    dict=(-dict="fuzz/dicts/$t.dict")
  fi
  log="fuzz/logs/$t.log"
  echo "fuzz.sh: $t for ${seconds}s (sanitizer $sanitizer), log $log" >&2
  rc=0
  start=$SECONDS
  # The binary built above, run directly: `cargo fuzz run` would rebuild first, and a tree edited
  # meanwhile must not change (or break) what is being fuzzed.
  ASAN_OPTIONS="${ASAN_OPTIONS:-detect_odr_violation=0}" RUST_BACKTRACE=1 "$bin_dir/$t" \
    -artifact_prefix="$artifacts/" -max_total_time="$seconds" -timeout="$timeout_s" \
    -print_final_stats=1 "${dict[@]}" "$corpus" >"$log" 2>&1 || rc=$?
  elapsed=$((SECONDS - start))

  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  status=$(grep -E '^#[0-9]+.*cov: [0-9]+ ft: [0-9]+' "$log" | tail -n 1 || true)
  cov=$(sed -n 's/.*cov: \([0-9]*\).*/\1/p' <<<"$status")
  ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$status")
  corp=$(sed -n 's/.* corp: \([0-9]*\)\/.*/\1/p' <<<"$status")
  corpus_files=$(find "$corpus" -type f | wc -l)
  new_artifacts=$(comm -13 <(echo "$before") <(findings "$artifacts") | grep -c . || true)
  line=$(printf '%-17s seconds=%-5s execs=%-10s cov=%-6s ft=%-7s corp=%-6s corpus_files=%-6s crashes=%s' \
    "$t" "$elapsed" "${execs:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}" "$corpus_files" "$new_artifacts")
  if [ "$rc" -ne 0 ] || [ "$new_artifacts" -ne 0 ]; then
    found_any=1
    line="$line (exit $rc; see $log and $artifacts/)"
    grep -E '^(==[0-9]+==ERROR|thread .* panicked|SUMMARY|artifact_prefix|Test unit written)' "$log" | head -n 20 >&2 || true
  fi
  echo "$line"
  summary+=("$line")
done

if [ "${#summary[@]}" -gt 1 ]; then
  echo "--- summary (sanitizer $sanitizer) ---"
  printf '%s\n' "${summary[@]}"
fi
exit "$found_any"
