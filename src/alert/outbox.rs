//! The durable outbox: an alert is committed (with one `pending` delivery per channel) before
//! anything is sent, then each delivery is tried until its channel accepts it or refuses it for
//! good. A crash, a restart or a dead relay delays an alert; it never loses one.
//!
//! Delivery is at-least-once. Each outcome is recorded right after its send, so the only way to
//! send twice is a crash between a channel accepting an alert and the outcome being committed;
//! receivers can de-duplicate on the alert's `id`. Before sending, a delivery is claimed (its
//! next attempt pushed [`CLAIM_LEASE`] ahead) so that two processes delivering from the same
//! database (the daemon and `monitor alert test`) do not both send it.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

use rusqlite::{params, OptionalExtension, TransactionBehavior};
use serde::Serialize;

use super::{Alert, Channel, SendError};
use crate::clock::{rfc3339, unix_now, utc_now_rfc3339};
use crate::history::{History, HistoryError};

/// How long a claimed delivery is hidden from other processes: longer than any send may take
/// (sends time out after `alerts.timeout`), short enough that a crash mid-send delays the
/// delivery only a little.
pub const CLAIM_LEASE: Duration = Duration::from_secs(300);

/// The error recorded for a delivery whose channel was removed from the config.
pub const CHANNEL_GONE: &str = "channel no longer configured";

/// Retry delays: `initial`, doubling each attempt, at most `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Delay after the first failed attempt.
    pub initial: Duration,
    /// Longest delay.
    pub max: Duration,
}

impl Backoff {
    /// The wait after `attempts` failed attempts (1 for the first): `initial · 2^(attempts−1)`,
    /// at most `max`, and never shorter than the server's `retry_after`.
    pub fn delay(&self, attempts: u32, retry_after: Option<Duration>) -> Duration {
        let doublings = attempts.saturating_sub(1).min(32);
        let exp = self
            .initial
            .checked_mul(1u32 << doublings.min(31))
            .unwrap_or(self.max)
            .min(self.max);
        exp.max(retry_after.unwrap_or(Duration::ZERO))
    }
}

/// What one delivery round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DeliveryReport {
    /// Deliveries a channel accepted.
    pub delivered: usize,
    /// Deliveries left pending, to be tried again.
    pub retrying: usize,
    /// Deliveries that failed for good.
    pub failed: usize,
}

/// One channel's delivery of an alert.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeliveryRow {
    /// "email", "slack" or "webhook".
    pub channel: String,
    /// `pending`, `delivered` or `failed`.
    pub state: String,
    /// Sends tried so far.
    pub attempts: u32,
    /// The last failed attempt's error (no secrets).
    pub last_error: Option<String>,
    /// When the channel accepted it (RFC 3339 UTC).
    pub delivered_at: Option<String>,
    /// When a pending delivery is tried next (RFC 3339 UTC).
    pub next_attempt_at: Option<String>,
}

/// A stored alert with its deliveries, as `monitor alerts` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlertRow {
    /// Outbox id (the alert's `id`).
    pub id: i64,
    /// When it was raised (RFC 3339 UTC).
    pub created_at: String,
    /// firing, reminder, resolved, escalation, auto_rebaseline or test.
    pub kind: String,
    /// The alert's one-line title.
    pub title: String,
    /// One per channel it was addressed to, by channel name.
    pub deliveries: Vec<DeliveryRow>,
}

/// Stores `alert` and one pending delivery per channel in one transaction; returns its id (also
/// written into the stored document). With no channels the alert is still kept, for the record.
pub fn enqueue(
    history: &mut History,
    alert: &Alert,
    channels: &[&str],
) -> Result<i64, HistoryError> {
    let action = format!("storing alert {:?}", alert.title);
    let now = unix_now();
    let created_at = if alert.created_at.is_empty() {
        utc_now_rfc3339()
    } else {
        alert.created_at.clone()
    };
    let mut seen = HashSet::new();
    let unique: Vec<&str> = channels
        .iter()
        .copied()
        .filter(|c| seen.insert(*c))
        .collect();
    let tx = history
        .conn_mut()
        .transaction_with_behavior(TransactionBehavior::Immediate);
    let run = |tx: &rusqlite::Transaction<'_>| -> Result<i64, rusqlite::Error> {
        tx.execute(
            "INSERT INTO outbox (created_at, run_id, kind, title, payload_json)
             VALUES (?1, ?2, ?3, ?4, '{}')",
            params![created_at, alert.run_id, alert.kind.as_str(), alert.title],
        )?;
        let id = tx.last_insert_rowid();
        let mut stored = alert.clone();
        stored.id = id;
        stored.created_at = created_at.clone();
        let payload = serde_json::to_string(&stored)
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        tx.execute(
            "UPDATE outbox SET payload_json = ?1 WHERE id = ?2",
            params![payload, id],
        )?;
        for channel in &unique {
            tx.execute(
                "INSERT INTO deliveries (alert_id, channel, state, next_attempt_at)
                 VALUES (?1, ?2, 'pending', ?3)",
                params![id, channel, now],
            )?;
        }
        Ok(id)
    };
    let result = tx.and_then(|tx| {
        let id = run(&tx)?;
        tx.commit()?;
        Ok(id)
    });
    result.map_err(|e| history.err(action, e))
}

/// Tries every pending delivery that is due, oldest alert first, and records each outcome.
pub async fn deliver_due(
    history: &mut History,
    channels: &[Box<dyn Channel>],
    backoff: &Backoff,
) -> Result<DeliveryReport, HistoryError> {
    deliver(history, channels, backoff, None).await
}

/// [`deliver_due`] for one alert only (`monitor alert test` should not wait on a backlog).
pub async fn deliver_alert(
    history: &mut History,
    channels: &[Box<dyn Channel>],
    backoff: &Backoff,
    alert_id: i64,
) -> Result<DeliveryReport, HistoryError> {
    deliver(history, channels, backoff, Some(alert_id)).await
}

/// A due delivery, as loaded before sending.
struct Due {
    id: i64,
    alert_id: i64,
    channel: String,
    attempts: u32,
}

async fn deliver(
    history: &mut History,
    channels: &[Box<dyn Channel>],
    backoff: &Backoff,
    only: Option<i64>,
) -> Result<DeliveryReport, HistoryError> {
    let due = load_due(history, only)?;
    let mut report = DeliveryReport::default();
    // Once a channel asks to retry, its later deliveries this round are put off to the same time
    // instead of each waiting out the same timeout; they keep their order for the next round.
    let mut postponed: HashMap<String, f64> = HashMap::new();
    let mut alerts: HashMap<i64, Result<Alert, String>> = HashMap::new();
    for d in due {
        if let Some(at) = postponed.get(&d.channel) {
            postpone(history, d.id, *at)?;
            report.retrying += 1;
            continue;
        }
        let Some(channel) = channels.iter().find(|c| c.name() == d.channel) else {
            record(history, &d, Outcome::Failed(CHANNEL_GONE.into()), false)?;
            report.failed += 1;
            continue;
        };
        if !claim(history, d.id)? {
            continue; // another process took it
        }
        let alert = match alerts.entry(d.alert_id) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => e.insert(load_alert(history, d.alert_id)?),
        };
        let alert = match alert {
            Ok(a) => a,
            Err(why) => {
                record(history, &d, Outcome::Failed(why.clone()), true)?;
                report.failed += 1;
                continue;
            }
        };
        let result = channel.send(alert).await;
        // Recorded at once: a crash from here to the commit is the only way to send twice.
        match result {
            Ok(()) => {
                record(history, &d, Outcome::Delivered, true)?;
                report.delivered += 1;
            }
            Err(SendError::Retry { reason, after }) => {
                let wait = backoff.delay(d.attempts + 1, after);
                let at = unix_now() + wait.as_secs_f64();
                record(history, &d, Outcome::Retry(reason, at), true)?;
                postponed.insert(d.channel.clone(), at);
                report.retrying += 1;
            }
            Err(SendError::Permanent(reason)) => {
                record(history, &d, Outcome::Failed(reason), true)?;
                report.failed += 1;
            }
        }
    }
    Ok(report)
}

fn load_due(history: &History, only: Option<i64>) -> Result<Vec<Due>, HistoryError> {
    let action = "listing due alert deliveries";
    let now = unix_now();
    let query = || -> rusqlite::Result<Vec<Due>> {
        let mut stmt = history.conn().prepare(
            "SELECT id, alert_id, channel, attempts FROM deliveries
             WHERE state = 'pending' AND next_attempt_at <= ?1 AND (?2 IS NULL OR alert_id = ?2)
             ORDER BY alert_id, id",
        )?;
        let rows = stmt.query_map(params![now, only], |r| {
            Ok(Due {
                id: r.get(0)?,
                alert_id: r.get(1)?,
                channel: r.get(2)?,
                attempts: r.get(3)?,
            })
        })?;
        rows.collect()
    };
    query().map_err(|e| history.err(action, e))
}

/// Takes a due delivery for this process; false when another process already did.
fn claim(history: &mut History, id: i64) -> Result<bool, HistoryError> {
    let now = unix_now();
    let changed = history
        .conn()
        .execute(
            "UPDATE deliveries SET next_attempt_at = ?1
             WHERE id = ?2 AND state = 'pending' AND next_attempt_at <= ?3",
            params![now + CLAIM_LEASE.as_secs_f64(), id, now],
        )
        .map_err(|e| history.err(format!("claiming alert delivery {id}"), e))?;
    Ok(changed == 1)
}

fn postpone(history: &mut History, id: i64, at: f64) -> Result<(), HistoryError> {
    history
        .conn()
        .execute(
            "UPDATE deliveries SET next_attempt_at = ?1 WHERE id = ?2 AND state = 'pending'",
            params![at, id],
        )
        .map_err(|e| history.err(format!("postponing alert delivery {id}"), e))?;
    Ok(())
}

fn load_alert(history: &History, id: i64) -> Result<Result<Alert, String>, HistoryError> {
    let payload: Option<String> = history
        .conn()
        .query_row("SELECT payload_json FROM outbox WHERE id = ?1", [id], |r| {
            r.get(0)
        })
        .optional()
        .map_err(|e| history.err(format!("reading alert {id}"), e))?;
    Ok(match payload {
        None => Err(format!("alert {id} is no longer stored")),
        Some(p) => {
            serde_json::from_str(&p).map_err(|e| format!("stored alert {id} cannot be read ({e})"))
        }
    })
}

enum Outcome {
    Delivered,
    /// Why, and when to try again (unix seconds).
    Retry(String, f64),
    Failed(String),
}

/// Stores one outcome; `attempted` counts the send (false for a channel that is gone).
fn record(
    history: &mut History,
    d: &Due,
    outcome: Outcome,
    attempted: bool,
) -> Result<(), HistoryError> {
    let attempts = d.attempts + u32::from(attempted);
    let (sql, p): (&str, Vec<rusqlite::types::Value>) = match outcome {
        Outcome::Delivered => (
            "UPDATE deliveries SET state = 'delivered', attempts = ?1, delivered_at = ?2 WHERE id = ?3",
            vec![attempts.into(), utc_now_rfc3339().into(), d.id.into()],
        ),
        Outcome::Retry(reason, at) => (
            "UPDATE deliveries SET attempts = ?1, last_error = ?2, next_attempt_at = ?3 WHERE id = ?4",
            vec![attempts.into(), reason.into(), at.into(), d.id.into()],
        ),
        Outcome::Failed(reason) => (
            "UPDATE deliveries SET state = 'failed', attempts = ?1, last_error = ?2 WHERE id = ?3",
            vec![attempts.into(), reason.into(), d.id.into()],
        ),
    };
    history
        .conn()
        .execute(sql, rusqlite::params_from_iter(p))
        .map_err(|e| {
            history.err(
                format!(
                    "recording the {} delivery of alert {}",
                    d.channel, d.alert_id
                ),
                e,
            )
        })?;
    Ok(())
}

/// When the earliest pending delivery is due (unix seconds), if any.
pub fn next_due(history: &History) -> Result<Option<f64>, HistoryError> {
    history
        .conn()
        .query_row(
            "SELECT MIN(next_attempt_at) FROM deliveries WHERE state = 'pending'",
            [],
            |r| r.get(0),
        )
        .map_err(|e| history.err("finding the next alert delivery", e))
}

/// How many deliveries are still pending.
pub fn undelivered(history: &History) -> Result<usize, HistoryError> {
    history
        .conn()
        .query_row(
            "SELECT COUNT(*) FROM deliveries WHERE state = 'pending'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map(|n| usize::try_from(n).unwrap_or(0))
        .map_err(|e| history.err("counting undelivered alerts", e))
}

/// The newest `limit` alerts, newest first, each with its deliveries.
pub fn recent(history: &History, limit: usize) -> Result<Vec<AlertRow>, HistoryError> {
    rows(history, None, limit)
}

/// One stored alert with its deliveries.
pub fn alert_row(history: &History, id: i64) -> Result<Option<AlertRow>, HistoryError> {
    Ok(rows(history, Some(id), 1)?.pop())
}

fn rows(history: &History, id: Option<i64>, limit: usize) -> Result<Vec<AlertRow>, HistoryError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let query = || -> rusqlite::Result<Vec<AlertRow>> {
        let conn = history.conn();
        let mut alerts = conn.prepare(
            "SELECT id, created_at, kind, title FROM outbox
             WHERE (?1 IS NULL OR id = ?1) ORDER BY id DESC LIMIT ?2",
        )?;
        let mut rows = alerts
            .query_map(params![id, limit], |r| {
                Ok(AlertRow {
                    id: r.get(0)?,
                    created_at: r.get(1)?,
                    kind: r.get(2)?,
                    title: r.get(3)?,
                    deliveries: Vec::new(),
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let mut deliveries = conn.prepare(
            "SELECT channel, state, attempts, last_error, delivered_at, next_attempt_at
             FROM deliveries WHERE alert_id = ?1 ORDER BY id",
        )?;
        for row in &mut rows {
            row.deliveries = deliveries
                .query_map([row.id], |r| {
                    let state: String = r.get(1)?;
                    let next: f64 = r.get(5)?;
                    Ok(DeliveryRow {
                        channel: r.get(0)?,
                        next_attempt_at: (state == "pending")
                            .then(|| rfc3339(next.max(0.0).ceil() as u64)),
                        state,
                        attempts: r.get(2)?,
                        last_error: r.get(3)?,
                        delivered_at: r.get(4)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
        }
        Ok(rows)
    };
    query().map_err(|e| history.err("listing recent alerts", e))
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::alert::render::tests::drift_alert;
    use crate::alert::SendFuture;

    /// A channel answering from a script (then Ok), recording the alert ids it was sent.
    struct Fake {
        name: &'static str,
        script: Mutex<VecDeque<Result<(), SendError>>>,
        sent: Arc<Mutex<Vec<i64>>>,
    }

    impl Fake {
        fn new(name: &'static str, script: Vec<Result<(), SendError>>) -> Fake {
            Fake {
                name,
                script: Mutex::new(script.into()),
                sent: Arc::default(),
            }
        }

        /// The log of alert ids this fake was sent, readable after it is boxed.
        fn log(&self) -> Arc<Mutex<Vec<i64>>> {
            Arc::clone(&self.sent)
        }
    }

    impl Channel for Fake {
        fn name(&self) -> &'static str {
            self.name
        }
        fn send<'a>(&'a self, alert: &'a Alert) -> SendFuture<'a> {
            self.sent.lock().unwrap().push(alert.id);
            let r = self.script.lock().unwrap().pop_front().unwrap_or(Ok(()));
            Box::pin(async move { r })
        }
    }

    fn channels(fakes: Vec<Fake>) -> Vec<Box<dyn Channel>> {
        fakes
            .into_iter()
            .map(|f| Box::new(f) as Box<dyn Channel>)
            .collect()
    }

    fn db() -> (tempfile::TempDir, History) {
        let dir = tempfile::tempdir().unwrap();
        let h = History::open(dir.path().join("h.db")).unwrap();
        (dir, h)
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    fn state(h: &History, id: i64, channel: &str) -> DeliveryRow {
        alert_row(h, id)
            .unwrap()
            .unwrap()
            .deliveries
            .into_iter()
            .find(|d| d.channel == channel)
            .unwrap()
    }

    const FAST: Backoff = Backoff {
        initial: Duration::from_millis(100),
        max: Duration::from_secs(1),
    };

    #[test]
    fn enqueue_stores_the_alert_with_its_id_and_one_pending_delivery_per_channel() {
        let (_d, mut h) = db();
        let a = drift_alert();
        let id = enqueue(&mut h, &a, &["email", "slack", "email"]).unwrap();
        let payload: String = h
            .conn()
            .query_row("SELECT payload_json FROM outbox WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .unwrap();
        let stored: Alert = serde_json::from_str(&payload).unwrap();
        assert_eq!(stored.id, id);
        assert_eq!(Alert { id: a.id, ..stored }, a);
        let row = alert_row(&h, id).unwrap().unwrap();
        assert_eq!(
            (row.kind.as_str(), row.title.as_str()),
            ("firing", a.title.as_str())
        );
        let ds: Vec<(&str, &str, u32)> = row
            .deliveries
            .iter()
            .map(|d| (d.channel.as_str(), d.state.as_str(), d.attempts))
            .collect();
        assert_eq!(ds, [("email", "pending", 0), ("slack", "pending", 0)]);
        assert_eq!(undelivered(&h).unwrap(), 2);
        assert!(next_due(&h).unwrap().unwrap() <= unix_now());

        let quiet = enqueue(&mut h, &a, &[]).unwrap();
        assert!(quiet > id);
        assert!(alert_row(&h, quiet).unwrap().unwrap().deliveries.is_empty());
        assert_eq!(
            recent(&h, 10)
                .unwrap()
                .iter()
                .map(|r| r.id)
                .collect::<Vec<_>>(),
            [quiet, id]
        );
    }

    #[test]
    fn enqueue_is_all_or_nothing() {
        let (_d, mut h) = db();
        h.conn()
            .execute_batch(
                "CREATE TRIGGER no_slack BEFORE INSERT ON deliveries WHEN NEW.channel = 'slack'
                 BEGIN SELECT RAISE(ABORT, 'refused'); END;",
            )
            .unwrap();
        let e = enqueue(&mut h, &drift_alert(), &["email", "slack"]).unwrap_err();
        assert!(e.to_string().contains("storing alert"), "{e}");
        assert!(recent(&h, 10).unwrap().is_empty());
        assert_eq!(undelivered(&h).unwrap(), 0);
    }

    #[test]
    fn backoff_doubles_up_to_max_and_honours_retry_after() {
        let b = Backoff {
            initial: Duration::from_secs(5),
            max: Duration::from_secs(60),
        };
        let secs = |n, after| b.delay(n, after).as_secs();
        assert_eq!(
            [secs(1, None), secs(2, None), secs(3, None), secs(4, None)],
            [5, 10, 20, 40]
        );
        assert_eq!(secs(5, None), 60);
        assert_eq!(secs(500, None), 60);
        assert_eq!(secs(1, Some(Duration::from_secs(30))), 30);
        assert_eq!(secs(1, Some(Duration::from_secs(120))), 120);
        assert_eq!(secs(4, Some(Duration::from_secs(1))), 40);
        assert_eq!(secs(0, None), 5);
    }

    #[test]
    fn outcomes_move_deliveries_to_their_states() {
        let (_d, mut h) = db();
        let retry = SendError::Retry {
            reason: "connection refused".into(),
            after: None,
        };
        let chans = channels(vec![
            Fake::new("email", vec![Ok(())]),
            Fake::new(
                "slack",
                vec![Err(SendError::Permanent("HTTP 404 no_service".into()))],
            ),
            Fake::new("webhook", vec![Err(retry)]),
        ]);
        let id = enqueue(
            &mut h,
            &drift_alert(),
            &["email", "slack", "webhook", "pager"],
        )
        .unwrap();
        let before = unix_now();
        let r = rt().block_on(deliver_due(&mut h, &chans, &FAST)).unwrap();
        assert_eq!(
            r,
            DeliveryReport {
                delivered: 1,
                retrying: 1,
                failed: 2
            }
        );

        let email = state(&h, id, "email");
        assert_eq!((email.state.as_str(), email.attempts), ("delivered", 1));
        assert!(email.delivered_at.is_some());
        let slack = state(&h, id, "slack");
        assert_eq!((slack.state.as_str(), slack.attempts), ("failed", 1));
        assert_eq!(slack.last_error.as_deref(), Some("HTTP 404 no_service"));
        let pager = state(&h, id, "pager");
        assert_eq!((pager.state.as_str(), pager.attempts), ("failed", 0));
        assert_eq!(pager.last_error.as_deref(), Some(CHANNEL_GONE));
        let hook = state(&h, id, "webhook");
        assert_eq!((hook.state.as_str(), hook.attempts), ("pending", 1));
        assert_eq!(hook.last_error.as_deref(), Some("connection refused"));
        let due = next_due(&h).unwrap().unwrap();
        assert!(
            due >= before + 0.1 && due < before + 1.0,
            "{due} vs {before}"
        );
        assert_eq!(undelivered(&h).unwrap(), 1);

        // Not due yet: nothing is sent.
        let r = rt().block_on(deliver_due(&mut h, &chans, &FAST)).unwrap();
        assert_eq!(r, DeliveryReport::default());
        std::thread::sleep(Duration::from_secs_f64((due - unix_now()).max(0.0) + 0.01));
        let r = rt().block_on(deliver_due(&mut h, &chans, &FAST)).unwrap();
        assert_eq!(r.delivered, 1);
        let hook = state(&h, id, "webhook");
        assert_eq!((hook.state.as_str(), hook.attempts), ("delivered", 2));
        assert_eq!(next_due(&h).unwrap(), None);
        assert_eq!(undelivered(&h).unwrap(), 0);
    }

    #[test]
    fn a_retrying_channel_postpones_its_later_deliveries_in_order() {
        let (_d, mut h) = db();
        let fake = Fake::new(
            "webhook",
            vec![Err(SendError::Retry {
                reason: "HTTP 429 Too Many Requests".into(),
                after: Some(Duration::from_secs(30)),
            })],
        );
        let log = fake.log();
        let chans: Vec<Box<dyn Channel>> = vec![Box::new(fake)];
        let first = enqueue(&mut h, &drift_alert(), &["webhook"]).unwrap();
        let second = enqueue(&mut h, &drift_alert(), &["webhook"]).unwrap();
        let r = rt().block_on(deliver_due(&mut h, &chans, &FAST)).unwrap();
        assert_eq!(
            r,
            DeliveryReport {
                delivered: 0,
                retrying: 2,
                failed: 0
            }
        );
        let (a, b) = (state(&h, first, "webhook"), state(&h, second, "webhook"));
        assert_eq!(*log.lock().unwrap(), [first], "only the first was tried");
        assert_eq!((a.attempts, b.attempts), (1, 0));
        assert_eq!(b.last_error, None);
        assert_eq!(a.next_attempt_at, b.next_attempt_at);
        let due = next_due(&h).unwrap().unwrap();
        assert!(due >= unix_now() + 29.0, "Retry-After 30 s honoured");
    }

    #[test]
    fn a_claimed_delivery_is_not_sent_twice() {
        let (_d, mut h) = db();
        let id = enqueue(&mut h, &drift_alert(), &["email"]).unwrap();
        let due: i64 = h
            .conn()
            .query_row("SELECT id FROM deliveries WHERE alert_id = ?1", [id], |r| {
                r.get(0)
            })
            .unwrap();
        assert!(claim(&mut h, due).unwrap());
        assert!(
            !claim(&mut h, due).unwrap(),
            "a second process must not take it"
        );
        let fake = Fake::new("email", vec![]);
        let log = fake.log();
        let chans: Vec<Box<dyn Channel>> = vec![Box::new(fake)];
        let r = rt().block_on(deliver_due(&mut h, &chans, &FAST)).unwrap();
        assert_eq!(r, DeliveryReport::default());
        assert!(log.lock().unwrap().is_empty());
        assert_eq!(state(&h, id, "email").state, "pending");
    }

    #[test]
    fn deliver_alert_leaves_other_alerts_alone() {
        let (_d, mut h) = db();
        let old = enqueue(&mut h, &drift_alert(), &["email"]).unwrap();
        let new = enqueue(&mut h, &drift_alert(), &["email"]).unwrap();
        let fake = Fake::new("email", vec![]);
        let log = fake.log();
        let chans: Vec<Box<dyn Channel>> = vec![Box::new(fake)];
        let r = rt()
            .block_on(deliver_alert(&mut h, &chans, &FAST, new))
            .unwrap();
        assert_eq!(*log.lock().unwrap(), [new]);
        assert_eq!(r.delivered, 1);
        assert_eq!(state(&h, new, "email").state, "delivered");
        assert_eq!(state(&h, old, "email").state, "pending");
    }
}
