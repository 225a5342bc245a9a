//! Alerts: what a round tells people, how it is worded, and how it reaches them.
//!
//! A round's results go through [`state`] (failure/success thresholds, reminders: when to say
//! something), become one [`Alert`] document, are committed to the [`outbox`] before anything is
//! sent, and are then delivered to every configured channel ([`email`], [`slack`], [`webhook`],
//! each behind [`Channel`]), with retries, until each channel has it.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub mod compose;
pub mod config;
pub mod email;
pub mod outbox;
pub mod render;
pub mod slack;
pub mod state;
pub mod webhook;

/// Version of the [`Alert`] JSON document (the generic webhook's payload). Bump on any change
/// that is not a new optional field.
pub const ALERT_VERSION: u32 = 1;

/// Why an alert was raised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// Cases crossed `failure_threshold` this round.
    Firing,
    /// Cases still failing after `reminder_interval`.
    Reminder,
    /// Cases passed `success_threshold` rounds in a row after firing.
    Resolved,
    /// A restart did not fix a drift.
    Escalation,
    /// Drift persisted after a restart and new baselines were stored (`auto_rebaseline`).
    AutoRebaseline,
    /// A case's generation became slower than `performance.max_slowdown` times its baseline's
    /// (outputs unchanged or not: speed is reported apart from drift).
    Slow,
    /// `monitor alert test`.
    Test,
}

impl AlertKind {
    /// The serialized name.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::Firing => "firing",
            AlertKind::Reminder => "reminder",
            AlertKind::Resolved => "resolved",
            AlertKind::Escalation => "escalation",
            AlertKind::AutoRebaseline => "auto_rebaseline",
            AlertKind::Slow => "slow",
            AlertKind::Test => "test",
        }
    }
}

/// How bad an alert is: decides wording and colour. `Error` (the monitor could not check) is
/// worded differently from `Drift` (it checked, and outputs changed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Resolved, test, informational.
    Info,
    /// The model files changed (outputs not judged).
    ModelChanged,
    /// Outputs drifted past a threshold.
    Drift,
    /// A case could not be checked.
    Error,
}

/// One number against its threshold, e.g. latent max|Δ| 3.2e-3 against ≤ 1e-3.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metric {
    /// "latent_max_abs", "latent_cosine", "ssim", "psnr_db", "pixels_differing".
    pub name: String,
    /// The measured value (null when not finite, e.g. PSNR of identical images).
    pub value: Option<f64>,
    /// The limit, when the metric has one.
    pub threshold: Option<f64>,
    /// How value must relate to threshold: "<=" or ">=".
    pub op: Option<String>,
    /// False when the value breaks the threshold.
    pub ok: bool,
}

/// One case in an alert.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertCase {
    /// Case name.
    pub name: String,
    /// Its verdict this round (identical | within_tolerance | drift | model_changed | error).
    pub verdict: String,
    /// The baseline version it was compared with.
    pub baseline_version: Option<u32>,
    /// Metrics against thresholds (empty for errors).
    pub metrics: Vec<Metric>,
    /// Human-readable reasons ("latent max|Δ| 3.20e-3 > 1.00e-3 (3.2× the limit)").
    pub reasons: Vec<String>,
    /// Environment changes since the baseline ("onnxruntime.version: 1.31.1 → 1.24.4").
    pub env_changes: Vec<String>,
    /// Why the case could not be checked.
    pub error: Option<String>,
    /// The case's section of the round's HTML report (a URL under `report.base_url`, else the
    /// page's path with `#case-NAME`); the folder of kept outputs when no page was written.
    pub report_dir: Option<String>,
    /// The diff heatmap file (attached to email when it exists).
    pub heatmap: Option<String>,
    /// Rounds in a row this case has been bad.
    pub bad_streak: u32,
    /// When it started firing (RFC 3339).
    pub firing_since: Option<String>,
}

/// One alert: everything any channel renders. Stored as JSON in the outbox and sent as-is by the
/// generic webhook (`version` tells consumers the shape).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// [`ALERT_VERSION`].
    pub version: u32,
    /// Outbox id (0 before it is stored). Receivers can de-duplicate on it.
    pub id: i64,
    /// Why it was raised.
    pub kind: AlertKind,
    /// The worst case's severity.
    pub severity: Severity,
    /// One line, e.g. "[monitor] DRIFT on gpu-01: sunset (latent max|Δ| 3.2e-3 > 1e-3)".
    pub title: String,
    /// A paragraph in plain text: what happened and what to do.
    pub summary: String,
    /// The host the monitor runs on.
    pub host: Option<String>,
    /// When it was raised (RFC 3339 UTC).
    pub created_at: String,
    /// History run that raised it.
    pub run_id: Option<i64>,
    /// The cases it is about, worst first.
    pub cases: Vec<AlertCase>,
}

/// Why a delivery failed, and whether trying again can help.
#[derive(Debug, Clone, PartialEq)]
pub enum SendError {
    /// Try again later (network error, timeout, 5xx, 429); `after` is the server's Retry-After.
    Retry {
        /// What went wrong (no secrets).
        reason: String,
        /// How long the server asked us to wait.
        after: Option<Duration>,
    },
    /// Trying again cannot help (4xx other than 429, a rejected recipient, bad credentials).
    Permanent(String),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Retry { reason, .. } => write!(f, "{reason} (will retry)"),
            SendError::Permanent(r) => write!(f, "{r} (not retried)"),
        }
    }
}

/// A boxed send future (the trait is used as `dyn Channel`).
pub type SendFuture<'a> = Pin<Box<dyn Future<Output = Result<(), SendError>> + Send + 'a>>;

/// One way of telling people: email, Slack, a webhook.
pub trait Channel: Send + Sync {
    /// "email", "slack" or "webhook" (the `deliveries.channel` column).
    fn name(&self) -> &'static str;
    /// Sends one alert. Must time out on its own; the error never contains a secret.
    fn send<'a>(&'a self, alert: &'a Alert) -> SendFuture<'a>;
}

/// The configured channels, ready to send, in [`config::AlertsConfig::channel_names`] order.
/// Resolves the secrets (relative `*_file` paths against `config_dir`); an error names the key
/// and where the value was looked for, never the value.
pub fn build_channels(
    config: &config::AlertsConfig,
    config_dir: &std::path::Path,
) -> Result<Vec<Box<dyn Channel>>, String> {
    let timeout = config.timeout.get();
    let secret = |inline, file, key: &str| -> Result<crate::secret::Secret, String> {
        config::one_source(inline, file, key)?
            .resolve(config_dir)
            .map_err(|e| format!("{key}: {e}"))
    };
    let mut channels: Vec<Box<dyn Channel>> = Vec::new();
    if let Some(email) = &config.email {
        let password = match (&email.password, &email.password_file) {
            (None, None) => None,
            _ => Some(secret(
                &email.password,
                &email.password_file,
                "alerts.email.password",
            )?),
        };
        let channel = email::EmailChannel::new(email, password, timeout)?;
        channels.push(Box::new(channel));
    }
    if config.slack.is_none() && config.webhook.is_none() {
        return Ok(channels);
    }
    // One client for both HTTP channels: they share its connection pool and proxy settings.
    let client = webhook::http_client()?;
    if let Some(slack) = &config.slack {
        let key = "alerts.slack.webhook_url";
        let url = secret(&slack.webhook_url, &slack.webhook_url_file, key)?;
        let channel = slack::SlackChannel::new(client.clone(), url, timeout)
            .map_err(|e| format!("{key}: {e}"))?;
        channels.push(Box::new(channel));
    }
    if let Some(hook) = &config.webhook {
        let key = "alerts.webhook.url";
        let url = secret(&hook.url, &hook.url_file, key)?;
        let channel = webhook::WebhookChannel::new(client, url, timeout)
            .map_err(|e| format!("{key}: {e}"))?;
        channels.push(Box::new(channel));
    }
    Ok(channels)
}
