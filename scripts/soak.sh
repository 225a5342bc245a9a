#!/usr/bin/env bash
# Soak benchmark of the daemon (not run in CI): `monitor run` on the tiny model with a schedule of
# every second until N scheduled checks have finished (default 1000, about 17 minutes), then
# reports the daemon's own footprint at the start and the end:
#   - RSS (VmRSS) after the first round and at the end, and its growth
#   - open file descriptors at the start and the end
#   - database growth per check
#   - the daemon's own CPU time per round (utime+stime of the daemon process only; the worker
#     child's CPU is not included, as /proc/PID/stat keeps it in cutime/cstime)
# Usage: scripts/soak.sh [N] [OUT_DIR]     (needs `cargo build --release` and scripts/install-ort.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000}
OUT=${2:-$(mktemp -d /tmp/monitor-soak.XXXXXX)}
mkdir -p "$OUT"
# A copy, so that a rebuild during the soak does not replace the binary under the daemon.
cp target/release/monitor "$OUT/monitor"
BIN=$OUT/monitor
cat > "$OUT/monitor.yaml" <<YAML
model: {path: $PWD/onnx/tiny-sd15, threads: 1}
storage: {baselines: baselines, database: monitor.db, reports: reports, retention_days: 0}
schedule: "* * * * * *"
cases:
  - {name: soak, prompt: "a lighthouse", seed: 7, steps: 2, width: 64, height: 64, scheduler: ddim, noise: numpy}
YAML
"$BIN" rebaseline --config "$OUT/monitor.yaml" --reason soak --yes >/dev/null
"$BIN" run --config "$OUT/monitor.yaml" 2>"$OUT/daemon.log" &
PID=$!
trap 'kill $PID 2>/dev/null || true' EXIT
checks() {
  python3 - "$OUT/monitor.db" <<'PY'
import sqlite3, sys
c = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)
print(c.execute("select count(*) from runs where kind='check' and status='finished'").fetchone()[0])
PY
}
# A round holds two more descriptors (its database connection and WAL) than an idle daemon, so
# fds and RSS are the smallest of 20 samples over 2 s: the idle value, comparable start to end.
idle_min() { local m=; for _ in $(seq 20); do v=$("$@"); [ -z "$m" ] || [ "$v" -lt "$m" ] && m=$v; sleep 0.1; done; echo "$m"; }
rss_now() { awk '/VmRSS/ {print $2}' /proc/$PID/status; }
fds_now() { ls /proc/$PID/fd | wc -l; }
rss() { idle_min rss_now; }
fds() { idle_min fds_now; }
cpu_ticks() { awk '{print $14 + $15}' /proc/$PID/stat; }
# Bytes in use after folding the WAL into the main file (the WAL's own size is not growth).
db_bytes() {
  python3 - "$OUT/monitor.db" <<'PY'
import sqlite3, sys
c = sqlite3.connect(sys.argv[1], timeout=30)
c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
pages, size, free = (c.execute(f"PRAGMA {p}").fetchone()[0] for p in ("page_count", "page_size", "freelist_count"))
print((pages - free) * size)
PY
}
until [ "$(checks 2>/dev/null || echo 0)" -ge 1 ]; do sleep 0.5; done
RSS0=$(rss); FD0=$(fds); CPU0=$(cpu_ticks); DB0=$(db_bytes); C0=$(checks); T0=$(date +%s)
echo "start: checks=$C0 rss_kb=$RSS0 fds=$FD0 db_bytes=$DB0"
while [ "$(checks)" -lt "$N" ]; do
  sleep 10
  echo "  $(checks) checks, rss_kb=$(rss), fds=$(fds)"
done
RSS1=$(rss); FD1=$(fds); CPU1=$(cpu_ticks); DB1=$(db_bytes); C1=$(checks); T1=$(date +%s)
HZ=$(getconf CLK_TCK)
kill -TERM $PID; wait $PID || true
trap - EXIT
SKIPPED=$(python3 -c "import sqlite3;c=sqlite3.connect('$OUT/monitor.db');print(c.execute(\"select count(*) from runs where status='skipped'\").fetchone()[0])")
python3 - <<PY
rounds = $C1 - $C0
print(f"checks: {$C1} finished ({rounds} measured over {$T1 - $T0} s), {$SKIPPED} ticks skipped")
print(f"daemon RSS: {$RSS0/1024:.1f} MiB after the first round, {$RSS1/1024:.1f} MiB at the end, growth {($RSS1-$RSS0)/1024:.2f} MiB")
print(f"open fds: {$FD0} at the start, {$FD1} at the end")
print(f"database: {($DB1-$DB0)/max(rounds,1):.0f} bytes per check")
print(f"daemon CPU: {($CPU1-$CPU0)/$HZ*1000/max(rounds,1):.2f} ms per round (worker excluded)")
PY
echo "log and database: $OUT"
