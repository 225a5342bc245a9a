//! Slack: Block Kit JSON POSTed to an incoming webhook.
//!
//! Slack's limits shape the payload: a header holds at most 150 characters, a section 3000, a
//! message 50 blocks; longer text is cut with "…" and extra cases are counted in a last line.

use std::time::Duration;

use reqwest::header::HeaderMap;
use reqwest::Client;
use serde_json::{json, Value};

use super::render::{case_heading, case_lines, status};
use super::webhook::{check_url, post_json};
use super::{Alert, Channel, SendFuture};
use crate::secret::Secret;

const HEADER_MAX: usize = 150;
const SECTION_MAX: usize = 3000;
/// Blocks before the cases: header, summary, context.
const MAX_CASE_BLOCKS: usize = 50 - 4;

/// Posts each alert to a Slack incoming webhook.
pub struct SlackChannel {
    client: Client,
    url: Secret,
    timeout: Duration,
}

impl SlackChannel {
    /// A channel posting to the webhook `url` (checked to be an http(s) URL; never echoed).
    pub fn new(client: Client, url: Secret, timeout: Duration) -> Result<SlackChannel, String> {
        check_url(&url)?;
        Ok(SlackChannel {
            client,
            url,
            timeout,
        })
    }
}

impl Channel for SlackChannel {
    fn name(&self) -> &'static str {
        "slack"
    }

    fn send<'a>(&'a self, alert: &'a Alert) -> SendFuture<'a> {
        Box::pin(async move {
            let body = payload(alert);
            post_json(
                &self.client,
                &self.url,
                self.timeout,
                &body,
                HeaderMap::new(),
            )
            .await
        })
    }
}

/// The Block Kit message: a header with the title, the status and summary, one section per case
/// (verdict, metrics against thresholds, environment changes, report folder), and `text` as the
/// notification fallback.
pub fn payload(alert: &Alert) -> Value {
    let mut blocks = vec![
        json!({
            "type": "header",
            "text": {"type": "plain_text", "text": cut(&alert.title, HEADER_MAX), "emoji": true}
        }),
        section(&format!(
            "*{}*\n{}",
            escape(&status(alert)),
            escape(&alert.summary)
        )),
    ];
    let mut facts = Vec::new();
    if let Some(h) = &alert.host {
        facts.push(format!("host `{}`", escape(h)));
    }
    facts.push(escape(&alert.created_at));
    if let Some(r) = alert.run_id {
        facts.push(format!("run {r}"));
    }
    if alert.id > 0 {
        facts.push(format!("alert {}", alert.id));
    }
    blocks.push(json!({
        "type": "context",
        "elements": [{"type": "mrkdwn", "text": facts.join(" · ")}]
    }));
    let shown = if alert.cases.len() > MAX_CASE_BLOCKS {
        MAX_CASE_BLOCKS - 1
    } else {
        alert.cases.len()
    };
    for case in &alert.cases[..shown] {
        let mut text = format!("*{}*", escape(&case_heading(case)));
        let lines = case_lines(case);
        if !lines.is_empty() {
            // A code block keeps the metric columns and the Δ readable.
            text.push_str("\n```");
            text.push_str(&escape(&lines.join("\n")));
            text.push_str("```");
        }
        blocks.push(section(&text));
    }
    if shown < alert.cases.len() {
        blocks.push(section(&format!(
            "… and {} more cases (see the report folders)",
            alert.cases.len() - shown
        )));
    }
    json!({
        "text": alert.title,
        "blocks": blocks,
    })
}

fn section(text: &str) -> Value {
    json!({"type": "section", "text": {"type": "mrkdwn", "text": cut(text, SECTION_MAX)}})
}

/// Slack's mrkdwn treats `&`, `<` and `>` as control characters (links, mentions).
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// At most `max` characters, ending in "…" when cut.
fn cut(s: &str, max: usize) -> String {
    match s.char_indices().nth(max - 1) {
        Some((i, _)) if s.chars().count() > max => format!("{}…", &s[..i]),
        _ => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::render::tests::drift_alert;

    #[test]
    fn payload_has_header_case_sections_and_fallback() {
        let a = drift_alert();
        let p = payload(&a);
        assert_eq!(p["text"], a.title.as_str());
        let blocks = p["blocks"].as_array().unwrap();
        assert_eq!(blocks[0]["type"], "header");
        assert_eq!(blocks[0]["text"]["text"], a.title.as_str());
        let case = blocks.last().unwrap()["text"]["text"].as_str().unwrap();
        assert!(case.starts_with("*sunset: DRIFT (baseline v3)*"), "{case}");
        assert!(
            case.contains("latent max|Δ| 3.20e-3  (limit ≤ 1.00e-3)  FAIL"),
            "{case}"
        );
        assert!(
            case.contains("onnxruntime.version: 1.31.1 → 1.24.4"),
            "{case}"
        );
        assert!(
            case.contains("Report: /var/lib/monitor/reports/12/sunset"),
            "{case}"
        );
    }

    #[test]
    fn stays_within_slack_limits_and_escapes_control_characters() {
        let mut a = drift_alert();
        a.title = "t".repeat(400);
        a.cases[0].name = "<!channel> & co".into();
        let one = a.cases[0].clone();
        a.cases = vec![one; 120];
        let p = payload(&a);
        let blocks = p["blocks"].as_array().unwrap();
        assert!(blocks.len() <= 50, "{}", blocks.len());
        assert_eq!(
            blocks[0]["text"]["text"].as_str().unwrap().chars().count(),
            HEADER_MAX
        );
        let last = blocks.last().unwrap()["text"]["text"].as_str().unwrap();
        assert!(last.contains("and 75 more cases"), "{last}");
        let first_case = blocks[3]["text"]["text"].as_str().unwrap();
        assert!(
            first_case.contains("&lt;!channel&gt; &amp; co"),
            "{first_case}"
        );
        assert!(!first_case.contains("<!channel>"));
    }

    #[test]
    fn cut_counts_characters() {
        assert_eq!(cut("ΔΔΔ", 3), "ΔΔΔ");
        assert_eq!(cut("ΔΔΔΔ", 3), "ΔΔ…");
    }
}
