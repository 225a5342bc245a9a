//! `monitor status`: where every case stands, read from the history database (so it works while
//! the daemon runs, from any process, without the daemon's help).

use anyhow::Result;
use serde::Serialize;

use crate::alert::outbox;
use crate::alert::state::{self, Phase};
use crate::config::Config;
use crate::daemon::record::{self, Action, DaemonRow};
use crate::history::History;

/// One case's line.
#[derive(Debug, Clone, Serialize)]
pub struct CaseStatus {
    /// Case name.
    pub name: String,
    /// Its last check verdict (rebaselines do not count).
    pub last_verdict: Option<String>,
    /// When that check recorded it.
    pub last_checked_at: Option<String>,
    /// ok | pending | firing.
    pub alert: Phase,
    /// "ok", "pending 1 of 3", "firing since 2026-12-04T10:00:00Z (drift)".
    pub alert_text: String,
    /// Bad rounds in a row.
    pub bad_streak: u32,
    /// A restart did not help; no more restarts until it resolves.
    pub escalated: bool,
}

/// The daemon as last recorded.
#[derive(Debug, Clone, Serialize)]
pub struct DaemonStatus {
    /// running | stopped | dead (no clean stop and its process is gone) | never started.
    pub state: String,
    /// What it recorded.
    #[serde(flatten)]
    pub row: Option<DaemonRow>,
}

/// Everything `monitor status` shows.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// The daemon.
    pub daemon: DaemonStatus,
    /// Per case, config order.
    pub cases: Vec<CaseStatus>,
    /// Alert deliveries not yet made.
    pub undelivered_alerts: usize,
    /// The newest remediation actions, newest first.
    pub last_actions: Vec<Action>,
}

/// Reads the status of `config`'s cases.
pub fn read(config: &Config) -> Result<Status> {
    let h = History::open_existing(&config.storage.database)?;
    let row = record::daemon_row(&h)?;
    let state = match &row {
        None => "never started".to_string(),
        Some(r) if r.stopped_at.is_some() => "stopped".to_string(),
        Some(r) => {
            let alive = r
                .pid
                .and_then(|p| u32::try_from(p).ok())
                .is_some_and(|p| crate::process::is_running(p, None));
            if alive {
                "running"
            } else {
                "dead (no clean stop; its process is gone)"
            }
            .to_string()
        }
    };
    let policy = &config.alerts;
    let mut cases = Vec::new();
    for c in &config.cases {
        let last = h
            .recent(Some(&c.name), 50)?
            .into_iter()
            .find(|e| e.run_kind == "check");
        let st = state::load(&h, &c.name)?;
        let alert_text = match st.phase {
            Phase::Ok => "ok".to_string(),
            Phase::Pending => format!("pending {} of {}", st.bad_streak, policy.failure_threshold),
            Phase::Firing => format!(
                "firing since {} ({}){}",
                st.firing_since.as_deref().unwrap_or("?"),
                st.verdict.map_or("?".into(), |v| v.to_string()),
                if st.escalated { ", escalated" } else { "" }
            ),
        };
        cases.push(CaseStatus {
            name: c.name.clone(),
            last_verdict: last.as_ref().map(|e| e.result.verdict.to_string()),
            last_checked_at: last.map(|e| e.created_at),
            alert: st.phase,
            alert_text,
            bad_streak: st.bad_streak,
            escalated: st.escalated,
        });
    }
    Ok(Status {
        daemon: DaemonStatus { state, row },
        cases,
        undelivered_alerts: outbox::undelivered(&h)?,
        last_actions: record::recent_actions(&h, 3)?,
    })
}
