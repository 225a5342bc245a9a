//! The run history: one SQLite file (WAL) holding every `check`/`rebaseline` run and each case's
//! result with all its metrics and verdict.
//!
//! Safe with several `monitor` processes at once: WAL lets readers run beside one writer, every
//! write transaction starts `IMMEDIATE` (takes the write lock up front, so the busy timeout
//! applies instead of an instant `SQLITE_BUSY` on a read-to-write upgrade), and a writer waits up
//! to the busy timeout (5 s) for another to finish. A write that still cannot get the lock fails
//! with [`HistoryError::Locked`] and its transaction rolls back: nothing half-written.
//!
//! A file that is not a SQLite database, or is corrupt, is never deleted, recreated or written:
//! every operation on it fails with [`HistoryError::Corrupt`], one line naming the file.
//! `PRAGMA quick_check` is not run on open: it reads every page (about a second per few hundred MB;
//! see `cargo bench --bench history`), while SQLite reports corruption on the pages it touches
//! anyway, and those errors are mapped to the same clear message.
//!
//! Only what is listed in the schema is stored: metrics, verdicts, the environment fingerprint and
//! timings — never configuration blobs (which could later hold secrets).
//!
//! Verdicts are plain strings here (`identical|within_tolerance|drift|model_changed|error`) so this
//! module does not depend on the comparison code.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, ErrorCode, OptionalExtension, TransactionBehavior};
use serde::Serialize;

use crate::compare::Verdict;

use crate::clock::{rfc3339, utc_now_rfc3339};

/// How long a writer waits for another process's write transaction before giving up.
pub const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Schema migrations, in order; migration `i` takes `PRAGMA user_version` from `i` to `i + 1`.
/// Append only: never edit a script that has shipped.
const MIGRATIONS: &[&str] = &[
    // v1
    "CREATE TABLE runs (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL,              -- check | rebaseline
        started_at TEXT NOT NULL,        -- RFC 3339 UTC, e.g. 2026-11-27T03:23:10Z
        finished_at TEXT,
        exit_code INTEGER,
        duration_s REAL,
        model_path TEXT,
        environment_json TEXT,           -- environment fingerprint snapshot
        skipped_reason TEXT
    );
    CREATE TABLE results (
        id INTEGER PRIMARY KEY,
        run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        case_name TEXT NOT NULL,
        verdict TEXT NOT NULL,           -- identical | within_tolerance | drift | model_changed | error
        baseline_version INTEGER,
        latents_sha256 TEXT,
        latent_max_abs REAL,
        latent_mean_abs REAL,
        latent_rmse REAL,
        latent_cosine REAL,
        ssim REAL,
        psnr_db REAL,
        pixels_differing INTEGER,
        reasons_json TEXT,
        env_diff_json TEXT,
        error TEXT,
        duration_s REAL,
        timings_json TEXT,
        created_at TEXT NOT NULL
    );
    CREATE INDEX results_case_id ON results(case_name, id DESC);
    CREATE INDEX results_run_id ON results(run_id);
    CREATE INDEX runs_started_at ON runs(started_at);",
    // v2: how each run ended (so a crashed or failed run is visible), who ran it, and an
    // application id that tells this file apart from other programs' SQLite files.
    "ALTER TABLE runs ADD COLUMN status TEXT;       -- running | finished | failed | interrupted
    ALTER TABLE runs ADD COLUMN error TEXT;          -- why a run failed or was interrupted
    ALTER TABLE runs ADD COLUMN pid INTEGER;         -- the monitor process that ran it
    ALTER TABLE runs ADD COLUMN pid_start INTEGER;   -- its start time (pids are reused)
    ALTER TABLE runs ADD COLUMN host TEXT;
    UPDATE runs SET status = 'finished' WHERE finished_at IS NOT NULL;
    PRAGMA application_id = 1396985166;",
    // v3: the daemon. What started a run; skipped ticks; per-case alert state; the durable alert
    // outbox (one row per alert, one delivery row per channel); remediation actions; the daemon's
    // own heartbeat and next run, for `monitor status`.
    "ALTER TABLE runs ADD COLUMN trigger TEXT;      -- manual | schedule | signal | recheck | once
    CREATE TABLE alert_state (
        case_name TEXT PRIMARY KEY,
        state TEXT NOT NULL,             -- ok | pending | firing
        verdict TEXT,                    -- the last bad verdict (what it fires for)
        bad_streak INTEGER NOT NULL DEFAULT 0,
        good_streak INTEGER NOT NULL DEFAULT 0,
        firing_since TEXT,               -- RFC 3339
        last_notified_at REAL,           -- unix seconds of the last firing/reminder message
        escalated INTEGER NOT NULL DEFAULT 0,  -- a restart did not help; no more restarts
        updated_at TEXT NOT NULL
    );
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY,
        created_at TEXT NOT NULL,
        run_id INTEGER,                  -- the round that raised it (kept when the run is pruned)
        kind TEXT NOT NULL,              -- firing | reminder | resolved | escalation | auto_rebaseline | test
        title TEXT NOT NULL,
        payload_json TEXT NOT NULL       -- the versioned alert document (no secrets)
    );
    CREATE TABLE deliveries (
        id INTEGER PRIMARY KEY,
        alert_id INTEGER NOT NULL REFERENCES outbox(id) ON DELETE CASCADE,
        channel TEXT NOT NULL,           -- email | slack | webhook
        state TEXT NOT NULL,             -- pending | delivered | failed
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL,   -- unix seconds
        last_error TEXT,                 -- redacted: never a secret
        delivered_at TEXT,
        UNIQUE (alert_id, channel)
    );
    CREATE INDEX deliveries_pending ON deliveries(state, next_attempt_at);
    CREATE TABLE actions (
        id INTEGER PRIMARY KEY,
        run_id INTEGER,
        at TEXT NOT NULL,
        at_unix REAL NOT NULL,
        kind TEXT NOT NULL,              -- restart | recheck | auto_rebaseline | escalation
        cases TEXT,                      -- comma-separated case names
        target TEXT,                     -- unit or argv
        outcome TEXT NOT NULL,           -- ok | failed | timed_out | over_budget | still_drifting | fixed
        detail TEXT,
        duration_s REAL
    );
    CREATE INDEX actions_at ON actions(at_unix);
    CREATE TABLE daemon (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        pid INTEGER,
        started_at TEXT,
        heartbeat_at TEXT,
        stopped_at TEXT,
        next_run_at TEXT,
        last_round TEXT                  -- one-line summary of the last round
    );",
    // v4: cross-platform checks. Run kinds `verify` (determinism self-test) and `snapshot`;
    // per-result details that only some results have: the runs of a determinism test, batch
    // invariance, the reference snapshot a check compared with.
    "ALTER TABLE results ADD COLUMN details_json TEXT;",
];

/// `PRAGMA application_id` of a monitor history ("SDMN").
pub const APPLICATION_ID: i64 = 0x5344_4D4E;

/// The schema version this binary writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// A history failure; `Display` is one line naming the database file.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// Another connection held the write lock longer than the busy timeout.
    #[error("{action} in {}: database is locked (another monitor process held it longer than the {timeout_s} s busy timeout); nothing was written, try again", .path.display())]
    Locked {
        path: PathBuf,
        action: String,
        timeout_s: f64,
    },
    /// Not a SQLite database, or a damaged one.
    #[error("{action} in {}: {detail}; the file was left untouched (move it aside to start a new history)", .path.display())]
    Corrupt {
        path: PathBuf,
        action: String,
        detail: String,
    },
    /// Written by a newer `monitor`.
    #[error("{} has history schema version {found}, newer than this monitor knows ({known}); upgrade monitor (the file was left untouched)", .path.display())]
    TooNew {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    /// A SQLite database of some other program.
    #[error("{}: not a monitor history database ({detail}); the file was left untouched (point storage.database elsewhere)", .path.display())]
    Foreign { path: PathBuf, detail: String },
    /// `history` pointed at a file that does not exist.
    #[error("{}: no such history database (monitor check creates it)", .path.display())]
    Missing { path: PathBuf },
    /// Any other SQLite or I/O failure.
    #[error("{action} in {}: {message}", .path.display())]
    Other {
        path: PathBuf,
        action: String,
        message: String,
    },
}

impl HistoryError {
    /// True for [`HistoryError::Locked`].
    pub fn is_locked(&self) -> bool {
        matches!(self, HistoryError::Locked { .. })
    }
}

/// A run about to start.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NewRun {
    /// `check` or `rebaseline`.
    pub kind: String,
    /// What started it: manual, schedule, signal, recheck, once (None: not recorded).
    pub trigger: Option<String>,
    /// RFC 3339 UTC (`YYYY-MM-DDTHH:MM:SSZ`; retention compares these as text).
    pub started_at: String,
    pub model_path: Option<String>,
    /// Environment fingerprint snapshot.
    pub environment: Option<serde_json::Value>,
    /// Set when the run was skipped as a whole (e.g. model unreachable).
    pub skipped_reason: Option<String>,
}

impl NewRun {
    /// A run of `kind` starting now, with nothing else set.
    pub fn now(kind: &str) -> NewRun {
        NewRun {
            kind: kind.to_string(),
            trigger: None,
            started_at: utc_now_rfc3339(),
            model_path: None,
            environment: None,
            skipped_reason: None,
        }
    }
}

/// One case's outcome within a run. JSON fields are stored as JSON text.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CaseResult {
    pub case_name: String,
    /// The verdict (stored as its name).
    pub verdict: Verdict,
    pub baseline_version: Option<i64>,
    pub latents_sha256: Option<String>,
    pub latent_max_abs: Option<f64>,
    pub latent_mean_abs: Option<f64>,
    pub latent_rmse: Option<f64>,
    pub latent_cosine: Option<f64>,
    pub ssim: Option<f64>,
    /// Infinite for identical images (SQLite stores ±inf; NaN is stored as NULL).
    pub psnr_db: Option<f64>,
    pub pixels_differing: Option<i64>,
    pub reasons: Option<serde_json::Value>,
    pub env_diff: Option<serde_json::Value>,
    pub error: Option<String>,
    pub duration_s: Option<f64>,
    pub timings: Option<serde_json::Value>,
    /// What only some results carry: determinism runs, batch invariance, a reference snapshot.
    pub details: Option<serde_json::Value>,
}

impl CaseResult {
    /// A result of `case_name` with `verdict` and nothing else recorded.
    pub fn new(case_name: impl Into<String>, verdict: Verdict) -> CaseResult {
        CaseResult {
            case_name: case_name.into(),
            verdict,
            baseline_version: None,
            latents_sha256: None,
            latent_max_abs: None,
            latent_mean_abs: None,
            latent_rmse: None,
            latent_cosine: None,
            ssim: None,
            psnr_db: None,
            pixels_differing: None,
            reasons: None,
            env_diff: None,
            error: None,
            duration_s: None,
            timings: None,
            details: None,
        }
    }
}

/// A stored result joined with its run, as `recent` returns it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HistoryEntry {
    /// The result's row id (increases with insertion order).
    pub id: i64,
    pub run_id: i64,
    pub run_kind: String,
    pub run_started_at: String,
    pub run_finished_at: Option<String>,
    pub run_exit_code: Option<i64>,
    /// The run's status (see [`RunInfo::status`]).
    pub run_status: String,
    /// Why the run failed or was interrupted.
    pub run_error: Option<String>,
    /// When the result was recorded (RFC 3339 UTC).
    pub created_at: String,
    #[serde(flatten)]
    pub result: CaseResult,
}

/// A run row as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunInfo {
    pub id: i64,
    pub kind: String,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub exit_code: Option<i64>,
    pub duration_s: Option<f64>,
    pub model_path: Option<String>,
    pub environment: Option<serde_json::Value>,
    pub skipped_reason: Option<String>,
    /// `running`, `finished`, `failed`, `interrupted` or `skipped` (`finished` for runs recorded before v2).
    pub status: String,
    /// Why the run failed or was interrupted.
    pub error: Option<String>,
}

/// An open history database.
pub struct History {
    conn: Connection,
    path: PathBuf,
    busy_timeout: Duration,
}

impl fmt::Debug for History {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("History").field("path", &self.path).finish()
    }
}

/// The SELECT of [`HistoryEntry`] rows (results joined with their run), for `entry_from_row`.
fn entry_select() -> String {
    format!(
        "SELECT r.id, r.run_id, u.kind, u.started_at, u.finished_at, u.exit_code, r.created_at,
                {}, u.status, u.error
         FROM results r JOIN runs u ON u.id = r.run_id",
        RESULT_COLUMNS
            .split(", ")
            .map(|c| format!("r.{}", c.trim()))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

const RESULT_COLUMNS: &str =
    "case_name, verdict, baseline_version, latents_sha256, latent_max_abs, \
    latent_mean_abs, latent_rmse, latent_cosine, ssim, psnr_db, pixels_differing, reasons_json, \
    env_diff_json, error, duration_s, timings_json, details_json";

impl History {
    /// Opens (creating it and its folder if needed) and migrates the database at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<History, HistoryError> {
        Self::open_with_busy_timeout(path, DEFAULT_BUSY_TIMEOUT)
    }

    /// Opens an existing database; [`HistoryError::Missing`] if there is no file (read commands
    /// should not create one at a mistyped path).
    pub fn open_existing(path: impl AsRef<Path>) -> Result<History, HistoryError> {
        let path = path.as_ref();
        if !path.exists() {
            return Err(HistoryError::Missing {
                path: path.to_path_buf(),
            });
        }
        Self::open(path)
    }

    /// [`History::open`] with another busy timeout (tests use a short one).
    pub fn open_with_busy_timeout(
        path: impl AsRef<Path>,
        busy_timeout: Duration,
    ) -> Result<History, HistoryError> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| HistoryError::Other {
                path: path.clone(),
                action: format!("creating folder {}", dir.display()),
                message: e.to_string(),
            })?;
        }
        let conn =
            Connection::open(&path).map_err(|e| map_err(&path, busy_timeout, "opening", e))?;
        let mut h = History {
            conn,
            path,
            busy_timeout,
        };
        h.configure()?;
        h.migrate()?;
        Ok(h)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A rusqlite error as a [`HistoryError`] naming this database and `action`.
    pub(crate) fn err(&self, action: impl Into<String>, e: rusqlite::Error) -> HistoryError {
        map_err(&self.path, self.busy_timeout, action, e)
    }

    /// The connection, for the modules that own the daemon's tables (alerts, actions).
    pub(crate) fn conn(&self) -> &Connection {
        &self.conn
    }

    /// The connection, for transactions of the modules that own the daemon's tables.
    pub(crate) fn conn_mut(&mut self) -> &mut Connection {
        &mut self.conn
    }

    fn configure(&mut self) -> Result<(), HistoryError> {
        // The busy timeout first: switching to WAL itself may wait for another process.
        self.conn
            .busy_timeout(self.busy_timeout)
            .map_err(|e| self.err("setting the busy timeout", e))?;
        // The first statement that reads the file: a non-database fails here, before anything
        // is written. A newer schema is refused before the journal mode could change the header.
        self.identify()?;
        // Switching a new file to WAL while another process opens it too fails with SQLITE_BUSY
        // at once, without calling the busy handler (seen in `two_processes_write_at_once`), so
        // retry by hand until the busy timeout. Once a file is in WAL mode (it stays so), this
        // pragma takes no lock.
        let deadline = Instant::now() + self.busy_timeout;
        let mode: String = loop {
            match self
                .conn
                .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            {
                Err(e) if is_busy(&e) && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                r => break r.map_err(|e| self.err("switching the history to WAL", e))?,
            }
        };
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(HistoryError::Other {
                path: self.path.clone(),
                action: "enabling WAL".into(),
                message: format!(
                    "journal mode stayed {mode:?} (a file system without shared memory?)"
                ),
            });
        }
        // NORMAL is corruption-safe in WAL mode: it skips the fsync per commit and syncs at
        // checkpoints, so a power loss can drop the last few commits but never damages the file.
        // Losing the newest run's rows on power loss is acceptable (the next scheduled check
        // records again); an fsync per result would only lengthen the time a writer holds the lock.
        self.conn
            .execute_batch("PRAGMA foreign_keys=ON; PRAGMA synchronous=NORMAL;")
            .map_err(|e| self.err("configuring the connection", e))?;
        Ok(())
    }

    /// Refuses, before anything is written, a file that is not a monitor history (another
    /// program's SQLite database) or is one of a newer schema. Ours: the application id, or (files
    /// from before v2 set it) a `runs` table; a file without tables is new.
    fn identify(&self) -> Result<(), HistoryError> {
        let read = |sql: &str| -> Result<i64, HistoryError> {
            self.conn
                .query_row(sql, [], |r| r.get(0))
                .map_err(|e| self.err("opening the history", e))
        };
        let found = read("PRAGMA user_version")?;
        let app_id = read("PRAGMA application_id")?;
        let tables: Vec<String> = self
            .conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .and_then(|mut st| {
                st.query_map([], |r| r.get(0))
                    .and_then(|rows| rows.collect())
            })
            .map_err(|e| self.err("opening the history", e))?;
        let ours = app_id == APPLICATION_ID
            || (app_id == 0 && tables.iter().any(|t| t == "runs"))
            || (app_id == 0 && found == 0 && tables.is_empty());
        if !ours {
            let mut shown: Vec<&str> = tables.iter().map(String::as_str).take(5).collect();
            if tables.len() > 5 {
                shown.push("…");
            }
            return Err(HistoryError::Foreign {
                path: self.path.clone(),
                detail: format!(
                    "application_id {app_id:#x}, user_version {found}, tables: {}",
                    if shown.is_empty() {
                        "none".to_string()
                    } else {
                        shown.join(", ")
                    }
                ),
            });
        }
        if found > SCHEMA_VERSION {
            return Err(self.too_new(found));
        }
        Ok(())
    }

    /// The schema version stored in the file.
    pub fn schema_version(&self) -> Result<i64, HistoryError> {
        self.conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| self.err("reading the schema version", e))
    }

    fn too_new(&self, found: i64) -> HistoryError {
        HistoryError::TooNew {
            path: self.path.clone(),
            found,
            known: SCHEMA_VERSION,
        }
    }

    fn migrate(&mut self) -> Result<(), HistoryError> {
        let found = self.schema_version()?;
        if found > SCHEMA_VERSION {
            return Err(self.too_new(found));
        }
        if found == SCHEMA_VERSION {
            return Ok(());
        }
        for (i, sql) in MIGRATIONS.iter().enumerate() {
            let target = i as i64 + 1;
            let action = format!("migrating the schema to version {target}");
            let path = self.path.clone();
            let timeout = self.busy_timeout;
            let e = |e| map_err(&path, timeout, action.clone(), e);
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(e)?;
            // Re-read under the write lock: another process may have migrated meanwhile.
            let now: i64 = tx
                .query_row("PRAGMA user_version", [], |r| r.get(0))
                .map_err(e)?;
            if now > SCHEMA_VERSION {
                return Err(HistoryError::TooNew {
                    path,
                    found: now,
                    known: SCHEMA_VERSION,
                });
            }
            if now >= target {
                continue;
            }
            tx.execute_batch(sql).map_err(e)?;
            tx.pragma_update(None, "user_version", target).map_err(e)?;
            tx.commit().map_err(e)?;
        }
        Ok(())
    }

    /// Records the start of a run; returns its id.
    pub fn begin_run(&mut self, run: &NewRun) -> Result<i64, HistoryError> {
        let env = run.environment.as_ref().map(|v| v.to_string());
        let pid = std::process::id();
        let pid_start = crate::process::start_ticks(pid).and_then(|t| i64::try_from(t).ok());
        self.conn
            .execute(
                "INSERT INTO runs (kind, started_at, model_path, environment_json, skipped_reason,
                                   status, pid, pid_start, host, trigger)
                 VALUES (?1, ?2, ?3, ?4, ?5, 'running', ?6, ?7, ?8, ?9)",
                params![
                    run.kind,
                    run.started_at,
                    run.model_path,
                    env,
                    run.skipped_reason,
                    pid,
                    pid_start,
                    crate::fingerprint::hostname(),
                    run.trigger,
                ],
            )
            .map_err(|e| self.err(format!("recording the start of a {} run", run.kind), e))?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Records one case's result (one transaction).
    pub fn record_result(&mut self, run_id: i64, result: &CaseResult) -> Result<(), HistoryError> {
        self.record_results(run_id, std::slice::from_ref(result))
    }

    /// Records several results of one run in one transaction: all of them or none.
    pub fn record_results(
        &mut self,
        run_id: i64,
        results: &[CaseResult],
    ) -> Result<(), HistoryError> {
        let created_at = utc_now_rfc3339();
        let path = self.path.clone();
        let timeout = self.busy_timeout;
        let action = |case: &str| format!("recording result for case {case} (run {run_id})");
        let first = results.first().map(|r| r.case_name.as_str()).unwrap_or("-");
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| map_err(&path, timeout, action(first), e))?;
        {
            let mut stmt = tx
                .prepare_cached(&format!(
                    "INSERT INTO results (run_id, {RESULT_COLUMNS}, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)"
                ))
                .map_err(|e| map_err(&path, timeout, action(first), e))?;
            for r in results {
                stmt.execute(params![
                    run_id,
                    r.case_name,
                    r.verdict,
                    r.baseline_version,
                    r.latents_sha256,
                    r.latent_max_abs,
                    r.latent_mean_abs,
                    r.latent_rmse,
                    r.latent_cosine,
                    r.ssim,
                    r.psnr_db,
                    r.pixels_differing,
                    r.reasons.as_ref().map(|v| v.to_string()),
                    r.env_diff.as_ref().map(|v| v.to_string()),
                    r.error,
                    r.duration_s,
                    r.timings.as_ref().map(|v| v.to_string()),
                    r.details.as_ref().map(|v| v.to_string()),
                    created_at,
                ])
                .map_err(|e| map_err(&path, timeout, action(&r.case_name), e))?;
            }
        }
        tx.commit()
            .map_err(|e| map_err(&path, timeout, action(first), e))
    }

    /// Records the end of a run (sets `finished_at` to now).
    pub fn finish_run(
        &mut self,
        run_id: i64,
        exit_code: i32,
        duration_s: f64,
    ) -> Result<(), HistoryError> {
        let action = format!("recording the end of run {run_id}");
        let n = self
            .conn
            .execute(
                "UPDATE runs SET finished_at = ?1, exit_code = ?2, duration_s = ?3,
                                 status = 'finished' WHERE id = ?4",
                params![utc_now_rfc3339(), exit_code, duration_s, run_id],
            )
            .map_err(|e| self.err(action.clone(), e))?;
        if n == 0 {
            return Err(HistoryError::Other {
                path: self.path.clone(),
                action,
                message: "no such run".into(),
            });
        }
        Ok(())
    }

    /// Records that a run stopped on an error (exit code 2): it ends `failed`, with the message.
    pub fn fail_run(
        &mut self,
        run_id: i64,
        error: &str,
        duration_s: f64,
    ) -> Result<(), HistoryError> {
        self.conn
            .execute(
                "UPDATE runs SET finished_at = ?1, exit_code = 2, duration_s = ?2,
                                 status = 'failed', error = ?3 WHERE id = ?4",
                params![utc_now_rfc3339(), duration_s, error, run_id],
            )
            .map_err(|e| self.err(format!("recording the failure of run {run_id}"), e))?;
        Ok(())
    }

    /// Closes the runs whose process is gone without finishing them (killed, crashed, or unable
    /// to write its end): they become `interrupted`, with the reason. Runs of processes on other
    /// hosts (a shared database) are left to those hosts. Returns how many were closed.
    pub fn close_interrupted(&mut self) -> Result<usize, HistoryError> {
        let host = crate::fingerprint::hostname();
        // (run id, pid, pid start time, host)
        type OpenRun = (i64, Option<i64>, Option<i64>, Option<String>);
        let open: Vec<OpenRun> = {
            let mut stmt = self
                .conn
                .prepare_cached(
                    "SELECT id, pid, pid_start, host FROM runs WHERE finished_at IS NULL",
                )
                .map_err(|e| self.err("finding unfinished runs", e))?;
            let rows = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>());
            rows.map_err(|e| self.err("finding unfinished runs", e))?
        };
        let mut closed = 0;
        for (id, pid, start, run_host) in open {
            let Some(reason) = interrupted_reason(pid, start, run_host.as_deref(), host.as_deref())
            else {
                continue;
            };
            self.conn
                .execute(
                    "UPDATE runs SET status = 'interrupted', error = ?1, finished_at = ?2
                     WHERE id = ?3 AND finished_at IS NULL",
                    params![reason, utc_now_rfc3339(), id],
                )
                .map_err(|e| self.err(format!("closing interrupted run {id}"), e))?;
            closed += 1;
        }
        Ok(closed)
    }

    /// The newest `limit` runs that recorded no result (failed, interrupted or still running),
    /// newest first: they have no row in [`History::recent`].
    pub fn runs_without_results(&self, limit: usize) -> Result<Vec<RunInfo>, HistoryError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let run = || -> rusqlite::Result<Vec<RunInfo>> {
            let mut stmt = self.conn.prepare_cached(&format!(
                "SELECT {RUN_COLUMNS} FROM runs u
                 WHERE NOT EXISTS (SELECT 1 FROM results r WHERE r.run_id = u.id)
                 ORDER BY u.id DESC LIMIT ?1"
            ))?;
            let rows = stmt.query_map([limit], run_from_row)?;
            rows.collect()
        };
        run().map_err(|e| self.err("reading runs without results", e))
    }

    /// Records a check that did not run at all (a tick that came while another check was still
    /// running): a finished run with status `skipped` and the reason. Returns its id.
    pub fn record_skipped(&mut self, trigger: &str, reason: &str) -> Result<i64, HistoryError> {
        let id = self.begin_run(&NewRun {
            trigger: Some(trigger.to_string()),
            skipped_reason: Some(reason.to_string()),
            ..NewRun::now("check")
        })?;
        self.conn
            .execute(
                "UPDATE runs SET finished_at = started_at, duration_s = 0, status = 'skipped'
                 WHERE id = ?1",
                [id],
            )
            .map_err(|e| self.err(format!("recording skipped run {id}"), e))?;
        Ok(id)
    }

    /// Marks a run as skipped as a whole, with the reason.
    pub fn mark_skipped(&mut self, run_id: i64, reason: &str) -> Result<(), HistoryError> {
        self.conn
            .execute(
                "UPDATE runs SET skipped_reason = ?1 WHERE id = ?2",
                params![reason, run_id],
            )
            .map_err(|e| self.err(format!("marking run {run_id} skipped"), e))?;
        Ok(())
    }

    /// One run, if it exists.
    pub fn run(&self, run_id: i64) -> Result<Option<RunInfo>, HistoryError> {
        self.conn
            .query_row(
                &format!("SELECT {RUN_COLUMNS} FROM runs u WHERE id = ?1"),
                [run_id],
                run_from_row,
            )
            .optional()
            .map_err(|e| self.err(format!("reading run {run_id}"), e))
    }

    /// The newest `limit` results (of `case`, or of all cases), newest first, with their run.
    /// "Newest" is insertion order (result id), which a wall-clock step cannot reorder.
    pub fn recent(
        &self,
        case: Option<&str>,
        limit: usize,
    ) -> Result<Vec<HistoryEntry>, HistoryError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        // Two statements, not `?1 IS NULL OR case_name = ?1`, so each gets its index.
        let select = entry_select();
        let action = match case {
            Some(c) => format!("reading the history of case {c}"),
            None => "reading the history".to_string(),
        };
        let run = || -> rusqlite::Result<Vec<HistoryEntry>> {
            match case {
                Some(c) => {
                    let mut stmt = self.conn.prepare_cached(&format!(
                        "{select} WHERE r.case_name = ?1 ORDER BY r.id DESC LIMIT ?2"
                    ))?;
                    let rows = stmt.query_map(params![c, limit], entry_from_row)?;
                    rows.collect()
                }
                None => {
                    let mut stmt = self
                        .conn
                        .prepare_cached(&format!("{select} ORDER BY r.id DESC LIMIT ?1"))?;
                    let rows = stmt.query_map(params![limit], entry_from_row)?;
                    rows.collect()
                }
            }
        };
        run().map_err(|e| self.err(action, e))
    }

    /// Adds the ONNX Runtime release the worker loaded to run `run_id`'s environment (known
    /// only once the worker has started).
    pub fn note_runtime(
        &mut self,
        run_id: i64,
        onnxruntime_version: &str,
    ) -> Result<(), HistoryError> {
        self.conn
            .execute(
                "UPDATE runs SET environment_json =
                     json_set(COALESCE(environment_json, '{}'), '$.onnxruntime_version', ?1)
                 WHERE id = ?2",
                params![onnxruntime_version, run_id],
            )
            .map_err(|e| self.err(format!("recording the runtime of run {run_id}"), e))?;
        Ok(())
    }

    /// Every result of run `run_id`, in the order recorded (a report's rows).
    pub fn run_results(&self, run_id: i64) -> Result<Vec<HistoryEntry>, HistoryError> {
        let select = format!("{} WHERE r.run_id = ?1 ORDER BY r.id", entry_select());
        let run = || -> rusqlite::Result<Vec<HistoryEntry>> {
            let mut stmt = self.conn.prepare_cached(&select)?;
            let rows = stmt.query_map([run_id], entry_from_row)?;
            rows.collect()
        };
        run().map_err(|e| self.err(format!("reading the results of run {run_id}"), e))
    }

    /// Ids of the stored runs from `ids` (which report folders still have their run).
    pub fn existing_runs(&self, ids: &[i64]) -> Result<Vec<i64>, HistoryError> {
        let run = || -> rusqlite::Result<Vec<i64>> {
            let mut stmt = self
                .conn
                .prepare_cached("SELECT 1 FROM runs WHERE id = ?1")?;
            let mut out = Vec::new();
            for &id in ids {
                if stmt.exists([id])? {
                    out.push(id);
                }
            }
            Ok(out)
        };
        run().map_err(|e| self.err("reading run ids", e))
    }

    /// The newest finished run of kind `check`, if any (`monitor report --latest`).
    pub fn latest_check(&self) -> Result<Option<i64>, HistoryError> {
        self.conn
            .query_row(
                "SELECT max(id) FROM runs WHERE kind = 'check' AND status != 'running'",
                [],
                |r| r.get(0),
            )
            .map_err(|e| self.err("reading the latest check", e))
    }

    /// The newest `limit` check results of `case` in runs up to `up_to_run`, newest first: a
    /// report's trend, also for a report of an older round rebuilt later.
    pub fn case_trend(
        &self,
        case: &str,
        up_to_run: i64,
        limit: usize,
    ) -> Result<Vec<HistoryEntry>, HistoryError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let run = || -> rusqlite::Result<Vec<HistoryEntry>> {
            let mut stmt = self.conn.prepare_cached(&format!(
                "{} WHERE r.case_name = ?1 AND u.kind = 'check' AND r.run_id <= ?2
                 ORDER BY r.id DESC LIMIT ?3",
                entry_select()
            ))?;
            let rows = stmt.query_map(params![case, up_to_run, limit], entry_from_row)?;
            rows.collect()
        };
        run().map_err(|e| self.err(format!("reading the trend of case {case}"), e))
    }

    /// The last `n` check verdicts of `case`, newest first (for "N failures in a row" alerts).
    /// Only results of check runs count: a rebaseline's `new`, or its drift against the version
    /// it replaces, is no failed check.
    pub fn last_verdicts(&self, case: &str, n: usize) -> Result<Vec<Verdict>, HistoryError> {
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        let run = || -> rusqlite::Result<Vec<Verdict>> {
            let mut stmt = self.conn.prepare_cached(
                "SELECT r.verdict FROM results r JOIN runs u ON u.id = r.run_id
                 WHERE r.case_name = ?1 AND u.kind = 'check' ORDER BY r.id DESC LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![case, n], |r| r.get(0))?;
            rows.collect()
        };
        run().map_err(|e| self.err(format!("reading the last verdicts of case {case}"), e))
    }

    /// Number of runs and of results stored.
    pub fn counts(&self) -> Result<(i64, i64), HistoryError> {
        self.conn
            .query_row(
                "SELECT (SELECT count(*) FROM runs), (SELECT count(*) FROM results)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(|e| self.err("counting rows", e))
    }

    /// Deletes runs that started more than `retention_days` days ago (their results go with
    /// them); returns the number of runs deleted. `retention_days` must be at least 1 (keeping
    /// everything is "don't call prune"). See [`History::prune_before`].
    pub fn prune(&mut self, retention_days: u32) -> Result<usize, HistoryError> {
        if retention_days == 0 {
            return Err(HistoryError::Other {
                path: self.path.clone(),
                action: "pruning the history".into(),
                message: "retention must be at least 1 day".into(),
            });
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let cutoff = rfc3339(now.saturating_sub(u64::from(retention_days) * 86_400));
        self.prune_before(&cutoff)
    }

    /// Deletes runs with `started_at` before `cutoff` (RFC 3339 UTC) in one transaction, with the
    /// alerts (unless still undelivered) and remediation actions older than it, then
    /// truncates the WAL. No VACUUM: it rewrites the whole file under an exclusive lock (blocking
    /// a concurrent check for seconds on a large history) and needs up to twice the disk space,
    /// while the freed pages are reused by the next inserts, so under a fixed retention the file
    /// stays at its steady-state size anyway.
    pub fn prune_before(&mut self, cutoff: &str) -> Result<usize, HistoryError> {
        let action = format!("pruning runs started before {cutoff}");
        let path = self.path.clone();
        let timeout = self.busy_timeout;
        let e = |e| map_err(&path, timeout, action.clone(), e);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(e)?;
        let n = tx
            .execute("DELETE FROM runs WHERE started_at < ?1", [cutoff])
            .map_err(e)?;
        // The daemon's records age out with the runs; an alert still waiting for a delivery
        // stays however old it is (nothing is lost), and its deliveries go with it (cascade).
        tx.execute(
            "DELETE FROM outbox WHERE created_at < ?1 AND NOT EXISTS
                 (SELECT 1 FROM deliveries d WHERE d.alert_id = outbox.id AND d.state = 'pending')",
            [cutoff],
        )
        .map_err(e)?;
        tx.execute("DELETE FROM actions WHERE at < ?1", [cutoff])
            .map_err(e)?;
        tx.commit().map_err(e)?;
        // Best effort: a reader in another process can keep part of the WAL alive; that is no
        // error (the checkpoint reports it as busy and the next one finishes the job).
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .map_err(e)?;
        Ok(n)
    }

    /// Runs `PRAGMA quick_check` (reads every page); `Ok(())` or a [`HistoryError::Corrupt`].
    pub fn quick_check(&self) -> Result<(), HistoryError> {
        let action = "checking the database";
        let mut stmt = self
            .conn
            .prepare("PRAGMA quick_check")
            .map_err(|e| self.err(action, e))?;
        let msgs: Vec<String> = stmt
            .query_map([], |r| r.get(0))
            .and_then(|rows| rows.collect())
            .map_err(|e| self.err(action, e))?;
        if msgs.len() == 1 && msgs[0] == "ok" {
            Ok(())
        } else {
            Err(HistoryError::Corrupt {
                path: self.path.clone(),
                action: action.into(),
                detail: format!("database disk image is malformed: {}", msgs.join("; ")),
            })
        }
    }
}

const RUN_COLUMNS: &str = "u.id, u.kind, u.started_at, u.finished_at, u.exit_code, u.duration_s, \
    u.model_path, u.environment_json, u.skipped_reason, u.status, u.error, u.pid, u.pid_start, u.host";

fn run_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RunInfo> {
    let finished_at: Option<String> = r.get(3)?;
    let (status, error) = run_status(
        finished_at.is_some(),
        r.get(9)?,
        r.get(10)?,
        r.get(11)?,
        r.get(12)?,
        r.get(13)?,
    );
    Ok(RunInfo {
        id: r.get(0)?,
        kind: r.get(1)?,
        started_at: r.get(2)?,
        status,
        finished_at,
        exit_code: r.get(4)?,
        duration_s: r.get(5)?,
        model_path: r.get(6)?,
        environment: json_col(r, 7)?,
        skipped_reason: r.get(8)?,
        error,
    })
}

/// A run's status as a reader should see it: a `running` run whose process is gone is
/// `interrupted` (a read does not write that down; the next check or rebaseline does).
fn run_status(
    finished: bool,
    status: Option<String>,
    error: Option<String>,
    pid: Option<i64>,
    pid_start: Option<i64>,
    host: Option<String>,
) -> (String, Option<String>) {
    let status = status.unwrap_or_else(|| if finished { "finished" } else { "running" }.into());
    if status != "running" {
        return (status, error);
    }
    let this_host = crate::fingerprint::hostname();
    match interrupted_reason(pid, pid_start, host.as_deref(), this_host.as_deref()) {
        Some(why) => ("interrupted".into(), error.or(Some(why))),
        None => (status, error),
    }
}

/// Why an unfinished run can no longer finish, or `None` while its process may still run it.
/// A run recorded before v2 has no pid, so nothing can still be running it; a run of another
/// host (a shared database) is left to that host.
fn interrupted_reason(
    pid: Option<i64>,
    pid_start: Option<i64>,
    run_host: Option<&str>,
    this_host: Option<&str>,
) -> Option<String> {
    let Some(pid) = pid.and_then(|p| u32::try_from(p).ok()) else {
        return Some("interrupted: recorded by an older monitor that did not finish it".into());
    };
    if run_host.is_some() && run_host != this_host {
        return None;
    }
    if crate::process::is_running(pid, pid_start.and_then(|s| u64::try_from(s).ok())) {
        return None;
    }
    Some(format!("interrupted: process {pid} ended without finishing the run (killed, crashed, or the history was not writable at its end)"))
}

fn json_col(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Option<serde_json::Value>> {
    let s: Option<String> = r.get(i)?;
    s.map(|s| {
        serde_json::from_str(&s).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
        })
    })
    .transpose()
}

fn entry_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<HistoryEntry> {
    let finished_at: Option<String> = r.get(4)?;
    let status: Option<String> = r.get(24)?;
    Ok(HistoryEntry {
        run_status: status.unwrap_or_else(|| {
            if finished_at.is_some() {
                "finished"
            } else {
                "running"
            }
            .into()
        }),
        run_error: r.get(25)?,
        id: r.get(0)?,
        run_id: r.get(1)?,
        run_kind: r.get(2)?,
        run_started_at: r.get(3)?,
        run_finished_at: finished_at,
        run_exit_code: r.get(5)?,
        created_at: r.get(6)?,
        result: CaseResult {
            case_name: r.get(7)?,
            verdict: r.get(8)?,
            baseline_version: r.get(9)?,
            latents_sha256: r.get(10)?,
            latent_max_abs: r.get(11)?,
            latent_mean_abs: r.get(12)?,
            latent_rmse: r.get(13)?,
            latent_cosine: r.get(14)?,
            ssim: r.get(15)?,
            psnr_db: r.get(16)?,
            pixels_differing: r.get(17)?,
            reasons: json_col(r, 18)?,
            env_diff: json_col(r, 19)?,
            error: r.get(20)?,
            duration_s: r.get(21)?,
            timings: json_col(r, 22)?,
            details: json_col(r, 23)?,
        },
    })
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

/// Maps a SQLite error to a one-line [`HistoryError`] naming the file.
fn map_err(
    path: &Path,
    timeout: Duration,
    action: impl Into<String>,
    e: rusqlite::Error,
) -> HistoryError {
    let action = action.into();
    let path = path.to_path_buf();
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => HistoryError::Locked {
            path,
            action,
            timeout_s: timeout.as_secs_f64(),
        },
        Some(ErrorCode::NotADatabase) => HistoryError::Corrupt {
            path,
            action,
            detail: "file is not a database".into(),
        },
        Some(ErrorCode::DatabaseCorrupt) => HistoryError::Corrupt {
            path,
            action,
            detail: "database disk image is malformed".into(),
        },
        code => {
            // SQLite's own words name no cause an operator can act on; say the likely one.
            let hint = match code {
                Some(ErrorCode::SystemIoFailure) => " (is the disk full, or failing?)",
                Some(ErrorCode::DiskFull) => " (free some space; nothing was written)",
                Some(ErrorCode::CannotOpen) => " (does its folder exist and is it writable?)",
                Some(ErrorCode::ReadOnly) => " (the file or its folder is read-only)",
                _ => "",
            };
            HistoryError::Other {
                path,
                action,
                message: format!("{}{hint}", e.to_string().replace('\n', " ")),
            }
        }
    }
}

impl rusqlite::types::ToSql for Verdict {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        Ok(self.as_str().into())
    }
}

impl rusqlite::types::FromSql for Verdict {
    fn column_result(v: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        let s = v.as_str()?;
        s.parse()
            .map_err(|e: String| rusqlite::types::FromSqlError::Other(e.into()))
    }
}
