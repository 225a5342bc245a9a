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
    // Not `Option<String>`: its type error would quote the value (`invalid type: integer 1234`),
    // and the config error goes to the log.
    match Option::<serde_yaml::Value>::deserialize(d)? {
        None | Some(serde_yaml::Value::Null) => Ok(None),
        Some(serde_yaml::Value::String(s)) => Ok(Some(SecretSource::from_config_str(&s))),
        Some(_) => Err(serde::de::Error::custom(
            "a secret must be a string (put it in quotes); its value is not shown",
        )),
    }
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

/// Structural problems of `alerts:` as `(key, message)`, e.g. `("alerts.email.to", "no
/// recipients; …")`. Secrets are not resolved here (that happens when channels are built).
pub fn problems(config: &AlertsConfig) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = Vec::new();
    let mut add = |key: &str, message: String| v.push((key.to_string(), message));
    for (key, n) in [
        ("alerts.failure_threshold", config.failure_threshold),
        ("alerts.success_threshold", config.success_threshold),
    ] {
        if n == 0 {
            add(
                key,
                format!("{n} rounds is not allowed; at least 1 is needed"),
            );
        }
    }
    if config.retry_initial.is_zero() {
        add(
            "alerts.retry_initial",
            "must be longer than 0 (a failed delivery would be retried in a tight loop)".into(),
        );
    }
    if config.retry_max < config.retry_initial {
        add(
            "alerts.retry_max",
            format!(
                "{} is shorter than retry_initial {}",
                config.retry_max, config.retry_initial
            ),
        );
    }
    if config.timeout.is_zero() {
        add("alerts.timeout", "must be longer than 0".into());
    }
    if let Some(e) = &config.email {
        if e.smtp_host.trim().is_empty() {
            add("alerts.email.smtp_host", "is empty".into());
        }
        if let Err(err) = e.from.parse::<lettre::message::Mailbox>() {
            add(
                "alerts.email.from",
                format!("{:?} is not an email address ({err})", e.from),
            );
        }
        if e.to.is_empty() {
            add(
                "alerts.email.to",
                "no recipients; at least one is needed".into(),
            );
        }
        for (i, to) in e.to.iter().enumerate() {
            if let Err(err) = to.parse::<lettre::message::Mailbox>() {
                add(
                    &format!("alerts.email.to[{i}]"),
                    format!("{to:?} is not an email address ({err})"),
                );
            }
        }
        let has_password = e.password.is_some() || e.password_file.is_some();
        if e.password.is_some() && e.password_file.is_some() {
            add(
                "alerts.email.password",
                "set alerts.email.password or alerts.email.password_file, not both".into(),
            );
        }
        match (&e.username, has_password) {
            (Some(_), false) => add(
                "alerts.email.password",
                "alerts.email.username is set but no password (or password_file)".into(),
            ),
            (None, true) => add(
                "alerts.email.username",
                "a password is set but no username".into(),
            ),
            _ => {}
        }
    }
    if let Some(s) = &config.slack {
        let key = "alerts.slack.webhook_url";
        if let Err(e) = one_source(&s.webhook_url, &s.webhook_url_file, key) {
            add(key, e);
        }
    }
    if let Some(w) = &config.webhook {
        let key = "alerts.webhook.url";
        if let Err(e) = one_source(&w.url, &w.url_file, key) {
            add(key, e);
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> AlertsConfig {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn keys(yaml: &str) -> Vec<String> {
        problems(&parse(yaml)).into_iter().map(|(k, _)| k).collect()
    }

    #[test]
    fn a_sound_config_has_no_problems() {
        let c = parse(
            "email: {smtp_host: mail, from: 'Monitor <m@example.com>', to: [a@example.com], username: u, password: '${PW}'}
slack: {webhook_url: '${SLACK_WEBHOOK_URL}'}
webhook: {url_file: hook.url}",
        );
        assert_eq!(problems(&c), Vec::<(String, String)>::new());
        assert_eq!(
            problems(&AlertsConfig::default()),
            Vec::<(String, String)>::new()
        );
    }

    #[test]
    fn each_structural_problem_names_its_key() {
        assert_eq!(
            keys("failure_threshold: 0\nsuccess_threshold: 0"),
            ["alerts.failure_threshold", "alerts.success_threshold"]
        );
        assert_eq!(
            keys("retry_initial: 0\ntimeout: 0"),
            ["alerts.retry_initial", "alerts.timeout"]
        );
        assert_eq!(
            keys("retry_initial: 10m\nretry_max: 1m"),
            ["alerts.retry_max"]
        );
        assert_eq!(
            keys("email: {smtp_host: mail, from: nobody, to: []}"),
            ["alerts.email.from", "alerts.email.to"]
        );
        assert_eq!(
            keys("email: {smtp_host: mail, from: m@example.com, to: [a@example.com, 'not an address']}"),
            ["alerts.email.to[1]"]
        );
        assert_eq!(
            keys("email: {smtp_host: mail, from: m@x.org, to: [a@x.org], username: u, password: p, password_file: f}"),
            ["alerts.email.password"]
        );
        assert_eq!(
            keys("email: {smtp_host: mail, from: m@x.org, to: [a@x.org], username: u}"),
            ["alerts.email.password"]
        );
        assert_eq!(
            keys("email: {smtp_host: mail, from: m@x.org, to: [a@x.org], password: p}"),
            ["alerts.email.username"]
        );
        assert_eq!(keys("slack: {}"), ["alerts.slack.webhook_url"]);
        assert_eq!(
            keys("webhook: {url: 'https://x/y', url_file: f}"),
            ["alerts.webhook.url"]
        );
    }

    #[test]
    fn messages_never_show_a_secret_value() {
        let c = parse("webhook: {url: 'https://x/SECRET-TOKEN', url_file: f}");
        for (_, m) in problems(&c) {
            assert!(!m.contains("SECRET-TOKEN"), "{m}");
        }
    }
}
