//! `monitor run`: the watchdog daemon.
//!
//! One loop ([`Daemon::serve`]) waits for the next scheduled tick, a signal, the end of the
//! running round, or the systemd watchdog's period. A round ([`round`]) runs in a task of its own
//! and its model work in the worker child process, so the daemon never loads ONNX Runtime and the
//! GPU is fully released between checks. Alerts go through the durable outbox, sent by the
//! [`delivery`] task. Signals: SIGUSR1 checks now, SIGHUP reloads the config (a broken file is
//! refused and the old config stays), SIGTERM/SIGINT stop.
//!
//! Serving is Unix-only (signals, systemd); elsewhere only `run --once` is available, for a
//! scheduler such as the Windows Task Scheduler to start.

pub mod delivery;
#[cfg(unix)]
pub mod http;
pub mod notify;
pub mod record;
pub mod round;
pub mod schedule;

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
#[cfg(unix)]
use std::time::Duration;

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
#[cfg(unix)]
use tokio::signal::unix::{signal, SignalKind};
use tokio::task::JoinHandle;

use crate::alert::outbox::Backoff;
use crate::check::CheckStatus;
use crate::config::Config;
use crate::history::History;
use crate::worker::Cancel;
use delivery::{Channels, SharedChannels};
use notify::Notifier;
use round::{Ctx, RoundReport};
use schedule::Plan;

/// Everything a loaded config gives the daemon; built whole or not at all, so a reload that
/// fails leaves the old one in force.
struct Loaded {
    config: Arc<Config>,
    plan: Option<Plan>,
    channels: Channels,
}

fn load(path: &Path, need_plan: bool) -> Result<Loaded> {
    let config = Config::load(path)?;
    let plan = match need_plan {
        true => Some(
            Plan::from_config(&config).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
        ),
        false => None,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let list = crate::alert::build_channels(&config.alerts, dir)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let backoff = Backoff {
        initial: config.alerts.retry_initial.get(),
        max: config.alerts.retry_max.get(),
    };
    Ok(Loaded {
        config: Arc::new(config),
        plan,
        channels: Channels {
            list: Arc::new(list),
            backoff,
        },
    })
}

/// The running daemon.
// Without `serve` (not Unix) most of it is unused.
#[cfg_attr(not(unix), allow(dead_code))]
pub struct Daemon {
    path: PathBuf,
    loaded: Loaded,
    shared: SharedChannels,
    history: History,
    notifier: Option<Notifier>,
    kick: Arc<tokio::sync::Notify>,
    cancel: Cancel,
    last_round: Option<String>,
    /// The config in force, for the metrics endpoint (a reload sends the new one).
    config_tx: tokio::sync::watch::Sender<Arc<Config>>,
    /// Unix seconds (f64 bits) of the scheduler loop's last iteration, for `/healthz`.
    heartbeat: Arc<std::sync::atomic::AtomicU64>,
}

#[cfg_attr(not(unix), allow(dead_code))]
impl Daemon {
    /// Loads the config, resolves secrets, opens the database (closing runs a crash left open)
    /// and checks that every case has a baseline (a missing one is logged: that case will be an
    /// `error` each round).
    pub fn start(path: &Path, need_plan: bool) -> Result<Daemon> {
        let loaded = load(path, need_plan)?;
        let config = &loaded.config;
        let mut history = History::open(&config.storage.database)?;
        let closed = history.close_interrupted()?;
        if closed > 0 {
            tracing::warn!("closed {closed} run(s) left unfinished by a process that died");
        }
        let store = crate::baseline::BaselineStore::new(&config.storage.baselines);
        for case in &config.cases {
            match store.current(&case.name) {
                Ok(Some(_)) => {}
                Ok(None) => {
                    tracing::warn!(case = %case.name, "no baseline yet: this case will be an error until `monitor rebaseline --case {}`", case.name)
                }
                Err(e) => tracing::warn!(case = %case.name, "baseline unreadable: {e}"),
            }
        }
        if let Some(plan) = &loaded.plan {
            for c in &plan.unscheduled {
                if plan.has_quick() {
                    tracing::info!(case = %c, "no full-check schedule: checked in full only when a quick check finds a difference");
                } else {
                    tracing::warn!(case = %c, "no schedule (neither the case's nor a global one): the daemon will not run it");
                }
            }
        }
        let (config_tx, _) = tokio::sync::watch::channel(loaded.config.clone());
        Ok(Daemon {
            config_tx,
            heartbeat: Arc::new(std::sync::atomic::AtomicU64::new(
                crate::clock::unix_now().to_bits(),
            )),
            path: path.to_path_buf(),
            shared: Arc::new(RwLock::new(loaded.channels.clone())),
            loaded,
            history,
            notifier: Notifier::from_env(),
            kick: Arc::new(tokio::sync::Notify::new()),
            cancel: Cancel::new(),
            last_round: None,
        })
    }

    fn ctx(&self) -> Ctx {
        Ctx {
            config: self.loaded.config.clone(),
            cancel: self.cancel.clone(),
            kick: self.kick.clone(),
        }
    }

    fn notify(&self, f: impl FnOnce(&Notifier) -> std::io::Result<()>) {
        if let Some(n) = &self.notifier {
            if let Err(e) = f(n) {
                tracing::warn!("sd_notify: {e}");
            }
        }
    }

    /// `run --once`: one round of every case, alerts flushed as far as `daemon.flush_timeout`
    /// allows (the rest wait in the outbox for the next run).
    pub async fn once(self) -> CheckStatus {
        let report = round::round(self.ctx(), Vec::new(), "once").await;
        tracing::info!("{}", report.summary);
        let left = delivery::flush(
            &self.loaded.config.storage.database,
            &self.shared,
            self.loaded.config.daemon.flush_timeout.get(),
        )
        .await;
        if left > 0 {
            tracing::warn!("{left} alert deliveries still pending; the next run retries them");
        }
        report.status
    }

    /// Serves until SIGTERM/SIGINT; returns when stopped cleanly.
    #[cfg(unix)]
    pub async fn serve(mut self) -> Result<()> {
        let mut usr1 = signal(SignalKind::user_defined1()).context("installing SIGUSR1 handler")?;
        let mut hup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
        let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let db = self.loaded.config.storage.database.clone();
        let deliveries = tokio::spawn(delivery::run(
            db,
            self.shared.clone(),
            self.kick.clone(),
            stop_rx,
        ));
        let endpoint = self.start_endpoint().await;
        let beat = notify::watchdog_interval().unwrap_or(Duration::from_secs(30));
        let mut watchdog = tokio::time::interval(beat);
        record::started(&self.history)?;
        let mut running: Option<(JoinHandle<RoundReport>, &'static str)> = None;
        let mut after = Utc::now();
        self.notify(|n| n.ready());
        tracing::info!(pid = std::process::id(), config = %self.path.display(), "monitor daemon ready");
        loop {
            http::Shared::beat(&self.heartbeat);
            let next = self
                .loaded
                .plan
                .as_ref()
                .and_then(|p| p.next_tick_after(after));
            self.publish(next.as_ref().map(|n| n.0), running.as_ref().map(|r| r.1));
            // Sleep at most 30 s at a time: the wall clock may be stepped meanwhile.
            let wait = next.as_ref().map_or(Duration::from_secs(30), |(t, _, _)| {
                (*t - Utc::now())
                    .to_std()
                    .unwrap_or(Duration::ZERO)
                    .min(Duration::from_secs(30))
            });
            tokio::select! {
                _ = tokio::time::sleep(wait) => {
                    if let Some((t, kind, cases)) = next.filter(|(t, _, _)| *t <= Utc::now()) {
                        // Ticks missed while the host was suspended or the clock jumped are one
                        // check now, not a burst of skipped ones.
                        after = t.max(Utc::now());
                        match kind {
                            schedule::TickKind::Check => self.start_round(&mut running, cases, "schedule"),
                            schedule::TickKind::Quick => self.start_round(&mut running, cases, "quick_schedule"),
                        }
                    }
                }
                report = wait_round(&mut running) => self.finished(report),
                _ = usr1.recv() => self.start_round(&mut running, Vec::new(), "signal"),
                _ = hup.recv() => self.reload(),
                _ = watchdog.tick() => self.notify(|n| n.watchdog()),
                _ = term.recv() => break,
                _ = int.recv() => break,
            }
        }
        let stopped = self.shutdown(running, stop_tx, deliveries).await;
        if let Some(h) = endpoint {
            h.abort();
        }
        stopped
    }

    /// Serves `/metrics` and `/healthz` on `metrics.listen`, unless it is off or cannot be
    /// bound (logged: the watchdog runs on without it). A changed address needs a restart.
    #[cfg(unix)]
    async fn start_endpoint(&self) -> Option<JoinHandle<()>> {
        let listen = self.loaded.config.metrics.listen?;
        match http::bind(listen).await {
            Ok(listener) => {
                tracing::info!("metrics on http://{listen}/metrics, health on /healthz");
                let shared = http::Shared {
                    config: self.config_tx.subscribe(),
                    heartbeat: self.heartbeat.clone(),
                };
                Some(tokio::spawn(http::serve(listener, shared)))
            }
            Err(e) => {
                tracing::warn!("metrics endpoint off: cannot listen on {listen}: {e}");
                None
            }
        }
    }

    /// Starts a round, or records the tick as skipped while one runs (ticks never queue up).
    fn start_round(
        &mut self,
        running: &mut Option<(JoinHandle<RoundReport>, &'static str)>,
        cases: Vec<String>,
        trigger: &'static str,
    ) {
        if running.is_some() {
            let reason = "a check was still running when this one was due";
            tracing::warn!(trigger, "skipped: {reason}");
            if let Err(e) = self.history.record_skipped(trigger, reason) {
                tracing::error!("recording a skipped check: {e}");
            }
            return;
        }
        let what = if cases.is_empty() {
            "all cases".to_string()
        } else {
            cases.join(", ")
        };
        let task = if trigger == "quick_schedule" {
            tracing::info!(trigger, "quick check of {what}");
            tokio::spawn(round::quick_round(self.ctx(), trigger))
        } else {
            tracing::info!(trigger, "checking {what}");
            tokio::spawn(round::round(self.ctx(), cases, trigger))
        };
        *running = Some((task, trigger));
    }

    fn finished(&mut self, report: Result<RoundReport, tokio::task::JoinError>) {
        let line = match report {
            Ok(r) => {
                tracing::info!(status = ?r.status, alerts = r.alerts.len(), "round done: {}", r.summary);
                format!("{} at {}", r.summary, crate::clock::utc_now_rfc3339())
            }
            Err(e) => {
                tracing::error!("round crashed: {e}");
                format!("round crashed: {e}")
            }
        };
        self.last_round = Some(line);
    }

    /// Tells systemd and the database what the daemon is doing.
    fn publish(&self, next: Option<DateTime<Utc>>, running: Option<&str>) {
        let next_text = next.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        let status = match (running, &self.last_round) {
            (Some(trigger), _) => format!(
                "checking ({trigger}); next {}",
                next_text.as_deref().unwrap_or("-")
            ),
            (None, Some(last)) => {
                format!("last: {last}; next {}", next_text.as_deref().unwrap_or("-"))
            }
            (None, None) => format!("waiting; next {}", next_text.as_deref().unwrap_or("-")),
        };
        self.notify(|n| n.status(&status));
        if let Err(e) = record::heartbeat(
            &self.history,
            next_text.as_deref(),
            self.last_round.as_deref(),
        ) {
            tracing::warn!("{e}");
        }
    }

    /// SIGHUP: the new config replaces the old only if all of it loads (schedule, secrets).
    fn reload(&mut self) {
        match load(&self.path, true) {
            Ok(new) => {
                *self.shared.write().unwrap_or_else(|p| p.into_inner()) = new.channels.clone();
                self.config_tx.send_replace(new.config.clone());
                self.loaded = new;
                tracing::info!(config = %self.path.display(), "config reloaded");
            }
            Err(e) => {
                let chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
                tracing::error!(
                    "config reload refused, the old config stays in force: {}",
                    crate::cli::join_causes(&chain)
                );
            }
        }
    }

    /// Stops scheduling, lets a running round finish within the grace period (then kills its
    /// worker), flushes alerts within the flush timeout, and records the stop.
    async fn shutdown(
        self,
        running: Option<(JoinHandle<RoundReport>, &'static str)>,
        stop_tx: tokio::sync::watch::Sender<bool>,
        deliveries: JoinHandle<()>,
    ) -> Result<()> {
        self.notify(|n| n.stopping());
        let config = self.loaded.config.clone();
        tracing::info!("stopping");
        if let Some((mut handle, _)) = running {
            let grace = config.daemon.shutdown_grace.get();
            if tokio::time::timeout(grace, &mut handle).await.is_err() {
                tracing::warn!(
                    "the running check did not finish within {}: stopping its worker",
                    config.daemon.shutdown_grace
                );
                self.cancel.cancel();
                // The worker dies at once; a restart command in flight has its own timeout,
                // which may be longer than systemd waits: past the flush timeout the round is
                // dropped (the restart's process group is killed with it).
                let limit = config.daemon.flush_timeout.get();
                if tokio::time::timeout(limit, &mut handle).await.is_err() {
                    tracing::warn!(
                        "the round did not stop within {}: abandoning it",
                        config.daemon.flush_timeout
                    );
                    handle.abort();
                }
            }
        }
        let _ = stop_tx.send(true);
        // The delivery task stops after its current round; a long backlog of slow channels must
        // not hold the stop past systemd's TimeoutStopSec. Aborting mid-send is the one way to
        // send an alert twice, as a crash would; what was not sent stays in the outbox.
        let mut deliveries = deliveries;
        let limit = config.daemon.flush_timeout.get();
        if tokio::time::timeout(limit, &mut deliveries).await.is_err() {
            tracing::warn!(
                "the alert delivery round did not end within {}: stopping it",
                config.daemon.flush_timeout
            );
            deliveries.abort();
        }
        let left = delivery::flush(
            &config.storage.database,
            &self.shared,
            config.daemon.flush_timeout.get(),
        )
        .await;
        if left > 0 {
            tracing::warn!("{left} alert deliveries still pending; the next start sends them");
        }
        record::stopped(&self.history)?;
        tracing::info!("stopped");
        Ok(())
    }
}

#[cfg_attr(not(unix), allow(dead_code))]
async fn wait_round(
    running: &mut Option<(JoinHandle<RoundReport>, &'static str)>,
) -> Result<RoundReport, tokio::task::JoinError> {
    match running {
        Some((h, _)) => {
            let r = h.await;
            *running = None;
            r
        }
        None => std::future::pending().await,
    }
}

/// `monitor run [--once]` on a current-thread runtime (the daemon's own work is small; model
/// work runs in the worker process, blocking waits in tokio's blocking pool).
pub fn run(config: &Path, once: bool) -> Result<Option<CheckStatus>> {
    #[cfg(not(unix))]
    if !once {
        anyhow::bail!(
            "`monitor run` without --once (the daemon) is not supported on this platform: it needs Unix signals; schedule `monitor run --once` instead (e.g. with the Windows Task Scheduler)"
        );
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async {
        let daemon = Daemon::start(config, !once)?;
        if once {
            return Ok(Some(daemon.once().await));
        }
        #[cfg(unix)]
        return daemon.serve().await.map(|()| None);
        #[cfg(not(unix))]
        unreachable!("refused above")
    })
}
