//! The delivery task: sends what the outbox holds, retrying with backoff, woken when a round
//! commits new alerts. It has its own database connection, so a slow SMTP server never holds up
//! a round, and a round never holds up a delivery.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::alert::outbox::{self, Backoff};
use crate::alert::Channel;
use crate::clock::unix_now;
use crate::history::History;

/// The channels and retry policy in force (replaced on config reload).
#[derive(Clone)]
pub struct Channels {
    /// Configured channels.
    pub list: Arc<Vec<Box<dyn Channel>>>,
    /// Retry delays.
    pub backoff: Backoff,
}

/// Shared between the daemon loop (which replaces it on reload) and the delivery task.
pub type SharedChannels = Arc<RwLock<Channels>>;

fn current(shared: &SharedChannels) -> Channels {
    match shared.read() {
        Ok(c) => c.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    }
}

/// How long to sleep until the next pending delivery is due (at most `cap`).
fn until_due(h: &History, cap: Duration) -> Duration {
    match outbox::next_due(h) {
        Ok(Some(at)) => Duration::from_secs_f64((at - unix_now()).clamp(0.0, cap.as_secs_f64())),
        _ => cap,
    }
}

/// Runs until `stop` turns true: delivers what is due, then sleeps until the next retry is due,
/// a new alert is committed (`kick`), or a minute has passed.
pub async fn run(
    database: PathBuf,
    shared: SharedChannels,
    kick: Arc<tokio::sync::Notify>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    // A database that cannot be opened now (locked by a long migration, a full disk) may be
    // fine in a minute: alerts wait in the outbox, so keep trying rather than give up.
    let mut h = loop {
        match History::open(&database) {
            Ok(h) => break h,
            Err(e) => {
                tracing::error!("alert delivery cannot open the database (retrying in 30 s): {e}")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(30)) => {}
            _ = stop.changed() => return,
        }
    };
    while !*stop.borrow() {
        let ch = current(&shared);
        match outbox::deliver_due(&mut h, &ch.list, &ch.backoff).await {
            Ok(r) if r.delivered + r.retrying + r.failed > 0 => tracing::info!(
                delivered = r.delivered,
                retrying = r.retrying,
                failed = r.failed,
                "alert deliveries"
            ),
            Ok(_) => {}
            Err(e) => tracing::error!("alert delivery: {e}"),
        }
        let wait = until_due(&h, Duration::from_secs(60));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = kick.notified() => {}
            _ = stop.changed() => {}
        }
    }
}

/// Delivers what it can within `limit` (shutdown and `run --once`); returns how many deliveries
/// are still pending (they are sent by the next daemon).
pub async fn flush(database: &std::path::Path, shared: &SharedChannels, limit: Duration) -> usize {
    let deadline = tokio::time::Instant::now() + limit;
    let mut h = match History::open(database) {
        Ok(h) => h,
        Err(e) => {
            tracing::error!("alert flush: {e}");
            return usize::MAX;
        }
    };
    loop {
        let ch = current(shared);
        let sent =
            tokio::time::timeout_at(deadline, outbox::deliver_due(&mut h, &ch.list, &ch.backoff))
                .await;
        let pending = outbox::undelivered(&h).unwrap_or(usize::MAX);
        if sent.is_err() || pending == 0 {
            return pending;
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return pending;
        }
        let wait = until_due(&h, deadline - now);
        if now + wait >= deadline {
            return pending;
        }
        tokio::time::sleep(wait).await;
    }
}
