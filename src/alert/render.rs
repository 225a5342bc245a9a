//! The human wording of an [`Alert`]: a plain-text body and an HTML body (email), and the
//! per-line pieces the Slack payload reuses.
//!
//! An `error` case reads as "could not check": the monitor failed to judge it, which says nothing
//! about the outputs, and must not be mistaken for a drift.

use std::fmt::Write as _;

use super::{Alert, AlertCase, AlertKind, Metric, Severity};

/// The plain-text body.
pub fn text(alert: &Alert) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{}", alert.title);
    let _ = writeln!(s);
    let _ = writeln!(s, "Status: {}", status(alert));
    if !alert.summary.is_empty() {
        let _ = writeln!(s);
        let _ = writeln!(s, "{}", alert.summary);
    }
    let _ = writeln!(s);
    let _ = writeln!(s, "{}", facts(alert));
    for case in &alert.cases {
        let _ = writeln!(s);
        let _ = writeln!(s, "== {} ==", case_heading(case));
        for line in case_lines(case) {
            let _ = writeln!(s, "  {line}");
        }
    }
    s
}

/// The HTML body (every value escaped).
pub fn html(alert: &Alert) -> String {
    let mut s = String::new();
    s.push_str("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>");
    s.push_str(&escape(&alert.title));
    s.push_str("</title></head>\n<body style=\"font-family: sans-serif\">\n");
    let _ = writeln!(
        s,
        "<h2 style=\"color: {}\">{}</h2>",
        colour(alert.severity),
        escape(&alert.title)
    );
    let _ = writeln!(s, "<p><b>Status:</b> {}</p>", escape(&status(alert)));
    if !alert.summary.is_empty() {
        let _ = writeln!(
            s,
            "<p>{}</p>",
            escape(&alert.summary).replace('\n', "<br>\n")
        );
    }
    let _ = writeln!(s, "<p style=\"color: #555\">{}</p>", escape(&facts(alert)));
    for case in &alert.cases {
        let _ = writeln!(s, "<h3>{}</h3>", escape(&case_heading(case)));
        if !case.metrics.is_empty() {
            s.push_str("<table style=\"border-collapse: collapse\">\n");
            s.push_str("<tr><th align=\"left\">metric</th><th align=\"right\">value</th><th align=\"left\">limit</th><th></th></tr>\n");
            for m in &case.metrics {
                let limit = limit(m).unwrap_or_default();
                let _ = writeln!(
                    s,
                    "<tr><td>{}</td><td align=\"right\"><code>{}</code></td><td><code>{}</code></td><td><b style=\"color: {}\">{}</b></td></tr>",
                    escape(&metric_label(&m.name)),
                    escape(&value(&m.name, m.value)),
                    escape(&limit),
                    if m.ok { "#2e7d32" } else { "#c62828" },
                    if m.ok { "ok" } else { "FAIL" },
                );
            }
            s.push_str("</table>\n");
        }
        list(&mut s, "Reasons", &case.reasons);
        list(
            &mut s,
            "Environment changes since the baseline",
            &case.env_changes,
        );
        if let Some(e) = &case.error {
            let _ = writeln!(
                s,
                "<p><b>Could not check:</b> <code>{}</code></p>",
                escape(e)
            );
        }
        for line in streak_and_report(case) {
            let _ = writeln!(s, "<p>{}</p>", escape(&line));
        }
    }
    s.push_str("</body></html>\n");
    s
}

/// One metric against its threshold, e.g. `latent max|Δ| 3.20e-3  (limit ≤ 1.00e-3)  FAIL`.
pub fn metric_line(m: &Metric) -> String {
    let mut s = format!("{} {}", metric_label(&m.name), value(&m.name, m.value));
    if let Some(l) = limit(m) {
        let _ = write!(s, "  ({l})");
        s.push_str(if m.ok { "  ok" } else { "  FAIL" });
    } else if !m.ok {
        s.push_str("  FAIL");
    }
    s
}

/// A verdict as people read it (`error` reads "COULD NOT CHECK", not as a drift).
pub fn verdict_label(verdict: &str) -> &str {
    match verdict {
        "identical" => "identical",
        "within_tolerance" => "within tolerance",
        "drift" => "DRIFT",
        "model_changed" => "MODEL CHANGED",
        "error" => "COULD NOT CHECK",
        other => other,
    }
}

/// What the alert is, e.g. "firing: outputs drifted" or "firing: could not check (not a drift)".
pub fn status(alert: &Alert) -> String {
    let kind = match alert.kind {
        AlertKind::Firing => "firing",
        AlertKind::Reminder => "still firing (reminder)",
        AlertKind::Resolved => "resolved",
        AlertKind::Escalation => "escalation: a restart did not fix it",
        AlertKind::AutoRebaseline => "new baselines stored automatically",
        AlertKind::Slow => "slower than the baseline (speed only; outputs judged separately)",
        AlertKind::Test => "test message",
    };
    let severity = match alert.severity {
        Severity::Info => return kind.to_string(),
        Severity::ModelChanged => "the model files changed (outputs not judged)",
        Severity::Drift => "outputs drifted past their thresholds",
        Severity::Error => "could not check (the outputs were not judged; this is not a drift)",
    };
    format!("{kind}: {severity}")
}

/// "sunset: DRIFT (baseline v3)"; "webui: DRIFT (generation service, baseline v1)".
pub fn case_heading(case: &AlertCase) -> String {
    let mut s = format!("{}: {}", case.name, verdict_label(&case.verdict));
    let mut notes = Vec::new();
    if case.target.as_deref() == Some(crate::config::Target::Service.as_str()) {
        notes.push("generation service".to_string());
    }
    if let Some(v) = case.baseline_version {
        notes.push(format!("baseline v{v}"));
    }
    if !notes.is_empty() {
        let _ = write!(s, " ({})", notes.join(", "));
    }
    s
}

/// A case's body lines (metrics, reasons, environment changes, error, streak, report folder).
pub fn case_lines(case: &AlertCase) -> Vec<String> {
    let mut v: Vec<String> = case.metrics.iter().map(metric_line).collect();
    if !case.reasons.is_empty() {
        v.push("Reasons:".into());
        v.extend(case.reasons.iter().map(|r| format!("  - {r}")));
    }
    if !case.env_changes.is_empty() {
        v.push("Environment changes since the baseline:".into());
        v.extend(case.env_changes.iter().map(|r| format!("  - {r}")));
    }
    if let Some(e) = &case.error {
        v.push(format!("Could not check: {e}"));
    }
    v.extend(streak_and_report(case));
    v
}

/// "Host gpu-01 · raised 2026-… · run 12 · alert 5".
fn facts(alert: &Alert) -> String {
    let mut parts = Vec::new();
    if let Some(h) = &alert.host {
        parts.push(format!("host {h}"));
    }
    parts.push(format!("raised {}", alert.created_at));
    if let Some(r) = alert.run_id {
        parts.push(format!("run {r}"));
    }
    if alert.id > 0 {
        parts.push(format!("alert {}", alert.id));
    }
    parts.join(" · ")
}

fn streak_and_report(case: &AlertCase) -> Vec<String> {
    let mut v = Vec::new();
    if case.bad_streak > 1 {
        let mut s = format!("Bad rounds in a row: {}", case.bad_streak);
        if let Some(since) = &case.firing_since {
            let _ = write!(s, " (firing since {since})");
        }
        v.push(s);
    } else if let Some(since) = &case.firing_since {
        v.push(format!("Firing since {since}"));
    }
    if let Some(r) = &case.report_dir {
        v.push(format!("Report: {r}"));
    }
    v
}

fn list(s: &mut String, heading: &str, items: &[String]) {
    if items.is_empty() {
        return;
    }
    let _ = writeln!(s, "<p><b>{}:</b></p>\n<ul>", escape(heading));
    for i in items {
        let _ = writeln!(s, "<li>{}</li>", escape(i));
    }
    s.push_str("</ul>\n");
}

fn colour(severity: Severity) -> &'static str {
    match severity {
        Severity::Info => "#2e7d32",
        Severity::ModelChanged => "#ef6c00",
        Severity::Drift => "#c62828",
        Severity::Error => "#6a1b9a",
    }
}

/// The human name of a metric.
pub fn metric_label(name: &str) -> String {
    match name {
        "latent_max_abs" => "latent max|Δ|",
        "latent_mean_abs" => "latent mean|Δ|",
        "latent_rmse" => "latent RMSE",
        "latent_cosine" => "latent cosine",
        "ssim" => "SSIM",
        "psnr_db" => "PSNR",
        "pixels_differing" => "pixels differing",
        other => other,
    }
    .to_string()
}

/// "limit ≤ 1.00e-3", when the metric has a threshold.
fn limit(m: &Metric) -> Option<String> {
    let t = m.threshold?;
    let op = match m.op.as_deref() {
        Some("<=") | None => "≤",
        Some(">=") => "≥",
        Some(other) => other,
    };
    let mut shown = value(&m.name, Some(t));
    if matches!(m.name.as_str(), "latent_cosine" | "ssim") {
        // A limit is written by people (0.99); six digits would only add noise.
        shown = shown.trim_end_matches('0').to_string();
        if shown.ends_with('.') {
            shown.push('0');
        }
    }
    Some(format!("limit {op} {shown}"))
}

/// A metric value in the notation that fits it: small differences in scientific notation,
/// similarities with enough digits to see a change in the 5th place.
fn value(name: &str, v: Option<f64>) -> String {
    let Some(v) = v else {
        // PSNR of identical images is infinite (stored as null).
        return if name == "psnr_db" {
            "∞ dB".into()
        } else {
            "n/a".into()
        };
    };
    match name {
        "latent_cosine" | "ssim" => format!("{v:.6}"),
        "psnr_db" => format!("{v:.2} dB"),
        "pixels_differing" => format!("{}", v.round() as i64),
        _ if v == 0.0 => "0".into(),
        _ => format!("{v:.2e}"),
    }
}

/// Escapes text for HTML element content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::alert::ALERT_VERSION;

    /// A drift alert with one failing case (shared by the channel tests).
    pub(crate) fn drift_alert() -> Alert {
        Alert {
            version: ALERT_VERSION,
            id: 7,
            kind: AlertKind::Firing,
            severity: Severity::Drift,
            title: "[monitor] DRIFT on gpu-01: sunset".into(),
            summary: "1 case drifted.".into(),
            host: Some("gpu-01".into()),
            created_at: "2026-11-27T03:23:10Z".into(),
            run_id: Some(12),
            cases: vec![AlertCase {
                name: "sunset".into(),
                verdict: "drift".into(),
                baseline_version: Some(3),
                metrics: vec![
                    Metric {
                        name: "latent_max_abs".into(),
                        value: Some(3.2e-3),
                        threshold: Some(1e-3),
                        op: Some("<=".into()),
                        ok: false,
                    },
                    Metric {
                        name: "ssim".into(),
                        value: Some(0.999_912),
                        threshold: Some(0.99),
                        op: Some(">=".into()),
                        ok: true,
                    },
                ],
                reasons: vec!["latent max|Δ| 3.20e-3 > 1.00e-3 (3.2× the limit)".into()],
                env_changes: vec!["onnxruntime.version: 1.31.1 → 1.24.4".into()],
                error: None,
                report_dir: Some("/var/lib/monitor/reports/12/sunset".into()),
                heatmap: None,
                bad_streak: 2,
                firing_since: Some("2026-11-27T02:23:10Z".into()),
                target: None,
            }],
        }
    }

    #[test]
    fn metrics_read_against_their_thresholds() {
        let a = drift_alert();
        let t = text(&a);
        assert!(
            t.contains("latent max|Δ| 3.20e-3  (limit ≤ 1.00e-3)  FAIL"),
            "{t}"
        );
        assert!(t.contains("SSIM 0.999912  (limit ≥ 0.99)  ok"), "{t}");
        assert!(t.contains("== sunset: DRIFT (baseline v3) =="), "{t}");
        assert!(t.contains("onnxruntime.version: 1.31.1 → 1.24.4"), "{t}");
        assert!(
            t.contains("Report: /var/lib/monitor/reports/12/sunset"),
            "{t}"
        );
        assert!(
            t.contains("Bad rounds in a row: 2 (firing since 2026-11-27T02:23:10Z)"),
            "{t}"
        );
        assert!(t.starts_with("[monitor] DRIFT on gpu-01: sunset\n"), "{t}");
    }

    #[test]
    fn an_error_reads_as_could_not_check_not_as_drift() {
        let mut a = drift_alert();
        a.severity = Severity::Error;
        a.title = "[monitor] could not check on gpu-01".into();
        a.summary = "1 case could not be checked.".into();
        a.cases[0].verdict = "error".into();
        a.cases[0].metrics.clear();
        a.cases[0].reasons.clear();
        a.cases[0].error = Some("worker crashed (signal 9)".into());
        let t = text(&a);
        assert!(t.contains("sunset: COULD NOT CHECK"), "{t}");
        assert!(
            t.contains("Could not check: worker crashed (signal 9)"),
            "{t}"
        );
        assert!(t.contains("this is not a drift"), "{t}");
        assert!(!t.contains("DRIFT"), "{t}");
        assert!(!t.contains("drifted"), "{t}");
    }

    #[test]
    fn html_escapes_every_value() {
        let mut a = drift_alert();
        a.title = "<b>t</b> & co".into();
        a.cases[0].name = "<script>alert(1)</script>".into();
        a.cases[0].reasons = vec!["a \"quoted\" <i>reason</i>".into()];
        a.cases[0].error = Some("x < y".into());
        let h = html(&a);
        assert!(!h.contains("<script>"), "{h}");
        assert!(!h.contains("<i>reason"), "{h}");
        assert!(h.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "{h}");
        assert!(h.contains("&lt;b&gt;t&lt;/b&gt; &amp; co"), "{h}");
        assert!(
            h.contains("a &quot;quoted&quot; &lt;i&gt;reason&lt;/i&gt;"),
            "{h}"
        );
        assert!(h.contains("<code>3.20e-3</code>"), "{h}");
        assert!(h.contains("limit ≤ 1.00e-3"), "{h}");
    }

    #[test]
    fn values_in_the_notation_that_fits() {
        assert_eq!(value("latent_max_abs", Some(0.0)), "0");
        assert_eq!(value("psnr_db", None), "∞ dB");
        assert_eq!(value("psnr_db", Some(41.234)), "41.23 dB");
        assert_eq!(value("pixels_differing", Some(12.0)), "12");
        assert_eq!(value("latent_rmse", None), "n/a");
        let no_limit = Metric {
            name: "latent_rmse".into(),
            value: Some(1e-4),
            threshold: None,
            op: None,
            ok: true,
        };
        assert_eq!(metric_line(&no_limit), "latent RMSE 1.00e-4");
    }
}
