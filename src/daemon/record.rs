//! What the daemon writes about itself into the history database, for `monitor status` (which
//! works while the daemon runs, from any process): its pid, heartbeat, next run, last round, and
//! every remediation action with its outcome.

use rusqlite::{params, OptionalExtension};
use serde::Serialize;

use crate::clock::{unix_now, utc_now_rfc3339};
use crate::history::{History, HistoryError};

/// Records that this process is the daemon (replacing what a previous one left).
pub fn started(h: &History) -> Result<(), HistoryError> {
    let now = utc_now_rfc3339();
    h.conn()
        .execute(
            "INSERT INTO daemon (id, pid, started_at, heartbeat_at, stopped_at, next_run_at, last_round)
             VALUES (1, ?1, ?2, ?2, NULL, NULL, NULL)
             ON CONFLICT (id) DO UPDATE SET pid = ?1, started_at = ?2, heartbeat_at = ?2,
                 stopped_at = NULL, next_run_at = NULL",
            params![std::process::id(), now],
        )
        .map(|_| ())
        .map_err(|e| h.err("recording the daemon's start", e))
}

/// Heartbeat, next run time (RFC 3339, or none) and, when given, the last round's summary.
pub fn heartbeat(
    h: &History,
    next_run: Option<&str>,
    last_round: Option<&str>,
) -> Result<(), HistoryError> {
    h.conn()
        .execute(
            "UPDATE daemon SET heartbeat_at = ?1, next_run_at = ?2,
                 last_round = COALESCE(?3, last_round) WHERE id = 1",
            params![utc_now_rfc3339(), next_run, last_round],
        )
        .map(|_| ())
        .map_err(|e| h.err("recording the daemon's heartbeat", e))
}

/// Records a clean stop.
pub fn stopped(h: &History) -> Result<(), HistoryError> {
    h.conn()
        .execute(
            "UPDATE daemon SET stopped_at = ?1, next_run_at = NULL WHERE id = 1",
            [utc_now_rfc3339()],
        )
        .map(|_| ())
        .map_err(|e| h.err("recording the daemon's stop", e))
}

/// The daemon row.
#[derive(Debug, Clone, Serialize)]
pub struct DaemonRow {
    /// Its process id.
    pub pid: Option<i64>,
    /// When it started.
    pub started_at: Option<String>,
    /// Its last sign of life.
    pub heartbeat_at: Option<String>,
    /// When it stopped cleanly (None while running, or after a crash).
    pub stopped_at: Option<String>,
    /// The next scheduled check.
    pub next_run_at: Option<String>,
    /// The last round's summary.
    pub last_round: Option<String>,
}

/// The daemon row, if a daemon ever ran on this database.
pub fn daemon_row(h: &History) -> Result<Option<DaemonRow>, HistoryError> {
    h.conn()
        .query_row(
            "SELECT pid, started_at, heartbeat_at, stopped_at, next_run_at, last_round FROM daemon WHERE id = 1",
            [],
            |r| {
                Ok(DaemonRow {
                    pid: r.get(0)?,
                    started_at: r.get(1)?,
                    heartbeat_at: r.get(2)?,
                    stopped_at: r.get(3)?,
                    next_run_at: r.get(4)?,
                    last_round: r.get(5)?,
                })
            },
        )
        .optional()
        .map_err(|e| h.err("reading the daemon row", e))
}

/// One remediation step and how it ended.
#[derive(Debug, Clone, Serialize)]
pub struct Action {
    /// The round's run id.
    pub run_id: Option<i64>,
    /// When (RFC 3339).
    pub at: String,
    /// restart | recheck | auto_rebaseline | escalation.
    pub kind: String,
    /// The cases it was for.
    pub cases: Vec<String>,
    /// The unit or command.
    pub target: Option<String>,
    /// ok | failed | timed_out | not_started | over_budget | still_drifting | fixed.
    pub outcome: String,
    /// One line of detail.
    pub detail: Option<String>,
    /// How long it took.
    pub duration_s: Option<f64>,
}

/// Records an action.
pub fn record_action(h: &History, a: &Action) -> Result<(), HistoryError> {
    h.conn()
        .execute(
            "INSERT INTO actions (run_id, at, at_unix, kind, cases, target, outcome, detail, duration_s)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                a.run_id,
                a.at,
                unix_now(),
                a.kind,
                a.cases.join(","),
                a.target,
                a.outcome,
                a.detail,
                a.duration_s
            ],
        )
        .map(|_| ())
        .map_err(|e| h.err(format!("recording the {} action", a.kind), e))
}

/// Unix times of restarts attempted since `since` (for the restart budget).
pub fn restarts_since(h: &History, since: f64) -> Result<Vec<f64>, HistoryError> {
    let run = || -> rusqlite::Result<Vec<f64>> {
        let mut stmt = h.conn().prepare_cached(
            "SELECT at_unix FROM actions WHERE kind = 'restart' AND at_unix >= ?1 ORDER BY at_unix",
        )?;
        let rows = stmt.query_map([since], |r| r.get(0))?;
        rows.collect()
    };
    run().map_err(|e| h.err("reading recent restarts", e))
}

/// The newest `limit` actions, newest first.
pub fn recent_actions(h: &History, limit: usize) -> Result<Vec<Action>, HistoryError> {
    let run = || -> rusqlite::Result<Vec<Action>> {
        let mut stmt = h.conn().prepare_cached(
            "SELECT run_id, at, kind, cases, target, outcome, detail, duration_s FROM actions
             ORDER BY id DESC LIMIT ?1",
        )?;
        let rows = stmt.query_map([i64::try_from(limit).unwrap_or(i64::MAX)], |r| {
            let cases: Option<String> = r.get(3)?;
            Ok(Action {
                run_id: r.get(0)?,
                at: r.get(1)?,
                kind: r.get(2)?,
                cases: cases
                    .unwrap_or_default()
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect(),
                target: r.get(4)?,
                outcome: r.get(5)?,
                detail: r.get(6)?,
                duration_s: r.get(7)?,
            })
        })?;
        rows.collect()
    };
    run().map_err(|e| h.err("reading remediation actions", e))
}
