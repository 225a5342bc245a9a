//! The SQLite history: round trip, migrations, concurrency, locked and corrupt files, retention,
//! and `monitor history`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use monitor::compare::Verdict;
use monitor::history::{CaseResult, History, HistoryError, NewRun, SCHEMA_VERSION};
use serde_json::json;

fn result(case: &str, verdict: &str, max_abs: f64) -> CaseResult {
    CaseResult {
        case_name: case.into(),
        verdict: verdict.parse().expect("verdict"),
        baseline_version: Some(3),
        latents_sha256: Some("ab".repeat(32)),
        latent_max_abs: Some(max_abs),
        latent_mean_abs: Some(max_abs / 10.0),
        latent_rmse: Some(max_abs / 5.0),
        latent_cosine: Some(0.999_999_5),
        ssim: Some(0.998_765),
        psnr_db: Some(f64::INFINITY),
        pixels_differing: Some(17),
        reasons: Some(json!(["latent max |Δ| 1e-3 > 1e-4"])),
        env_diff: Some(json!({"onnxruntime": ["1.22.0", "1.23.0"]})),
        error: None,
        duration_s: Some(12.5),
        timings: Some(json!({"unet_s": 10.0, "vae_s": 1.5})),
        details: Some(json!({"batch": {"size": 2, "identical": true}})),
    }
}

fn new_run(started_at: &str) -> NewRun {
    NewRun {
        kind: "check".into(),
        trigger: Some("manual".into()),
        started_at: started_at.into(),
        model_path: Some("/models/sd15".into()),
        environment: Some(json!({"os": "linux", "gpu": null})),
        skipped_reason: None,
    }
}

fn one_line(e: &HistoryError) -> String {
    let s = e.to_string();
    assert!(!s.contains('\n'), "error is not one line: {s}");
    s
}

#[test]
fn round_trip_newest_first_case_filter_limit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/dir/monitor.db"); // parent folders are created
    let mut h = History::open(&path).unwrap();
    assert_eq!(h.schema_version().unwrap(), SCHEMA_VERSION);

    let run1 = h.begin_run(&new_run("2026-11-01T00:00:00Z")).unwrap();
    let a1 = result("astronaut", "identical", 0.0);
    let b1 = CaseResult {
        error: Some("CUDA out of memory".into()),
        verdict: monitor::compare::Verdict::Error,
        reasons: None,
        psnr_db: None,
        ..result("cat", "error", 0.0)
    };
    h.record_results(run1, &[a1.clone(), b1.clone()]).unwrap();
    h.finish_run(run1, 2, 30.25).unwrap();

    let run2 = h.begin_run(&new_run("2026-11-02T00:00:00Z")).unwrap();
    let a2 = result("astronaut", "drift", 1.5e-3);
    h.record_result(run2, &a2).unwrap();
    h.finish_run(run2, 1, 15.0).unwrap();

    let all = h.recent(None, 20).unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(all[0].result, a2);
    assert_eq!(all[1].result, b1);
    assert_eq!(all[2].result, a1);
    assert_eq!(all[0].run_id, run2);
    assert_eq!(all[0].run_kind, "check");
    assert_eq!(all[0].run_started_at, "2026-11-02T00:00:00Z");
    assert_eq!(all[0].run_exit_code, Some(1));
    assert!(all[0].run_finished_at.is_some());
    assert!(all[0].id > all[1].id && all[1].id > all[2].id);
    assert_eq!(all[0].result.psnr_db, Some(f64::INFINITY));

    let astro = h.recent(Some("astronaut"), 20).unwrap();
    assert_eq!(
        astro.iter().map(|e| &e.result).collect::<Vec<_>>(),
        vec![&a2, &a1]
    );
    assert_eq!(h.recent(Some("astronaut"), 1).unwrap()[0].result, a2);
    assert_eq!(h.recent(None, 2).unwrap().len(), 2);
    assert!(h.recent(Some("nobody"), 20).unwrap().is_empty());
    assert!(h.recent(None, 0).unwrap().is_empty());
    assert_eq!(
        h.last_verdicts("astronaut", 5).unwrap(),
        vec![Verdict::Drift, Verdict::Identical]
    );
    assert_eq!(
        h.last_verdicts("astronaut", 1).unwrap(),
        vec![Verdict::Drift]
    );

    let run = h.run(run1).unwrap().unwrap();
    assert_eq!(run.exit_code, Some(2));
    assert_eq!(run.duration_s, Some(30.25));
    assert_eq!(run.model_path.as_deref(), Some("/models/sd15"));
    assert_eq!(run.environment, Some(json!({"os": "linux", "gpu": null})));
    assert!(h.run(9999).unwrap().is_none());
    assert!(h.finish_run(9999, 0, 1.0).is_err());

    // Survives reopening.
    drop(h);
    let h = History::open(&path).unwrap();
    assert_eq!(h.recent(None, 20).unwrap().len(), 3);
}

#[test]
fn results_of_an_unknown_run_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = History::open(dir.path().join("h.db")).unwrap();
    let e = h
        .record_result(42, &result("x", "identical", 0.0))
        .unwrap_err();
    let msg = one_line(&e);
    eprintln!("{msg}");
    assert!(msg.contains("recording result for case x"), "{msg}");
    assert!(msg.contains("h.db"), "{msg}");
    assert_eq!(h.counts().unwrap(), (0, 0));
}

#[test]
fn empty_file_migrates_to_the_current_schema_and_reopening_is_a_no_op() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("monitor.db");
    std::fs::write(&path, b"").unwrap(); // a v0 database: SQLite treats an empty file as one
    let mut h = History::open(&path).unwrap();
    assert_eq!(h.schema_version().unwrap(), SCHEMA_VERSION);
    let run = h.begin_run(&NewRun::now("rebaseline")).unwrap();
    h.record_result(run, &result("a", "identical", 0.0))
        .unwrap();
    drop(h);

    let h = History::open(&path).unwrap();
    assert_eq!(h.schema_version().unwrap(), SCHEMA_VERSION);
    assert_eq!(h.counts().unwrap(), (1, 1));
    drop(h);

    let conn = rusqlite::Connection::open(&path).unwrap();
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let indexes: Vec<String> = conn
        .prepare(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND name NOT LIKE 'sqlite_%'
             ORDER BY name",
        )
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        indexes,
        [
            "actions_at",
            "deliveries_pending",
            "results_case_id",
            "results_run_id",
            "runs_started_at"
        ]
    );
}

#[test]
fn newer_schema_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("future.db");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE runs (id INTEGER PRIMARY KEY); PRAGMA user_version = 99;")
            .unwrap();
    }
    let before = std::fs::read(&path).unwrap();
    let e = History::open(&path).unwrap_err();
    let msg = one_line(&e);
    eprintln!("{msg}");
    assert!(matches!(e, HistoryError::TooNew { found: 99, .. }), "{msg}");
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains("99"), "{msg}");
    assert_eq!(std::fs::read(&path).unwrap(), before, "file was modified");
}

#[test]
fn two_writers_at_once_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("busy.db");
    History::open(&path).unwrap();
    const THREADS: usize = 4;
    const RUNS: usize = 25;
    const CASES: usize = 8;
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let path = path.clone();
            std::thread::spawn(move || {
                // Each thread has its own connection, as separate processes would.
                let mut h = History::open(&path).unwrap();
                for _ in 0..RUNS {
                    let run = h.begin_run(&NewRun::now("check")).unwrap();
                    let results: Vec<_> = (0..CASES)
                        .map(|c| result(&format!("t{t}-c{c}"), "identical", 0.0))
                        .collect();
                    // Half one transaction per run, half one per result.
                    if t % 2 == 0 {
                        h.record_results(run, &results).unwrap();
                    } else {
                        for r in &results {
                            h.record_result(run, r).unwrap();
                        }
                    }
                    h.finish_run(run, 0, 1.0).unwrap();
                }
            })
        })
        .collect();
    // Meanwhile another process reads.
    let mut readers = 0;
    while !handles.iter().all(|h| h.is_finished()) {
        let out = Command::new(env!("CARGO_BIN_EXE_monitor"))
            .args(["history", "--json", "--database"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        readers += 1;
    }
    for h in handles {
        h.join().unwrap();
    }
    let h = History::open(&path).unwrap();
    assert_eq!(
        h.counts().unwrap(),
        ((THREADS * RUNS) as i64, (THREADS * RUNS * CASES) as i64)
    );
    for t in 0..THREADS {
        assert_eq!(
            h.recent(Some(&format!("t{t}-c0")), 1000).unwrap().len(),
            RUNS
        );
    }
    assert!(readers >= 1);
}

#[test]
fn lock_held_past_the_busy_timeout_is_a_clear_error_and_nothing_is_half_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("locked.db");
    let mut h = History::open_with_busy_timeout(&path, Duration::from_millis(200)).unwrap();
    let run = h.begin_run(&NewRun::now("check")).unwrap();

    let other = rusqlite::Connection::open(&path).unwrap();
    other
        .execute_batch(
            "BEGIN EXCLUSIVE; INSERT INTO runs (kind, started_at) VALUES ('check', 'x');",
        )
        .unwrap();

    let start = std::time::Instant::now();
    let batch = [result("a", "drift", 1.0), result("b", "drift", 1.0)];
    let e = h.record_results(run, &batch).unwrap_err();
    assert!(
        start.elapsed() >= Duration::from_millis(150),
        "did not wait"
    );
    let msg = one_line(&e);
    eprintln!("{msg}");
    assert!(e.is_locked(), "{msg}");
    assert!(msg.contains("database is locked"), "{msg}");
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains("recording result for case a"), "{msg}");
    // Reads still work beside the writer (WAL).
    assert!(h.recent(None, 10).unwrap().is_empty());
    // Opening another connection under the lock works too (nothing to migrate).
    let h2 = History::open_with_busy_timeout(&path, Duration::from_millis(200)).unwrap();
    let e = History::open_with_busy_timeout(&path, Duration::from_millis(200))
        .and_then(|mut h3| h3.begin_run(&NewRun::now("check")))
        .unwrap_err();
    assert!(e.is_locked(), "{e}");

    other.execute_batch("ROLLBACK").unwrap();
    drop(other);
    h.record_results(run, &batch).unwrap();
    drop(h2);
    assert_eq!(h.counts().unwrap(), (1, 2));
}

#[test]
fn migration_waits_for_a_locked_fresh_file() {
    // A brand-new file locked (rollback journal, exclusive) by another connection: opening
    // cannot even read it; the error says so and names the file.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fresh.db");
    let other = rusqlite::Connection::open(&path).unwrap();
    other
        .execute_batch("BEGIN EXCLUSIVE; CREATE TABLE t (x);")
        .unwrap();
    let e = History::open_with_busy_timeout(&path, Duration::from_millis(100)).unwrap_err();
    let msg = one_line(&e);
    eprintln!("{msg}");
    assert!(e.is_locked(), "{msg}");
    assert!(msg.contains("fresh.db"), "{msg}");
    other.execute_batch("ROLLBACK").unwrap();
    drop(other);
    assert_eq!(
        History::open(&path).unwrap().schema_version().unwrap(),
        SCHEMA_VERSION
    );
}

fn assert_corrupt_untouched(path: &Path, expect: &str) {
    let before = std::fs::read(path).unwrap();
    let e = History::open(path)
        .and_then(|h| h.recent(None, 10).map(|_| ()))
        .unwrap_err();
    let msg = one_line(&e);
    eprintln!("{msg}");
    assert!(matches!(e, HistoryError::Corrupt { .. }), "{msg}");
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains(expect), "{msg}");
    assert!(msg.contains("left untouched"), "{msg}");
    assert_eq!(std::fs::read(path).unwrap(), before, "file was modified");

    // The same through the binary: one line on stderr, exit 2, file unchanged.
    let out = Command::new(env!("CARGO_BIN_EXE_monitor"))
        .args(["history", "--database"])
        .arg(path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains(expect), "{stderr}");
    assert!(stderr.contains(&path.display().to_string()), "{stderr}");
    assert_eq!(std::fs::read(path).unwrap(), before, "file was modified");
}

#[test]
fn file_that_is_not_a_database_is_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.db");
    std::fs::write(&text, "storage:\n  database: monitor.db\n".repeat(200)).unwrap();
    assert_corrupt_untouched(&text, "file is not a database");

    let random = dir.path().join("random.db");
    // Deterministic pseudo-random bytes (xorshift), 64 KiB.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let bytes: Vec<u8> = (0..65_536)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(&random, &bytes).unwrap();
    assert_corrupt_untouched(&random, "file is not a database");
}

#[test]
fn damaged_database_is_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("damaged.db");
    {
        let mut h = History::open(&path).unwrap();
        let run = h.begin_run(&NewRun::now("check")).unwrap();
        let results: Vec<_> = (0..200)
            .map(|i| result(&format!("case{i}"), "identical", 0.0))
            .collect();
        h.record_results(run, &results).unwrap();
    } // last connection closed: WAL checkpointed into the file and removed
    let mut bytes = std::fs::read(&path).unwrap();
    assert!(bytes.len() > 8192);
    // Keep page 1 (header + schema), overwrite every other page with garbage.
    for (i, b) in bytes.iter_mut().enumerate().skip(4096) {
        *b = (i * 31 % 251) as u8;
    }
    std::fs::write(&path, &bytes).unwrap();
    assert_corrupt_untouched(&path, "database disk image is malformed");
}

#[test]
fn prune_removes_old_runs_and_their_results_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = History::open(dir.path().join("prune.db")).unwrap();
    let old = h.begin_run(&new_run("2020-01-01T00:00:00Z")).unwrap();
    h.record_results(old, &[result("a", "drift", 1.0), result("b", "drift", 1.0)])
        .unwrap();
    let mid = h.begin_run(&new_run("2026-10-01T00:00:00Z")).unwrap();
    h.record_result(mid, &result("a", "identical", 0.0))
        .unwrap();
    let new = h.begin_run(&NewRun::now("check")).unwrap();
    h.record_result(new, &result("a", "identical", 0.0))
        .unwrap();
    assert_eq!(h.counts().unwrap(), (3, 4));

    assert_eq!(h.prune_before("2026-01-01T00:00:00Z").unwrap(), 1);
    assert_eq!(h.counts().unwrap(), (2, 2));
    assert!(h.run(old).unwrap().is_none());
    assert!(h.recent(Some("b"), 10).unwrap().is_empty());
    assert_eq!(h.prune_before("2026-01-01T00:00:00Z").unwrap(), 0);

    // Retention in days, against now: keeps the run started now.
    assert!(h.prune(0).is_err());
    assert_eq!(h.prune(1).unwrap(), 1);
    assert_eq!(h.counts().unwrap(), (1, 1));
    assert_eq!(h.recent(None, 10).unwrap()[0].run_id, new);
}

#[test]
fn cli_table_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cli.db");
    {
        let mut h = History::open(&path).unwrap();
        for (i, verdict) in ["identical", "within_tolerance", "drift"]
            .iter()
            .enumerate()
        {
            let run = h.begin_run(&NewRun::now("check")).unwrap();
            let mut a = result("astronaut", verdict, 1.25e-4 * i as f64);
            a.baseline_version = Some(i as i64 + 1);
            let mut c = result("cat-in-a-hat", "identical", 0.0);
            c.ssim = None;
            h.record_results(run, &[a, c]).unwrap();
            h.finish_run(run, 0, 1.0).unwrap();
        }
    }
    let monitor = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_monitor"))
            .arg("history")
            .args(args)
            .arg("--database")
            .arg(&path)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };

    let (code, out, err) = monitor(&[]);
    assert_eq!(code, Some(0), "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 7, "{out}");
    for h in [
        "time",
        "case",
        "verdict",
        "latent max|Δ|",
        "SSIM",
        "baseline",
    ] {
        assert!(lines[0].contains(h), "{out}");
    }
    // Newest first; aligned (every row as wide as the header, in characters).
    assert!(
        lines[1].contains("cat-in-a-hat") && lines[1].contains(" - "),
        "{out}"
    );
    assert!(
        lines[2].contains("astronaut") && lines[2].contains("drift"),
        "{out}"
    );
    assert!(
        lines[2].contains("2.500e-4") && lines[2].contains("v3"),
        "{out}"
    );
    let width = lines[0].chars().count();
    assert!(lines.iter().all(|l| l.chars().count() == width), "{out}");
    let col = lines[0].find("verdict").unwrap();
    assert_eq!(&lines[2][col..col + 5], "drift", "{out}");

    let (code, out, _) = monitor(&["--case", "astronaut", "--limit", "2", "--json"]);
    assert_eq!(code, Some(0));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let arr = v.as_array().unwrap();
    assert_eq!(arr.len(), 2);
    assert_eq!(arr[0]["case_name"], "astronaut");
    assert_eq!(arr[0]["verdict"], "drift");
    assert_eq!(arr[1]["verdict"], "within_tolerance");
    assert_eq!(arr[0]["baseline_version"], 3);
    assert_eq!(arr[0]["run_kind"], "check");
    assert_eq!(arr[0]["reasons"], json!(["latent max |Δ| 1e-3 > 1e-4"]));
    assert!(arr[0]["psnr_db"].is_null()); // JSON has no infinity

    let (code, out, _) = monitor(&["--case", "nobody"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("no results for case nobody"), "{out}");
    let (code, out, _) = monitor(&["--case", "nobody", "--json"]);
    assert_eq!(code, Some(0));
    assert_eq!(out.trim(), "[]");

    // A missing database is an error (a typo should not create an empty history).
    let missing = dir.path().join("missing.db");
    let out = Command::new(env!("CARGO_BIN_EXE_monitor"))
        .args(["history", "--database"])
        .arg(&missing)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("missing.db"), "{err}");
    assert!(!missing.exists());
}

/// Helper for `two_processes_write_at_once`: a no-op unless started by it with the variable set.
#[test]
fn child_writer() {
    let Ok(path) = std::env::var("MONITOR_HISTORY_TEST_CHILD_DB") else {
        return;
    };
    let tag = std::process::id();
    let mut h = History::open(&path).unwrap();
    for _ in 0..30 {
        let run = h.begin_run(&NewRun::now("check")).unwrap();
        let results: Vec<_> = (0..5)
            .map(|c| result(&format!("p{tag}-c{c}"), "identical", 0.0))
            .collect();
        h.record_results(run, &results).unwrap();
        h.finish_run(run, 0, 1.0).unwrap();
    }
}

#[test]
fn two_processes_write_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("procs.db");
    let children: Vec<_> = (0..2)
        .map(|_| {
            Command::new(std::env::current_exe().unwrap())
                .args(["--exact", "child_writer", "--test-threads", "1"])
                .env("MONITOR_HISTORY_TEST_CHILD_DB", &path)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let h = History::open(&path).unwrap();
    assert_eq!(h.counts().unwrap(), (60, 300));
}

/// The v1 schema exactly as it shipped, with a finished run, a result and a run left unfinished
/// by a crash (v1 recorded no pid).
fn v1_database(path: &Path) {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch(
        "CREATE TABLE runs (id INTEGER PRIMARY KEY, kind TEXT NOT NULL, started_at TEXT NOT NULL,
            finished_at TEXT, exit_code INTEGER, duration_s REAL, model_path TEXT,
            environment_json TEXT, skipped_reason TEXT);
         CREATE TABLE results (id INTEGER PRIMARY KEY,
            run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            case_name TEXT NOT NULL, verdict TEXT NOT NULL, baseline_version INTEGER,
            latents_sha256 TEXT, latent_max_abs REAL, latent_mean_abs REAL, latent_rmse REAL,
            latent_cosine REAL, ssim REAL, psnr_db REAL, pixels_differing INTEGER,
            reasons_json TEXT, env_diff_json TEXT, error TEXT, duration_s REAL,
            timings_json TEXT, created_at TEXT NOT NULL);
         CREATE INDEX results_case_id ON results(case_name, id DESC);
         CREATE INDEX results_run_id ON results(run_id);
         CREATE INDEX runs_started_at ON runs(started_at);
         INSERT INTO runs (kind, started_at, finished_at, exit_code) VALUES
            ('check', '2026-11-01T00:00:00Z', '2026-11-01T00:01:00Z', 0),
            ('check', '2026-11-02T00:00:00Z', NULL, NULL);
         INSERT INTO results (run_id, case_name, verdict, created_at)
            VALUES (1, 'fox', 'identical', '2026-11-01T00:01:00Z');
         PRAGMA user_version = 1;",
    )
    .unwrap();
}

#[test]
fn a_v1_database_migrates_keeping_its_rows_and_its_crashed_run_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v1.db");
    v1_database(&path);
    let mut h = History::open(&path).unwrap();
    assert_eq!(h.schema_version().unwrap(), SCHEMA_VERSION);
    assert_eq!(h.counts().unwrap(), (2, 1));
    assert_eq!(h.run(1).unwrap().unwrap().status, "finished");
    // Before it is closed, a reader already sees the unfinished run as interrupted.
    let open = h.runs_without_results(10).unwrap();
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].status, "interrupted");
    assert_eq!(h.close_interrupted().unwrap(), 1);
    let closed = h.run(2).unwrap().unwrap();
    assert_eq!(closed.status, "interrupted");
    assert!(closed.finished_at.is_some());
    assert!(closed.error.unwrap().contains("older monitor"));
    assert_eq!(h.close_interrupted().unwrap(), 0);
    let app_id: i64 = rusqlite::Connection::open(&path)
        .unwrap()
        .query_row("PRAGMA application_id", [], |r| r.get(0))
        .unwrap();
    assert_eq!(app_id, monitor::history::APPLICATION_ID);
}

#[test]
fn runs_of_live_processes_stay_open_and_dead_ones_are_closed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h.db");
    let mut h = History::open(&path).unwrap();
    let mine = h.begin_run(&NewRun::now("check")).unwrap();
    // A run begun by a process that has exited since.
    let mut child = Command::new("true").spawn().unwrap();
    let dead_pid = child.id();
    child.wait().unwrap();
    let dead = h.begin_run(&NewRun::now("check")).unwrap();
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute(
            "UPDATE runs SET pid = ?1, pid_start = 1 WHERE id = ?2",
            rusqlite::params![dead_pid, dead],
        )
        .unwrap();
    assert_eq!(h.close_interrupted().unwrap(), 1);
    assert_eq!(h.run(mine).unwrap().unwrap().status, "running");
    let d = h.run(dead).unwrap().unwrap();
    assert_eq!(d.status, "interrupted");
    assert!(d.error.unwrap().contains(&format!("process {dead_pid}")));

    h.fail_run(mine, "worker could not start", 1.5).unwrap();
    let m = h.run(mine).unwrap().unwrap();
    assert_eq!((m.status.as_str(), m.exit_code), ("failed", Some(2)));
    assert_eq!(m.error.as_deref(), Some("worker could not start"));
    let ids: Vec<i64> = h
        .runs_without_results(10)
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids, [dead, mine]);
}

#[test]
fn a_foreign_database_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    for (name, sql) in [
        ("app.db", "CREATE TABLE users (id INTEGER PRIMARY KEY);"),
        (
            "versioned.db",
            "CREATE TABLE t (x); PRAGMA user_version = 1;",
        ),
        (
            "other-id.db",
            "PRAGMA application_id = 42; CREATE TABLE runs (id);",
        ),
    ] {
        let path = dir.path().join(name);
        rusqlite::Connection::open(&path)
            .unwrap()
            .execute_batch(sql)
            .unwrap();
        let before = std::fs::read(&path).unwrap();
        let e = History::open(&path).unwrap_err();
        let msg = one_line(&e);
        assert!(matches!(e, HistoryError::Foreign { .. }), "{name}: {msg}");
        assert!(msg.contains("not a monitor history"), "{msg}");
        assert_eq!(std::fs::read(&path).unwrap(), before, "{name} was modified");
        assert!(!dir.path().join(format!("{name}-wal")).exists());
    }
}

#[test]
fn last_verdicts_count_only_check_runs() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = History::open(dir.path().join("monitor.db")).unwrap();
    for (day, verdict) in [("01", "identical"), ("02", "drift")] {
        let run = h
            .begin_run(&new_run(&format!("2026-11-{day}T00:00:00Z")))
            .unwrap();
        h.record_result(run, &result("astronaut", verdict, 0.0))
            .unwrap();
    }
    // A rebaseline's rows (its output against the version it replaces, or `new`) are no check
    // results: alert thresholds must not count them.
    let rb = h
        .begin_run(&NewRun {
            kind: "rebaseline".into(),
            ..new_run("2026-11-03T00:00:00Z")
        })
        .unwrap();
    h.record_results(
        rb,
        &[
            result("astronaut", "drift", 2e-3),
            result("astronaut", "new", 0.0),
        ],
    )
    .unwrap();
    assert_eq!(
        h.last_verdicts("astronaut", 5).unwrap(),
        vec![Verdict::Drift, Verdict::Identical]
    );
    assert_eq!(
        h.recent(Some("astronaut"), 1).unwrap()[0].result.verdict,
        Verdict::New
    );
}

#[test]
fn pruning_takes_old_alerts_and_actions_but_never_an_undelivered_alert() {
    use monitor::alert::{compose, outbox};
    use monitor::daemon::record::{self, Action};
    let dir = tempfile::tempdir().unwrap();
    let mut h = History::open(dir.path().join("monitor.db")).unwrap();
    let done = outbox::enqueue(&mut h, &compose::test_alert(), &[]).unwrap();
    let waiting = outbox::enqueue(&mut h, &compose::test_alert(), &["webhook"]).unwrap();
    record::record_action(
        &h,
        &Action {
            run_id: None,
            at: "2026-12-01T00:00:00Z".into(),
            kind: "restart".into(),
            cases: vec!["fox".into()],
            target: Some("systemctl restart sd-webui.service".into()),
            outcome: "ok".into(),
            detail: None,
            duration_s: Some(1.0),
        },
    )
    .unwrap();
    // Everything is older than a cutoff in the future.
    h.prune_before("2999-01-01T00:00:00Z").unwrap();
    let ids: Vec<i64> = outbox::recent(&h, 10)
        .unwrap()
        .iter()
        .map(|a| a.id)
        .collect();
    assert_eq!(
        ids,
        [waiting],
        "alert {done} (nothing pending) should be gone"
    );
    assert_eq!(outbox::undelivered(&h).unwrap(), 1);
    assert!(record::recent_actions(&h, 10).unwrap().is_empty());
}

#[test]
fn a_case_trend_holds_only_checks_up_to_the_round() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = History::open(dir.path().join("h.db")).unwrap();
    let mut ids = Vec::new();
    for (i, kind) in ["check", "quick", "check", "verify", "check", "check"]
        .iter()
        .enumerate()
    {
        let id = h
            .begin_run(&NewRun {
                kind: kind.to_string(),
                ..new_run(&format!("2026-01-0{}T00:00:00Z", i + 1))
            })
            .unwrap();
        h.record_results(id, &[result("fox", "drift", i as f64)])
            .unwrap();
        ids.push(id);
    }
    // The round of the 5th run: the checks among runs 1..=5, newest first, at most 2.
    let t = h.case_trend("fox", ids[4], 2).unwrap();
    let got: Vec<i64> = t.iter().map(|e| e.run_id).collect();
    assert_eq!(got, [ids[4], ids[2]]);
    assert!(t.iter().all(|e| e.run_kind == "check"));
    // Enough history: quick and verify runs never fill the slots of checks.
    let got: Vec<i64> = h
        .case_trend("fox", ids[5], 10)
        .unwrap()
        .iter()
        .map(|e| e.run_id)
        .collect();
    assert_eq!(got, [ids[5], ids[4], ids[2], ids[0]]);
    assert!(h.case_trend("owl", ids[5], 10).unwrap().is_empty());
}
