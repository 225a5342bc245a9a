//! One scheduled round: check the due cases in a worker, update each case's alert state, commit
//! the alerts to the outbox, and — on a newly confirmed drift — restart the generation service,
//! re-check, and escalate (or re-baseline, when configured) if the drift persists.
//!
//! A round is a value ([`RoundReport`]) that the daemon loop, `run --once` and `monitor status`
//! consume; nothing here prints.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::alert::compose;
use crate::alert::state::{self, CaseState, Change};
use crate::alert::{outbox, AlertCase, AlertKind};
use crate::check::{check, CaseCheck, CheckOptions, CheckRun, CheckStatus};
use crate::clock::unix_now;
use crate::clock::utc_now_rfc3339;
use crate::compare::Verdict;
use crate::config::Config;
use crate::daemon::record::{self, Action};
use crate::history::History;
use crate::remediate::{self, RemediationConfig};
use crate::worker::Cancel;

/// What a round needs from the daemon.
#[derive(Clone)]
pub struct Ctx {
    /// The config in force when the round started.
    pub config: Arc<Config>,
    /// Set when the daemon stops: kills the worker and ends waits.
    pub cancel: Cancel,
    /// Wakes the delivery task after alerts were committed.
    pub kick: Arc<tokio::sync::Notify>,
}

/// How a round went.
#[derive(Debug, Clone)]
pub struct RoundReport {
    /// The check's history run (None when the check could not start).
    pub run_id: Option<i64>,
    /// ok / drift / error.
    pub status: CheckStatus,
    /// One line: "3 cases: 2 identical, 1 drift (run 12)".
    pub summary: String,
    /// Alerts committed to the outbox.
    pub alerts: Vec<i64>,
}

/// Runs one round over `cases` (all when empty).
pub async fn round(ctx: Ctx, cases: Vec<String>, trigger: &'static str) -> RoundReport {
    let checked = run_check(&ctx, cases.clone(), trigger).await;
    let results = results_of(&ctx.config, &cases, &checked);
    let run_id = checked.as_ref().ok().map(|r| r.run_id);
    let status = match &checked {
        Ok(r) => r.status,
        Err(_) => CheckStatus::Error,
    };
    let mut summary = summarize(&results, run_id);
    match &checked {
        Err(e) => tracing::error!("check failed: {e:#}"),
        Ok(CheckRun {
            report_error: Some(e),
            ..
        }) => tracing::warn!("HTML report not written: {e}"),
        Ok(CheckRun {
            report: Some(page), ..
        }) => tracing::info!("report: {}", page.display()),
        Ok(_) => {}
    }
    for c in &results {
        match c.verdict {
            Verdict::Identical | Verdict::WithinTolerance => {
                tracing::info!(case = %c.name, verdict = %c.verdict, "checked")
            }
            _ => tracing::warn!(
                case = %c.name,
                verdict = %c.verdict,
                error = c.error.as_deref().unwrap_or(""),
                "checked"
            ),
        }
    }
    if ctx.cancel.is_cancelled() {
        // The worker was killed by our own shutdown: its `error` cases say nothing about the
        // model, so they must not move alert state.
        summary.push_str("; stopped by shutdown, alerts not evaluated");
        return RoundReport {
            run_id,
            status,
            summary,
            alerts: Vec::new(),
        };
    }
    let mut alerts = Vec::new();
    match after_check(&ctx, &results, run_id, &mut alerts).await {
        Ok(()) => {}
        Err(e) => {
            tracing::error!("alerting after run {}: {e:#}", run_id.unwrap_or(0));
            summary.push_str(&format!("; alerting failed: {e:#}"));
        }
    }
    RoundReport {
        run_id,
        status,
        summary,
        alerts,
    }
}

/// A quick check of every case (`quick_schedule`). It is never a verdict: nothing alerts on it.
/// The cases it cannot clear (a stage differs, no stage data, the replay failed) get a full
/// check at once, a round like a scheduled one, whose verdicts alert and remediate.
pub async fn quick_round(ctx: Ctx, trigger: &'static str) -> RoundReport {
    let config = ctx.config.clone();
    let opts = CheckOptions {
        against: None,
        trigger,
        cancel: ctx.cancel.clone(),
        ..CheckOptions::manual(&config, Vec::new())
    };
    let quick = tokio::task::spawn_blocking(move || crate::quick::quick_check(&config, &opts))
        .await
        .context("the quick check thread panicked")
        .and_then(|r| r);
    let (follow, line) = match &quick {
        Ok(q) => {
            let follow = crate::quick::follow_up(q);
            let same = q.cases.len() - follow.len();
            (
                follow,
                format!(
                    "quick check: {same} of {} cases same bits (run {})",
                    q.cases.len(),
                    q.run_id
                ),
            )
        }
        Err(e) => {
            // A quick check that cannot run says nothing about the outputs: a full one must.
            tracing::error!("quick check failed: {e:#}");
            (
                ctx.config.cases.iter().map(|c| c.name.clone()).collect(),
                format!("quick check failed: {e:#}"),
            )
        }
    };
    tracing::info!("{line}");
    if follow.is_empty() || ctx.cancel.is_cancelled() {
        return RoundReport {
            run_id: quick.as_ref().ok().map(|q| q.run_id),
            status: CheckStatus::Ok,
            summary: line,
            alerts: Vec::new(),
        };
    }
    tracing::info!("full check of {}", follow.join(", "));
    let mut report = round(ctx, follow, "quick").await;
    report.summary = format!("{line}; then {}", report.summary);
    report
}

/// The check in a blocking thread (it waits on a child process).
async fn run_check(ctx: &Ctx, cases: Vec<String>, trigger: &'static str) -> Result<CheckRun> {
    let config = ctx.config.clone();
    let opts = CheckOptions {
        against: None,
        trigger,
        cancel: ctx.cancel.clone(),
        ..CheckOptions::manual(&config, cases)
    };
    tokio::task::spawn_blocking(move || check(&config, &opts))
        .await
        .context("the check thread panicked")?
}

/// Per case results; a check that failed as a whole (database, storage) makes every case an
/// `error` with its message, so that it alerts like any other failure to check.
fn results_of(config: &Config, cases: &[String], checked: &Result<CheckRun>) -> Vec<CaseCheck> {
    match checked {
        Ok(r) => r.cases.clone(),
        Err(e) => {
            let names: Vec<String> = if cases.is_empty() {
                config.cases.iter().map(|c| c.name.clone()).collect()
            } else {
                cases.to_vec()
            };
            names
                .into_iter()
                .map(|name| CaseCheck {
                    name,
                    verdict: Verdict::Error,
                    baseline_version: None,
                    report: None,
                    error: Some(format!("the check could not run: {e:#}")),
                    artifacts: None,
                    warnings: Vec::new(),
                    duration_s: 0.0,
                    details: None,
                    performance: None,
                    report_page: None,
                })
                .collect()
        }
    }
}

/// "3 cases: 2 identical, 1 drift (run 12)".
pub fn summarize(results: &[CaseCheck], run_id: Option<i64>) -> String {
    let run = run_id.map_or(String::new(), |id| format!(" (run {id})"));
    format!("{}{run}", crate::check::case_counts(results))
}

/// What the alert state machine made of some results.
struct Evaluation {
    /// Cases that fired this round, and cases due a reminder.
    fired: Vec<AlertCase>,
    reminders: Vec<AlertCase>,
    resolved: Vec<AlertCase>,
    /// Cases that newly fired with verdict drift (what remediation acts on), unless escalated.
    drift_to_remedy: Vec<String>,
    /// Cases that became slow this round (their previous check was not).
    slow: Vec<AlertCase>,
}

fn evaluate(
    h: &mut History,
    config: &Config,
    results: &[CaseCheck],
    remind: bool,
) -> Result<Evaluation> {
    let policy = &config.alerts;
    let now = unix_now();
    let now_text = utc_now_rfc3339();
    let mut ev = Evaluation {
        fired: vec![],
        reminders: vec![],
        resolved: vec![],
        drift_to_remedy: vec![],
        slow: vec![],
    };
    let mut states = Vec::new();
    for c in results {
        let mut st = state::load(h, &c.name)?;
        let change = state::step(&mut st, c.verdict, policy, now, &now_text, remind);
        let doc = || compose::alert_case(c, Some(&st));
        match change {
            Change::Fired => {
                if c.verdict == Verdict::Drift && !st.escalated {
                    ev.drift_to_remedy.push(c.name.clone());
                }
                ev.fired.push(doc());
            }
            Change::Reminder => ev.reminders.push(doc()),
            Change::Resolved if policy.send_resolved => ev.resolved.push(doc()),
            _ => {}
        }
        if c.performance.as_ref().is_some_and(|p| p.slow) && !was_slow(h, &c.name)? {
            ev.slow.push(doc());
        }
        states.push(st);
    }
    state::save_all(h, &states)?;
    Ok(ev)
}

/// Whether the check before the newest one (which is this round's, already recorded) was slow:
/// a case alerts when it becomes slow, not every round it stays slow.
fn was_slow(h: &History, case: &str) -> Result<bool> {
    let previous = h.case_trend(case, i64::MAX, 2)?.into_iter().nth(1);
    Ok(previous
        .and_then(|e| e.result.timings)
        .and_then(|t| t.get("slow").and_then(|s| s.as_bool()))
        .unwrap_or(false))
}

/// Alerts for an evaluation, committed to the outbox; returns their ids.
fn commit(
    h: &mut History,
    config: &Config,
    ev: &Evaluation,
    run_id: Option<i64>,
) -> Result<Vec<i64>> {
    let channels = config.alerts.channel_names();
    let mut ids = Vec::new();
    let mut failing = ev.fired.clone();
    failing.extend(ev.reminders.iter().cloned());
    if !failing.is_empty() {
        let kind = if ev.fired.is_empty() {
            AlertKind::Reminder
        } else {
            AlertKind::Firing
        };
        ids.push(outbox::enqueue(
            h,
            &compose::failing(kind, failing, run_id),
            &channels,
        )?);
    }
    if !ev.resolved.is_empty() {
        ids.push(outbox::enqueue(
            h,
            &compose::resolved(ev.resolved.clone(), run_id),
            &channels,
        )?);
    }
    if !ev.slow.is_empty() {
        ids.push(outbox::enqueue(
            h,
            &compose::slow(ev.slow.clone(), run_id),
            &channels,
        )?);
    }
    Ok(ids)
}

async fn after_check(
    ctx: &Ctx,
    results: &[CaseCheck],
    run_id: Option<i64>,
    alerts: &mut Vec<i64>,
) -> Result<()> {
    let config = &ctx.config;
    let mut h = History::open(&config.storage.database)?;
    let ev = evaluate(&mut h, config, results, true)?;
    alerts.extend(commit(&mut h, config, &ev, run_id)?);
    ctx.kick.notify_one();
    if let (Some(rc), false) = (&config.remediation, ev.drift_to_remedy.is_empty()) {
        remediate(
            ctx,
            &mut h,
            rc,
            &ev.drift_to_remedy,
            results,
            run_id,
            alerts,
        )
        .await?;
        ctx.kick.notify_one();
    }
    Ok(())
}

fn action(
    run_id: Option<i64>,
    kind: &str,
    cases: &[String],
    target: Option<String>,
    outcome: &str,
    detail: Option<String>,
    duration_s: Option<f64>,
) -> Action {
    Action {
        run_id,
        at: utc_now_rfc3339(),
        kind: kind.into(),
        cases: cases.to_vec(),
        target,
        outcome: outcome.into(),
        detail,
        duration_s,
    }
}

/// The alert documents of `cases` among `results`.
fn docs_of(results: &[CaseCheck], cases: &[String]) -> Vec<AlertCase> {
    results
        .iter()
        .filter(|c| cases.contains(&c.name))
        .map(|c| compose::alert_case(c, None))
        .collect()
}

fn escalate(
    h: &mut History,
    config: &Config,
    cases: &[String],
    docs: Vec<AlertCase>,
    what: &str,
    outcome: &str,
    run_id: Option<i64>,
) -> Result<i64> {
    let mut states: Vec<CaseState> = Vec::new();
    for c in cases {
        let mut st = state::load(h, c)?;
        st.escalated = true;
        states.push(st);
    }
    state::save_all(h, &states)?;
    tracing::warn!(cases = %cases.join(","), "escalation: {what}: {outcome}");
    let alert = compose::escalation(what, outcome, docs, run_id);
    Ok(outbox::enqueue(h, &alert, &config.alerts.channel_names())?)
}

/// Restart, wait, re-check; escalate when the drift persists (and re-baseline when configured).
async fn remediate(
    ctx: &Ctx,
    h: &mut History,
    rc: &RemediationConfig,
    cases: &[String],
    results: &[CaseCheck],
    run_id: Option<i64>,
    alerts: &mut Vec<i64>,
) -> Result<()> {
    let config = &ctx.config;
    let what = remediate::describe(&rc.restart);
    if let Err(why) = restart_within_budget(h, rc, cases, run_id, &what).await? {
        alerts.push(escalate(
            h,
            config,
            cases,
            docs_of(results, cases),
            &what,
            &why,
            run_id,
        )?);
        return Ok(());
    }
    if !sleep_unless_cancelled(rc.recheck_delay.get(), &ctx.cancel).await {
        return Ok(());
    }
    let rechecked = run_check(ctx, cases.to_vec(), "recheck").await;
    if ctx.cancel.is_cancelled() {
        return Ok(());
    }
    let re_results = results_of(config, cases, &rechecked);
    let re_run = rechecked.as_ref().ok().map(|r| r.run_id);
    // The re-check counts as a round for resolving (a fixed case may resolve at once), never
    // for reminders.
    let ev = evaluate(h, config, &re_results, false)?;
    alerts.extend(commit(
        h,
        config,
        &Evaluation {
            fired: vec![],
            reminders: vec![],
            ..ev
        },
        re_run,
    )?);
    let still: Vec<String> = re_results
        .iter()
        .filter(|c| c.verdict == Verdict::Drift)
        .map(|c| c.name.clone())
        .collect();
    if still.is_empty() {
        record::record_action(
            h,
            &action(
                re_run,
                "recheck",
                cases,
                None,
                "fixed",
                Some(summarize(&re_results, re_run)),
                None,
            ),
        )?;
        tracing::info!(
            "the restart fixed the drift: {}",
            summarize(&re_results, re_run)
        );
        return Ok(());
    }
    record::record_action(
        h,
        &action(
            re_run,
            "recheck",
            &still,
            None,
            "still_drifting",
            Some(summarize(&re_results, re_run)),
            None,
        ),
    )?;
    let outcome = format!(
        "it ran, but the re-check {} later still drifts",
        rc.recheck_delay
    );
    alerts.push(escalate(
        h,
        config,
        &still,
        docs_of(&re_results, cases),
        &what,
        &outcome,
        re_run,
    )?);
    if rc.auto_rebaseline {
        alerts.push(auto_rebaseline(ctx, h, &still, &re_results, re_run).await?);
    }
    Ok(())
}

/// Restarts the service unless the budget is used up, and records the attempt either way.
/// `Ok(Err(why))` when it was not restarted or the restart failed (the escalation's wording).
/// (`&mut`: a shared `&History` is not `Send`, and this future is held across an await.)
async fn restart_within_budget(
    h: &mut History,
    rc: &RemediationConfig,
    cases: &[String],
    run_id: Option<i64>,
    what: &str,
) -> Result<Result<(), String>> {
    let now = unix_now();
    let past = record::restarts_since(h, now - rc.window.as_secs_f64())?;
    let target = Some(what.to_string());
    if !remediate::budget_allows(&past, now, rc.max_restarts, rc.window.get()) {
        let why = format!(
            "not done: the restart budget ({} per {}) is used up",
            rc.max_restarts, rc.window
        );
        let a = action(
            run_id,
            "restart",
            cases,
            target,
            "over_budget",
            Some(why.clone()),
            None,
        );
        record::record_action(h, &a)?;
        return Ok(Err(why));
    }
    tracing::warn!(cases = %cases.join(","), "drift confirmed: running {what}");
    let r = remediate::restart(&rc.restart, rc.timeout.get()).await;
    let a = action(
        run_id,
        "restart",
        cases,
        target,
        r.outcome,
        Some(r.detail.clone()),
        Some(r.duration_s),
    );
    record::record_action(h, &a)?;
    if r.ok {
        Ok(Ok(()))
    } else {
        Ok(Err(format!(
            "the restart {} ({})",
            r.outcome.replace('_', " "),
            r.detail
        )))
    }
}

/// Stores new baselines for `cases` (regenerated, through the normal rebaseline path, so they are
/// written all-or-nothing and recorded) and says so.
async fn auto_rebaseline(
    ctx: &Ctx,
    h: &mut History,
    cases: &[String],
    results: &[CaseCheck],
    run_id: Option<i64>,
) -> Result<i64> {
    let config = ctx.config.clone();
    let names = cases.to_vec();
    let cancel = ctx.cancel.clone();
    let written = tokio::task::spawn_blocking(move || rebaseline_now(&config, &names, &cancel))
        .await
        .context("the rebaseline thread panicked")?;
    match written {
        Ok(versions) => {
            record::record_action(
                h,
                &action(
                    run_id,
                    "auto_rebaseline",
                    cases,
                    None,
                    "ok",
                    Some(format!("{versions:?}")),
                    None,
                ),
            )?;
            let docs = docs_of(results, cases);
            // New baselines: the cases start over.
            let fresh: Vec<CaseState> = cases.iter().map(|c| CaseState::new(c)).collect();
            state::save_all(h, &fresh)?;
            let alert = compose::auto_rebaselined(&versions, docs, run_id);
            Ok(outbox::enqueue(
                h,
                &alert,
                &ctx.config.alerts.channel_names(),
            )?)
        }
        Err(e) => {
            record::record_action(
                h,
                &action(
                    run_id,
                    "auto_rebaseline",
                    cases,
                    None,
                    "failed",
                    Some(format!("{e:#}")),
                    None,
                ),
            )?;
            Err(e.context("automatic rebaseline"))
        }
    }
}

/// Sleeps `d`; false when `cancel` was set meanwhile.
pub async fn sleep_unless_cancelled(d: Duration, cancel: &Cancel) -> bool {
    let end = tokio::time::Instant::now() + d;
    while tokio::time::Instant::now() < end {
        if cancel.is_cancelled() {
            return false;
        }
        tokio::time::sleep_until(end.min(tokio::time::Instant::now() + Duration::from_millis(200)))
            .await;
    }
    !cancel.is_cancelled()
}

/// The reason recorded with an automatic baseline.
pub const AUTO_REASON: &str = "automatic: drift persisted after restart";

/// `monitor rebaseline --case ... --reason AUTO_REASON`, without questions: regenerate, refuse
/// outputs that cannot be baselines, write all or nothing.
fn rebaseline_now(
    config: &Config,
    names: &[String],
    cancel: &Cancel,
) -> Result<Vec<(String, u32)>> {
    use crate::rebaseline::{accept, propose, RunRecord};
    let cases = crate::check::select_cases(config, names)?;
    let environment = crate::fingerprint::collect();
    let mut record = RunRecord::begin(config, &environment)?;
    let work = crate::worker::work_dir("rebaseline")?;
    if cancel.is_cancelled() {
        record.fail("stopped by shutdown");
        anyhow::bail!("stopped by shutdown");
    }
    let timeout = Duration::from_secs_f64(config.worker.timeout_s);
    let proposals = match propose(config, &cases, &environment, work.path(), timeout) {
        Ok(p) => p,
        Err(e) => {
            record.fail(&format!("{e:#}"));
            return Err(e);
        }
    };
    if let Some(p) = proposals.iter().find(|p| p.error.is_some()) {
        let why = format!("case {}: {}", p.name, p.error.as_deref().unwrap_or(""));
        record.fail(&why);
        anyhow::bail!(why);
    }
    accept(
        config,
        &proposals,
        &mut record,
        "monitor (automatic)",
        AUTO_REASON,
    )
}
