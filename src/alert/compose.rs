//! Turning a round's results into alert documents: titles, summaries, numbers against thresholds.
//! The wording tells an `error` (the monitor could not check) apart from a `drift` (it checked and
//! the outputs changed) and a `model_changed` (someone replaced the model files).

use crate::alert::state::CaseState;
use crate::alert::{Alert, AlertCase, AlertKind, Metric, Severity, ALERT_VERSION};
use crate::check::CaseCheck;
use crate::compare::Verdict;

/// An alert case from a check result and the case's alert state.
pub fn alert_case(c: &CaseCheck, st: Option<&CaseState>) -> AlertCase {
    let mut metrics = Vec::new();
    let mut reasons = Vec::new();
    let mut env_changes = Vec::new();
    if let Some(r) = &c.report {
        let t = &r.thresholds;
        let finite = |v: f64| v.is_finite().then_some(v);
        if let Some(l) = &r.latents {
            metrics.push(Metric {
                name: "latent_max_abs".into(),
                value: finite(l.max_abs),
                threshold: Some(t.latent_max_abs),
                op: Some("<=".into()),
                ok: l.max_abs <= t.latent_max_abs,
            });
            metrics.push(Metric {
                name: "latent_cosine".into(),
                value: finite(l.cosine),
                threshold: Some(t.latent_cosine_min),
                op: Some(">=".into()),
                ok: l.cosine >= t.latent_cosine_min,
            });
        }
        if let Some(i) = &r.image {
            metrics.push(Metric {
                name: "ssim".into(),
                value: finite(i.ssim),
                threshold: Some(t.ssim_min),
                op: Some(">=".into()),
                ok: i.ssim >= t.ssim_min,
            });
            metrics.push(Metric {
                name: "psnr_db".into(),
                value: finite(i.psnr_db),
                threshold: None,
                op: None,
                ok: true,
            });
            metrics.push(Metric {
                name: "pixels_differing".into(),
                value: Some(i.pixels_differing as f64),
                threshold: None,
                op: None,
                ok: true,
            });
        }
        reasons.extend(r.classification.failures.iter().map(|f| f.message.clone()));
        reasons.extend(
            r.classification
                .model_changes
                .iter()
                .map(|m| format!("model file changed: {}", m.file)),
        );
        reasons.extend(r.diverged_line());
        env_changes.extend(r.env_differences.iter().map(|d| d.describe_plain()));
    }
    reasons.extend(c.performance.as_ref().and_then(|p| p.describe_slow()));
    let heatmap = c.artifacts.as_ref().and_then(|dir| {
        let h = dir.join("diff.png");
        h.exists().then(|| h.display().to_string())
    });
    AlertCase {
        target: crate::check::is_service_result(c.details.as_ref())
            .then(|| crate::config::Target::Service.as_str().to_string()),
        name: c.name.clone(),
        verdict: c.verdict.to_string(),
        baseline_version: c.baseline_version,
        metrics,
        reasons,
        env_changes,
        error: c.error.clone(),
        // The HTML page (or its URL) when written, else the folder with the kept outputs.
        report_dir: c
            .report_page
            .clone()
            .or_else(|| c.artifacts.as_ref().map(|d| d.display().to_string())),
        heatmap,
        bad_streak: st.map_or(0, |s| s.bad_streak),
        firing_since: st.and_then(|s| s.firing_since.clone()),
    }
}

fn severity_of(verdict: &str) -> Severity {
    match verdict.parse::<Verdict>() {
        Ok(Verdict::Error) => Severity::Error,
        Ok(Verdict::Drift) => Severity::Drift,
        Ok(Verdict::ModelChanged) => Severity::ModelChanged,
        _ => Severity::Info,
    }
}

fn label(s: Severity) -> &'static str {
    match s {
        Severity::Error => "CHECK ERROR",
        Severity::Drift => "DRIFT",
        Severity::ModelChanged => "MODEL CHANGED",
        Severity::Info => "OK",
    }
}

/// The first failing number of a case, for the title ("latent max|Δ| 3.2e-3 > 1e-3").
fn headline(c: &AlertCase) -> Option<String> {
    if let Some(e) = &c.error {
        let short: String = e.chars().take(80).collect();
        return Some(short);
    }
    c.reasons.first().cloned()
}

fn names(cases: &[AlertCase]) -> String {
    cases
        .iter()
        .map(|c| c.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn new_alert(
    kind: AlertKind,
    severity: Severity,
    title: String,
    summary: String,
    run_id: Option<i64>,
    cases: Vec<AlertCase>,
) -> Alert {
    Alert {
        version: ALERT_VERSION,
        id: 0,
        kind,
        severity,
        title,
        summary,
        host: crate::fingerprint::hostname(),
        created_at: crate::clock::utc_now_rfc3339(),
        run_id,
        cases,
    }
}

fn host_part() -> String {
    crate::fingerprint::hostname().map_or(String::new(), |h| format!(" on {h}"))
}

/// One message for every failing case of a round (newly firing and reminders together), worst
/// first. The title leads with the worst severity; errors and drifts are named separately.
pub fn failing(kind: AlertKind, mut cases: Vec<AlertCase>, run_id: Option<i64>) -> Alert {
    cases.sort_by_key(|c| std::cmp::Reverse(severity_of(&c.verdict)));
    let severity = cases
        .first()
        .map_or(Severity::Info, |c| severity_of(&c.verdict));
    let mut groups: Vec<String> = Vec::new();
    for s in [Severity::Error, Severity::Drift, Severity::ModelChanged] {
        let of: Vec<&AlertCase> = cases
            .iter()
            .filter(|c| severity_of(&c.verdict) == s)
            .collect();
        if of.is_empty() {
            continue;
        }
        let list = of
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        groups.push(format!("{} {list}", label(s)));
    }
    let still = if kind == AlertKind::Reminder {
        "still failing: "
    } else {
        ""
    };
    let detail = match (cases.len(), cases.first().and_then(headline)) {
        (1, Some(h)) => format!(" ({h})"),
        _ => String::new(),
    };
    let title = format!(
        "[monitor] {still}{}{}{detail}",
        groups.join("; "),
        host_part()
    );
    let mut summary = Vec::new();
    let errors = cases
        .iter()
        .filter(|c| severity_of(&c.verdict) == Severity::Error)
        .count();
    let drifts = cases
        .iter()
        .filter(|c| severity_of(&c.verdict) == Severity::Drift)
        .count();
    let changed = cases
        .iter()
        .filter(|c| severity_of(&c.verdict) == Severity::ModelChanged)
        .count();
    if drifts > 0 {
        summary.push(format!(
            "{drifts} case(s) produced outputs that differ from their baseline beyond the thresholds: same model, seed and parameters, different result. Compare the environment changes below; diff.png and compare.json are in each report folder. If the change is intended, accept it with `monitor rebaseline --case NAME --reason ...`."
        ));
    }
    if changed > 0 {
        summary.push(format!(
            "{changed} case(s) ran on model files whose hashes differ from the baseline's: the model was replaced, so outputs were not judged. Rebaseline if the new model is intended."
        ));
    }
    if errors > 0 {
        summary.push(format!(
            "{errors} case(s) could not be checked: this says nothing about drift. See the error of each case (model, ONNX Runtime, GPU, baseline or storage problem)."
        ));
    }
    new_alert(kind, severity, title, summary.join(" "), run_id, cases)
}

/// Cases that stopped failing.
pub fn resolved(cases: Vec<AlertCase>, run_id: Option<i64>) -> Alert {
    let title = format!(
        "[monitor] RESOLVED{}: {} back within thresholds",
        host_part(),
        names(&cases)
    );
    let summary = format!(
        "{} case(s) passed their checks again for the configured number of rounds in a row.",
        cases.len()
    );
    new_alert(
        AlertKind::Resolved,
        Severity::Info,
        title,
        summary,
        run_id,
        cases,
    )
}

/// A restart of the generation service did not fix the drift (or could not be done).
pub fn escalation(what: &str, outcome: &str, cases: Vec<AlertCase>, run_id: Option<i64>) -> Alert {
    let title = format!(
        "[monitor] ESCALATION{}: {what} did not fix {}",
        host_part(),
        names(&cases)
    );
    let summary = format!(
        "The drift was confirmed and the monitor tried `{what}`: {outcome}. The drift persists; a person needs to look. No further restarts for these cases until they resolve."
    );
    new_alert(
        AlertKind::Escalation,
        Severity::Drift,
        title,
        summary,
        run_id,
        cases,
    )
}

/// New baselines were stored automatically after a restart did not fix a drift.
pub fn auto_rebaselined(
    versions: &[(String, u32)],
    cases: Vec<AlertCase>,
    run_id: Option<i64>,
) -> Alert {
    let list: Vec<String> = versions
        .iter()
        .map(|(c, v)| format!("{c} v{v:04}"))
        .collect();
    let title = format!(
        "[monitor] NEW BASELINE{}: {} stored automatically",
        host_part(),
        list.join(", ")
    );
    let summary = format!(
        "Drift persisted after restarting the generation service, and remediation.auto_rebaseline is on: the new outputs were stored as baselines {} with the reason \"automatic: drift persisted after restart\". Undo with `monitor rebaseline --restore CASE@VERSION`.",
        list.join(", ")
    );
    new_alert(
        AlertKind::AutoRebaseline,
        Severity::Drift,
        title,
        summary,
        run_id,
        cases,
    )
}

/// Cases whose generation became slow this round (their verdicts stand on their own).
pub fn slow(cases: Vec<AlertCase>, run_id: Option<i64>) -> Alert {
    let detail = match (cases.len(), cases.first()) {
        (1, Some(c)) => c
            .reasons
            .iter()
            .find_map(|r| r.strip_prefix("slow: "))
            .map_or(String::new(), |r| format!(": {r}")),
        _ => String::new(),
    };
    let title = format!("[monitor] SLOW{}: {}{detail}", host_part(), names(&cases));
    let summary = "Generation took longer than performance.max_slowdown times the baseline's generation time. This is about speed only: each case's verdict is judged on its outputs and shown below. Usual causes: GPU clocks or thermal throttling, other work on the GPU, a driver or ONNX Runtime change (see the environment changes), or a changed session option.".to_string();
    new_alert(
        AlertKind::Slow,
        Severity::Info,
        title,
        summary,
        run_id,
        cases,
    )
}

/// `monitor alert test`.
pub fn test_alert() -> Alert {
    let title = format!("[monitor] test alert{}", host_part());
    new_alert(
        AlertKind::Test,
        Severity::Info,
        title,
        "This is a test message from `monitor alert test`: this channel is configured correctly."
            .into(),
        None,
        Vec::new(),
    )
}
