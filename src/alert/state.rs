//! Per-case alert state, as operators know it from Gatus and Alertmanager: a case fires after
//! `failure_threshold` bad rounds in a row, resolves after `success_threshold` good ones, and is
//! re-announced every `reminder_interval` while it keeps firing. The state lives in the history
//! database (`alert_state`), so a restarted daemon neither forgets a firing case nor fires it twice.

use rusqlite::{params, OptionalExtension};
use serde::Serialize;

use crate::alert::config::AlertsConfig;
use crate::compare::Verdict;
use crate::history::{History, HistoryError};

/// Where a case stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Good, or never checked.
    Ok,
    /// Bad, but fewer than `failure_threshold` rounds in a row.
    Pending,
    /// Announced as failing.
    Firing,
}

impl Phase {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Ok => "ok",
            Phase::Pending => "pending",
            Phase::Firing => "firing",
        }
    }

    fn parse(s: &str) -> Phase {
        match s {
            "firing" => Phase::Firing,
            "pending" => Phase::Pending,
            _ => Phase::Ok,
        }
    }
}

/// One case's alert state.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CaseState {
    /// Case name.
    pub case_name: String,
    /// Where it stands.
    pub phase: Phase,
    /// The last bad verdict (what it fires for).
    pub verdict: Option<Verdict>,
    /// Bad rounds in a row.
    pub bad_streak: u32,
    /// Good rounds in a row.
    pub good_streak: u32,
    /// When it started firing (RFC 3339).
    pub firing_since: Option<String>,
    /// Unix seconds of the last firing or reminder message.
    pub last_notified: Option<f64>,
    /// A restart did not fix it: no more restarts until it resolves.
    pub escalated: bool,
}

impl CaseState {
    /// A case never seen before.
    pub fn new(case_name: &str) -> CaseState {
        CaseState {
            case_name: case_name.to_string(),
            phase: Phase::Ok,
            verdict: None,
            bad_streak: 0,
            good_streak: 0,
            firing_since: None,
            last_notified: None,
            escalated: false,
        }
    }
}

/// What one round did to a case's state (what to say about it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Still good.
    Ok,
    /// Bad, below the threshold.
    Pending,
    /// Crossed the threshold this round: announce.
    Fired,
    /// Still firing, nothing to say.
    StillFiring,
    /// Still firing and the reminder interval has passed: announce again.
    Reminder,
    /// Good for `success_threshold` rounds after firing.
    Resolved,
    /// Good again, but not yet for `success_threshold` rounds.
    Recovering,
}

/// Applies one verdict to a case's state. Pure: `now` is unix seconds, `now_text` its RFC 3339.
/// `remind` is false for re-checks, which are not rounds of their own for reminders.
pub fn step(
    st: &mut CaseState,
    verdict: Verdict,
    policy: &AlertsConfig,
    now: f64,
    now_text: &str,
    remind: bool,
) -> Change {
    if verdict.is_bad() {
        st.bad_streak = st.bad_streak.saturating_add(1);
        st.good_streak = 0;
        st.verdict = Some(verdict);
        match st.phase {
            Phase::Firing => {
                let every = policy.reminder_interval;
                let due = st
                    .last_notified
                    .is_none_or(|t| now - t >= every.as_secs_f64());
                if remind && !every.is_zero() && due {
                    st.last_notified = Some(now);
                    Change::Reminder
                } else {
                    Change::StillFiring
                }
            }
            _ if st.bad_streak >= policy.failure_threshold.max(1) => {
                st.phase = Phase::Firing;
                st.firing_since = Some(now_text.to_string());
                st.last_notified = Some(now);
                Change::Fired
            }
            _ => {
                st.phase = Phase::Pending;
                Change::Pending
            }
        }
    } else {
        st.good_streak = st.good_streak.saturating_add(1);
        st.bad_streak = 0;
        match st.phase {
            Phase::Firing if st.good_streak >= policy.success_threshold.max(1) => {
                *st = CaseState::new(&st.case_name);
                st.good_streak = policy.success_threshold.max(1);
                Change::Resolved
            }
            Phase::Firing => Change::Recovering,
            _ => {
                st.phase = Phase::Ok;
                st.verdict = None;
                Change::Ok
            }
        }
    }
}

/// Every stored case state.
pub fn load_all(history: &History) -> Result<Vec<CaseState>, HistoryError> {
    let run = || -> rusqlite::Result<Vec<CaseState>> {
        let mut stmt = history.conn().prepare_cached(
            "SELECT case_name, state, verdict, bad_streak, good_streak, firing_since,
                    last_notified_at, escalated
             FROM alert_state ORDER BY case_name",
        )?;
        let rows = stmt.query_map([], from_row)?;
        rows.collect()
    };
    run().map_err(|e| history.err("reading the alert state", e))
}

/// One case's stored state, or a fresh one.
pub fn load(history: &History, case: &str) -> Result<CaseState, HistoryError> {
    history
        .conn()
        .query_row(
            "SELECT case_name, state, verdict, bad_streak, good_streak, firing_since,
                    last_notified_at, escalated
             FROM alert_state WHERE case_name = ?1",
            [case],
            from_row,
        )
        .optional()
        .map(|o| o.unwrap_or_else(|| CaseState::new(case)))
        .map_err(|e| history.err(format!("reading the alert state of case {case}"), e))
}

fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<CaseState> {
    let phase: String = r.get(1)?;
    Ok(CaseState {
        case_name: r.get(0)?,
        phase: Phase::parse(&phase),
        verdict: r.get(2)?,
        bad_streak: r.get(3)?,
        good_streak: r.get(4)?,
        firing_since: r.get(5)?,
        last_notified: r.get(6)?,
        escalated: r.get::<_, i64>(7)? != 0,
    })
}

/// Stores the states in one transaction.
pub fn save_all(history: &mut History, states: &[CaseState]) -> Result<(), HistoryError> {
    let now = crate::clock::utc_now_rfc3339();
    let run = |conn: &mut rusqlite::Connection| -> rusqlite::Result<()> {
        let tx = conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO alert_state (case_name, state, verdict, bad_streak, good_streak,
                        firing_since, last_notified_at, escalated, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT (case_name) DO UPDATE SET state = ?2, verdict = ?3, bad_streak = ?4,
                        good_streak = ?5, firing_since = ?6, last_notified_at = ?7,
                        escalated = ?8, updated_at = ?9",
            )?;
            for s in states {
                stmt.execute(params![
                    s.case_name,
                    s.phase.as_str(),
                    s.verdict,
                    s.bad_streak,
                    s.good_streak,
                    s.firing_since,
                    s.last_notified,
                    i64::from(s.escalated),
                    now,
                ])?;
            }
        }
        tx.commit()
    };
    let r = run(history.conn_mut());
    r.map_err(|e| history.err("saving the alert state", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::duration::ConfigDuration;
    use std::time::Duration;

    fn policy(fail: u32, ok: u32, remind_s: u64) -> AlertsConfig {
        AlertsConfig {
            failure_threshold: fail,
            success_threshold: ok,
            reminder_interval: ConfigDuration(Duration::from_secs(remind_s)),
            ..AlertsConfig::default()
        }
    }

    fn run(st: &mut CaseState, p: &AlertsConfig, seq: &[(Verdict, f64)]) -> Vec<Change> {
        seq.iter()
            .map(|&(v, t)| step(st, v, p, t, "2026-12-04T00:00:00Z", true))
            .collect()
    }

    use Change::*;
    use Verdict::{Drift, Error, Identical, WithinTolerance};

    #[test]
    fn fires_after_failure_threshold_and_resolves_after_success_threshold() {
        let p = policy(2, 2, 0);
        let mut st = CaseState::new("a");
        let got = run(
            &mut st,
            &p,
            &[
                (Identical, 0.0),
                (Drift, 1.0),
                (Identical, 2.0), // a single bad round below the threshold is forgotten
                (Drift, 3.0),
                (Error, 4.0),
                (Drift, 5.0),
                (WithinTolerance, 6.0),
                (Drift, 7.0), // recovering is interrupted: still firing, no new message
                (Identical, 8.0),
                (Identical, 9.0),
                (Identical, 10.0),
            ],
        );
        assert_eq!(
            got,
            [
                Ok,
                Pending,
                Ok,
                Pending,
                Fired,
                StillFiring,
                Recovering,
                StillFiring,
                Recovering,
                Resolved,
                Ok
            ]
        );
        assert_eq!(st.phase, Phase::Ok);
    }

    #[test]
    fn reminders_repeat_at_the_interval_and_zero_turns_them_off() {
        let p = policy(1, 1, 100);
        let mut st = CaseState::new("a");
        let got = run(
            &mut st,
            &p,
            &[
                (Drift, 0.0),
                (Drift, 50.0),
                (Drift, 100.0),
                (Drift, 150.0),
                (Drift, 200.0),
            ],
        );
        assert_eq!(got, [Fired, StillFiring, Reminder, StillFiring, Reminder]);
        let mut st = CaseState::new("b");
        let got = run(&mut st, &policy(1, 1, 0), &[(Drift, 0.0), (Drift, 1e9)]);
        assert_eq!(got, [Fired, StillFiring]);
        // A re-check never reminds.
        let mut st = CaseState::new("c");
        step(&mut st, Drift, &p, 0.0, "", true);
        assert_eq!(step(&mut st, Drift, &p, 500.0, "", false), StillFiring);
    }

    #[test]
    fn state_survives_a_reopened_database() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("monitor.db");
        let p = policy(1, 3, 0);
        let mut st = CaseState::new("sunset");
        step(&mut st, Drift, &p, 10.0, "2026-12-04T00:00:10Z", true);
        st.escalated = true;
        {
            let mut h = History::open(&path).unwrap();
            save_all(&mut h, std::slice::from_ref(&st)).unwrap();
        }
        let h = History::open(&path).unwrap();
        assert_eq!(load(&h, "sunset").unwrap(), st);
        assert_eq!(load(&h, "other").unwrap(), CaseState::new("other"));
        assert_eq!(load_all(&h).unwrap(), vec![st]);
    }
}
