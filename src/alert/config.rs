//! `alerts:` in the config: when to alert, and the channels.

use std::path::PathBuf;

use serde::{Deserialize, Deserializer};

use crate::duration::ConfigDuration;
use crate::secret::SecretSource;

/// `alerts:` — thresholds (as in Gatus/Alertmanager) and channels. No channel: alert state is
/// still kept and shown by `monitor status`, nothing is sent.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// Bad rounds in a row before a case fires (≥ 1).
    pub failure_threshold: u32,
    /// Good rounds in a row before a firing case resolves (≥ 1).
    pub success_threshold: u32,
    /// Send a "resolved" message when a case stops firing.
    pub send_resolved: bool,
    /// Re-notify while a case keeps firing; `0` = never.
    pub reminder_interval: ConfigDuration,
    /// First retry delay of a failed delivery; doubles each attempt.
    pub retry_initial: ConfigDuration,
    /// Longest delay between retries (deliveries are retried until they succeed).
    pub retry_max: ConfigDuration,
    /// Timeout of one delivery attempt.
    pub timeout: ConfigDuration,
    /// Slack incoming webhook.
    pub slack: Option<SlackConfig>,
    /// Generic JSON webhook.
    pub webhook: Option<WebhookConfig>,
    /// Email over SMTP.
    pub email: Option<EmailConfig>,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            failure_threshold: 1,
            success_threshold: 1,
            send_resolved: true,
            reminder_interval: ConfigDuration(std::time::Duration::from_secs(4 * 3600)),
            retry_initial: ConfigDuration(std::time::Duration::from_secs(5)),
            retry_max: ConfigDuration(std::time::Duration::from_secs(600)),
            timeout: ConfigDuration(std::time::Duration::from_secs(10)),
            slack: None,
            webhook: None,
            email: None,
        }
    }
}

impl AlertsConfig {
    /// Names of the configured channels, in a fixed order.
    pub fn channel_names(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.email.is_some() {
            v.push("email");
        }
        if self.slack.is_some() {
            v.push("slack");
        }
        if self.webhook.is_some() {
            v.push("webhook");
        }
        v
    }
}

/// `alerts.slack:` — exactly one of `webhook_url` / `webhook_url_file`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlackConfig {
    /// The incoming-webhook URL (a secret: `${ENV}` or literal).
    #[serde(default, deserialize_with = "secret_opt")]
    pub webhook_url: Option<SecretSource>,
    /// A file holding the URL.
    #[serde(default)]
    pub webhook_url_file: Option<PathBuf>,
}

/// `alerts.webhook:` — a generic JSON POST of the [`super::Alert`] document.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where to POST (treated as a secret: URLs often carry tokens).
    #[serde(default, deserialize_with = "secret_opt")]
    pub url: Option<SecretSource>,
    /// A file holding the URL.
    #[serde(default)]
    pub url_file: Option<PathBuf>,
}

/// SMTP transport security.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Tls {
    /// Plain SMTP (a local relay).
    None,
    /// STARTTLS upgrade (port 587).
    #[default]
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
}

/// `alerts.email:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailConfig {
    /// SMTP server host.
    pub smtp_host: String,
    /// SMTP port (default by `tls`: 25, 587, 465).
    #[serde(default)]
    pub smtp_port: Option<u16>,
    /// Transport security.
    #[serde(default)]
    pub tls: Tls,
    /// SMTP user (no auth when absent).
    #[serde(default)]
    pub username: Option<String>,
    /// SMTP password (a secret).
    #[serde(default, deserialize_with = "secret_opt")]
    pub password: Option<SecretSource>,
    /// A file holding the password.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Sender address.
    pub from: String,
    /// Recipients (at least one).
    pub to: Vec<String>,
}

impl EmailConfig {
    /// The port to connect to.
    pub fn port(&self) -> u16 {
        self.smtp_port.unwrap_or(match self.tls {
            Tls::None => 25,
            Tls::Starttls => 587,
            Tls::Tls => 465,
        })
    }
}

fn secret_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SecretSource>, D::Error> {
    Ok(Option::<String>::deserialize(d)?.map(|s| SecretSource::from_config_str(&s)))
}

/// A secret given either inline (`key`) or as a file (`key_file`): exactly one of them.
pub fn one_source(
    inline: &Option<SecretSource>,
    file: &Option<PathBuf>,
    key: &str,
) -> Result<SecretSource, String> {
    match (inline, file) {
        (Some(s), None) => Ok(s.clone()),
        (None, Some(p)) => Ok(SecretSource::File(p.clone())),
        (Some(_), Some(_)) => Err(format!("set {key} or {key}_file, not both")),
        (None, None) => Err(format!("{key} (or {key}_file) is required")),
    }
}
