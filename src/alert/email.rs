//! Email over SMTP (lettre): a text + HTML message with each case's diff heatmap attached.
//!
//! No connection pool: alerts are rare, and a fresh connection per alert means a relay that
//! restarted between two alerts is just reconnected to.

use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::message::{Attachment, Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls as SmtpTls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::config::{EmailConfig, Tls};
use super::{render, Alert, Channel, SendError, SendFuture};
use crate::secret::Secret;

/// Heatmaps attached to one message at most, and their total size: a round where every case
/// drifted should still make a message relays accept (many refuse more than 10 MB).
const MAX_ATTACHMENTS: usize = 10;
const MAX_ATTACHMENT_BYTES: u64 = 5 * 1024 * 1024;

/// Sends each alert as one email to every recipient.
pub struct EmailChannel {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    to: Vec<Mailbox>,
    password: Option<Secret>,
    timeout: Duration,
}

impl EmailChannel {
    /// A channel for `config`; `password` is the resolved `password`/`password_file` (used with
    /// `username`). Errors name the config key, never the password.
    pub fn new(
        config: &EmailConfig,
        password: Option<Secret>,
        timeout: Duration,
    ) -> Result<EmailChannel, String> {
        let from: Mailbox = config.from.parse().map_err(|e| {
            format!(
                "alerts.email.from: {:?} is not an email address ({e})",
                config.from
            )
        })?;
        if config.to.is_empty() {
            return Err("alerts.email.to: no recipients; at least one is needed".into());
        }
        let to = config
            .to
            .iter()
            .enumerate()
            .map(|(i, a)| {
                a.parse::<Mailbox>().map_err(|e| {
                    format!("alerts.email.to[{i}]: {a:?} is not an email address ({e})")
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let host = config.smtp_host.as_str();
        let tls = |required: bool| -> Result<SmtpTls, String> {
            let params = TlsParameters::new(host.to_string()).map_err(|e| {
                format!("alerts.email.smtp_host: cannot set up TLS for {host}: {e}")
            })?;
            Ok(if required {
                SmtpTls::Required(params)
            } else {
                SmtpTls::Wrapper(params)
            })
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
            .port(config.port())
            .timeout(Some(timeout));
        builder = match config.tls {
            Tls::None => builder,
            Tls::Starttls => builder.tls(tls(true)?),
            Tls::Tls => builder.tls(tls(false)?),
        };
        match (&config.username, &password) {
            (Some(user), Some(pw)) => {
                builder = builder.credentials(Credentials::new(user.clone(), pw.expose().to_string()));
            }
            (Some(_), None) => {
                return Err("alerts.email.password (or password_file) is required when alerts.email.username is set".into())
            }
            (None, Some(_)) => {
                return Err("alerts.email.username is required when a password is set".into())
            }
            (None, None) => {}
        }
        Ok(EmailChannel {
            transport: builder.build(),
            from,
            to,
            password,
            timeout,
        })
    }

    /// The message for `alert`: subject = title, text and HTML alternatives, heatmaps attached.
    fn message(&self, alert: &Alert) -> Result<Message, SendError> {
        let mut builder = Message::builder()
            .from(self.from.clone())
            .subject(alert.title.clone());
        for to in &self.to {
            builder = builder.to(to.clone());
        }
        let body = MultiPart::alternative_plain_html(render::text(alert), render::html(alert));
        let attachments = heatmaps(alert);
        let message = if attachments.is_empty() {
            builder.multipart(body)
        } else {
            let png = ContentType::parse("image/png")
                .map_err(|e| SendError::Permanent(format!("building the email: {e}")))?;
            let mut mixed = MultiPart::mixed().multipart(body);
            for (name, bytes) in attachments {
                mixed = mixed.singlepart(Attachment::new(name).body(bytes, png.clone()));
            }
            builder.multipart(mixed)
        };
        message.map_err(|e| SendError::Permanent(format!("building the email: {e}")))
    }

    /// An SMTP failure as a [`SendError`]: 5xx replies (a rejected recipient, bad credentials)
    /// and client-side refusals (no STARTTLS, no common auth mechanism) are permanent; 4xx
    /// replies, connection failures and timeouts are retried.
    fn classify(&self, e: &lettre::transport::smtp::Error) -> SendError {
        let redact = |s: String| match &self.password {
            Some(p) => p.redact(&s),
            None => s,
        };
        if e.is_timeout() {
            return timed_out(self.timeout);
        }
        let cause = std::error::Error::source(e).map(|s| s.to_string());
        if let Some(code) = e.status() {
            let reason = redact(
                format!("SMTP {code} {}", cause.unwrap_or_default())
                    .trim_end()
                    .to_string(),
            );
            return if e.is_permanent() {
                SendError::Permanent(reason)
            } else {
                SendError::Retry {
                    reason,
                    after: None,
                }
            };
        }
        if e.is_client() {
            return SendError::Permanent(redact(format!(
                "SMTP: {}",
                cause.unwrap_or_else(|| e.to_string())
            )));
        }
        let mut innermost: &dyn std::error::Error = e;
        while let Some(next) = innermost.source() {
            innermost = next;
        }
        let reason = match innermost
            .downcast_ref::<std::io::Error>()
            .map(std::io::Error::kind)
        {
            Some(std::io::ErrorKind::ConnectionRefused) => "connection refused".to_string(),
            _ => e.to_string(),
        };
        SendError::Retry {
            reason: redact(format!("SMTP: {reason}")),
            after: None,
        }
    }
}

impl Channel for EmailChannel {
    fn name(&self) -> &'static str {
        "email"
    }

    fn send<'a>(&'a self, alert: &'a Alert) -> SendFuture<'a> {
        Box::pin(async move {
            let message = self.message(alert)?;
            // lettre's timeout bounds each command; this one bounds the whole conversation.
            match tokio::time::timeout(self.timeout, self.transport.send(message)).await {
                Err(_) => Err(timed_out(self.timeout)),
                Ok(Err(e)) => Err(self.classify(&e)),
                Ok(Ok(_)) => Ok(()),
            }
        })
    }
}

fn timed_out(timeout: Duration) -> SendError {
    SendError::Retry {
        reason: format!(
            "SMTP: timed out after {}",
            crate::duration::ConfigDuration(timeout)
        ),
        after: None,
    }
}

/// `(<case>-diff.png, bytes)` for each case's heatmap that still exists (reports are pruned, and
/// a missing picture must not stop the alert), within the attachment limits.
fn heatmaps(alert: &Alert) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut total = 0u64;
    for case in &alert.cases {
        let Some(path) = &case.heatmap else { continue };
        let Ok(meta) = std::fs::metadata(path) else {
            continue;
        };
        if out.len() == MAX_ATTACHMENTS || total + meta.len() > MAX_ATTACHMENT_BYTES {
            break;
        }
        if let Ok(bytes) = std::fs::read(path) {
            total += bytes.len() as u64;
            out.push((format!("{}-diff.png", case.name), bytes));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::render::tests::drift_alert;

    fn config(yaml: &str) -> EmailConfig {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn addresses_and_auth_are_checked_when_built() {
        let t = Duration::from_secs(1);
        let ok =
            config("smtp_host: localhost\ntls: none\nfrom: m@example.com\nto: [a@example.com]");
        assert!(EmailChannel::new(&ok, None, t).is_ok());
        let bad_to = config(
            "smtp_host: localhost\ntls: none\nfrom: m@example.com\nto: [a@example.com, nope]",
        );
        let e = EmailChannel::new(&bad_to, None, t).err().unwrap();
        assert!(e.starts_with("alerts.email.to[1]: \"nope\""), "{e}");
        let user = config("smtp_host: localhost\ntls: none\nusername: u\nfrom: m@example.com\nto: [a@example.com]");
        let e = EmailChannel::new(&user, None, t).err().unwrap();
        assert!(e.contains("alerts.email.password"), "{e}");
    }

    #[test]
    fn heatmaps_that_exist_are_attached_by_case_name() {
        let dir = tempfile::tempdir().unwrap();
        let png = dir.path().join("diff.png");
        std::fs::write(&png, b"\x89PNG\r\n\x1a\nbytes").unwrap();
        let mut a = drift_alert();
        a.cases[0].heatmap = Some(png.display().to_string());
        let mut gone = a.cases[0].clone();
        gone.name = "pruned".into();
        gone.heatmap = Some(dir.path().join("missing.png").display().to_string());
        a.cases.push(gone);
        let h = heatmaps(&a);
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].0, "sunset-diff.png");
        assert_eq!(h[0].1, b"\x89PNG\r\n\x1a\nbytes");
    }
}
