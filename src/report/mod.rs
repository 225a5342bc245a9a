//! The HTML report of a check round: one self-contained folder (`index.html` and the images)
//! that opens from disk with no server and no network, and `reports/index.html` listing the
//! rounds. Built from the history and the outputs `check` keeps for non-identical results, so
//! `monitor report RUN_ID` can rebuild it at any time.
//!
//! Templates are minijinja with HTML auto-escaping: prompts and case names are user text.

mod view;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use minijinja::{context, Environment, Value};
use serde::{Deserialize, Serialize};

use crate::fsutil::atomic_write;
use crate::history::History;

pub use view::{case_view, CaseView, BASELINE_IMAGE};

const ROUND_TEMPLATE: &str = include_str!("round.html");
const INDEX_TEMPLATE: &str = include_str!("index.html");
/// Written beside each round's `index.html`; what the reports index lists.
const SUMMARY_FILE: &str = "summary.json";

/// `report:` settings that shape the pages and the links in alerts.
#[derive(Debug, Clone, Default)]
pub struct ReportSettings {
    /// Where `reports/` is served (e.g. `https://monitor.example/reports`); alerts link there.
    pub base_url: Option<String>,
    /// Results shown in each case's trend.
    pub trend: usize,
}

/// The folder of run `run_id`'s report under `reports`.
pub fn run_dir(reports: &Path, run_id: i64) -> PathBuf {
    reports.join(format!("run-{run_id:06}"))
}

/// Where an alert points for `case` of run `run_id`: the URL under `base_url` when set, else
/// the page's path.
pub fn link(reports: &Path, settings: &ReportSettings, run_id: i64, case: &str) -> String {
    let page = format!("run-{run_id:06}/index.html#case-{case}");
    match &settings.base_url {
        Some(base) => format!("{}/{page}", base.trim_end_matches('/')),
        None => reports.join(page).display().to_string(),
    }
}

/// What `reports/index.html` shows of a round.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RoundSummary {
    run_id: i64,
    /// The round's folder name, `run-NNNNNN`.
    folder: String,
    started_at: String,
    kind: String,
    /// "3 cases: 2 identical, 1 drift".
    counts: String,
    /// The worst verdict, for the row's colour.
    worst: String,
}

/// Writes the report of run `run_id` into `reports/run-NNNNNN/` (the outputs `check` kept for
/// its non-identical cases are already there) and rewrites `reports/index.html`. Returns the
/// round's `index.html`.
pub fn write_round(
    reports: &Path,
    history: &History,
    run_id: i64,
    settings: &ReportSettings,
) -> Result<PathBuf> {
    let dir = run_dir(reports, run_id);
    let (page, summary) = render_round(&dir, history, run_id, settings, true)?;
    let p = dir.join(SUMMARY_FILE);
    atomic_write(&p, &serde_json::to_vec_pretty(&summary)?)
        .with_context(|| format!("writing {}", p.display()))?;
    write_index(reports)?;
    Ok(page)
}

/// Writes the report of run `run_id` as a folder of its own, `out` (which must not exist yet):
/// the page and a copy of the kept outputs, to attach to a ticket or move to another machine.
pub fn export_round(
    reports: &Path,
    history: &History,
    run_id: i64,
    settings: &ReportSettings,
    out: &Path,
) -> Result<PathBuf> {
    if out.exists() {
        anyhow::bail!("{} already exists; name a new folder", out.display());
    }
    // Built beside the target and renamed into place: a failed export leaves nothing behind.
    crate::fsutil::write_dir(out, |tmp| {
        let from = run_dir(reports, run_id);
        for r in history.run_results(run_id)? {
            let src = from.join(&r.result.case_name);
            if src.is_dir() {
                copy_flat(&src, &tmp.join(&r.result.case_name))?;
            }
        }
        render_round(tmp, history, run_id, settings, false).map(|_| ())
    })?;
    Ok(out.join("index.html"))
}

/// Copies the regular files of `from` (a kept case folder has no subfolders) into new `to`.
fn copy_flat(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir(to).with_context(|| format!("creating {}", to.display()))?;
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry.with_context(|| format!("reading {}", from.display()))?;
        if entry.file_type().is_ok_and(|t| t.is_file()) {
            let dest = to.join(entry.file_name());
            std::fs::copy(entry.path(), &dest).with_context(|| {
                format!("copying {} to {}", entry.path().display(), dest.display())
            })?;
        }
    }
    Ok(())
}

/// Renders run `run_id`'s page into `dir/index.html`, with the case outputs found in `dir`.
fn render_round(
    dir: &Path,
    history: &History,
    run_id: i64,
    settings: &ReportSettings,
    in_reports: bool,
) -> Result<(PathBuf, RoundSummary)> {
    let run = history
        .run(run_id)?
        .with_context(|| format!("no run {run_id} in {}", history.path().display()))?;
    let results = history.run_results(run_id)?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut cases = Vec::new();
    for r in &results {
        let trend = history.case_trend(&r.result.case_name, run_id, settings.trend.max(1))?;
        cases.push(case_view(dir, &r.result, &trend));
    }
    let verdicts: Vec<_> = results.iter().map(|r| r.result.verdict).collect();
    let summary = RoundSummary {
        run_id,
        folder: format!("run-{run_id:06}"),
        started_at: run.started_at.clone(),
        kind: run.kind.clone(),
        counts: crate::check::verdict_counts(&verdicts),
        worst: view::worst(&verdicts).to_string(),
    };
    let host = run
        .environment
        .as_ref()
        .and_then(|e| e.get("hostname"))
        .and_then(|h| h.as_str())
        .unwrap_or("?");
    let html = render(
        "round.html",
        ROUND_TEMPLATE,
        context! {
            run => Value::from(minijinja::value::Serde(&run)),
            host,
            in_reports,
            summary => Value::from(minijinja::value::Serde(&summary)),
            cases => Value::from(minijinja::value::Serde(&cases)),
            generated_at => crate::clock::utc_now_rfc3339(),
        },
    )?;
    let page = dir.join("index.html");
    atomic_write(&page, html.as_bytes()).with_context(|| format!("writing {}", page.display()))?;
    Ok((page, summary))
}

/// Rewrites `reports/index.html`: every round with a report, newest first.
pub fn write_index(reports: &Path) -> Result<PathBuf> {
    let mut rounds: Vec<RoundSummary> = run_folders(reports)?
        .into_iter()
        .filter_map(|(_, dir)| {
            // A round whose summary is missing or damaged is left out, not fatal to the index.
            let text = std::fs::read(dir.join(SUMMARY_FILE)).ok()?;
            serde_json::from_slice(&text).ok()
        })
        .collect();
    rounds.sort_by_key(|r| std::cmp::Reverse(r.run_id));
    let html = render(
        "index.html",
        INDEX_TEMPLATE,
        context! {
            rounds => Value::from(minijinja::value::Serde(&rounds)),
            generated_at => crate::clock::utc_now_rfc3339(),
        },
    )?;
    let page = reports.join("index.html");
    atomic_write(&page, html.as_bytes()).with_context(|| format!("writing {}", page.display()))?;
    Ok(page)
}

/// Removes the report folders whose run the history no longer has (retention pruned it), then
/// rewrites the index; returns how many were removed. A missing reports folder is nothing to do.
pub fn prune(reports: &Path, history: &History) -> Result<usize> {
    let folders = run_folders(reports)?;
    if folders.is_empty() {
        return Ok(0);
    }
    let ids: Vec<i64> = folders.iter().map(|(id, _)| *id).collect();
    let keep = history.existing_runs(&ids)?;
    let mut removed = 0;
    for (id, dir) in &folders {
        if !keep.contains(id) {
            std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
            removed += 1;
        }
    }
    if removed > 0 {
        write_index(reports)?;
    }
    Ok(removed)
}

/// The `run-NNNNNN` folders in `reports` with their run ids (nothing else there is touched).
fn run_folders(reports: &Path) -> Result<Vec<(i64, PathBuf)>> {
    let entries = match std::fs::read_dir(reports) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", reports.display())),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("reading {}", reports.display()))?;
        let name = entry.file_name();
        let Some(id) = name
            .to_str()
            .and_then(|n| n.strip_prefix("run-"))
            .filter(|n| n.len() >= 6 && n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|n| n.parse::<i64>().ok())
        else {
            continue;
        };
        // Never follow a symlink out of the reports folder when pruning.
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            out.push((id, entry.path()));
        }
    }
    Ok(out)
}

fn render(name: &'static str, source: &'static str, ctx: Value) -> Result<String> {
    let mut env = Environment::new();
    // Undefined names are template bugs: fail loudly instead of rendering blanks.
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env.add_template(name, source)
        .with_context(|| format!("report template {name}"))?;
    env.get_template(name)
        .and_then(|t| t.render(ctx))
        .with_context(|| format!("rendering report template {name}"))
}
