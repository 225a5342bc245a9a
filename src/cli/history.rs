//! `monitor history`: the newest results, as a table or JSON.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use serde::Serialize;

use crate::history::{History, HistoryEntry, RunInfo};

/// Flags of `monitor history` (names are stable: scripts call them).
#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// Only this case.
    #[arg(long, value_name = "NAME")]
    case: Option<String>,
    /// At most this many results, newest first (at least 1).
    #[arg(long, default_value_t = 20, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    limit: u64,
    /// Print a JSON array instead of a table.
    #[arg(long)]
    json: bool,
    /// History database (default: the config's `storage.database`).
    #[arg(long, value_name = "FILE")]
    database: Option<PathBuf>,
    #[command(flatten)]
    config: super::config::ConfigFileArg,
}

/// Runs the command.
pub fn run(a: HistoryArgs) -> Result<u8> {
    let database = match &a.database {
        Some(d) => d.clone(),
        None => {
            crate::config::Config::load(&a.config.path())?
                .storage
                .database
        }
    };
    let limit = usize::try_from(a.limit).unwrap_or(usize::MAX);
    let history = History::open_existing(&database)?;
    let results = history.recent(a.case.as_deref(), limit)?;
    // Runs that recorded nothing (failed, interrupted) would be invisible in a list of results;
    // they belong to no case, so they show only in the unfiltered list.
    let runs = if a.case.is_none() {
        history.runs_without_results(limit)?
    } else {
        Vec::new()
    };
    let rows = merge(results, runs, limit);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else if rows.is_empty() {
        match &a.case {
            Some(c) => println!("no results for case {c} in {}", database.display()),
            None => println!("no results in {}", database.display()),
        }
    } else {
        print!("{}", table(&rows));
    }
    Ok(0)
}

/// One line of `monitor history`: a case's result, or a run that recorded none.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Row {
    /// A case result with its run.
    Result(Box<HistoryEntry>),
    /// A run without results, with `verdict` set to its status.
    Run(Box<RunRow>),
}

/// A run without results, shaped like a result row (`case_name` null).
#[derive(Debug, Serialize)]
pub struct RunRow {
    run_id: i64,
    run_kind: String,
    run_started_at: String,
    run_finished_at: Option<String>,
    run_exit_code: Option<i64>,
    run_status: String,
    run_error: Option<String>,
    created_at: String,
    case_name: Option<String>,
    verdict: String,
}

impl Row {
    fn time(&self) -> &str {
        match self {
            Row::Result(e) => &e.created_at,
            Row::Run(r) => &r.created_at,
        }
    }
}

/// Results and result-less runs, newest first, at most `limit`.
fn merge(results: Vec<HistoryEntry>, runs: Vec<RunInfo>, limit: usize) -> Vec<Row> {
    let mut rows: Vec<Row> = results
        .into_iter()
        .map(|e| Row::Result(Box::new(e)))
        .collect();
    rows.extend(runs.into_iter().map(|r| {
        Row::Run(Box::new(RunRow {
            run_id: r.id,
            created_at: r
                .finished_at
                .clone()
                .unwrap_or_else(|| r.started_at.clone()),
            run_kind: r.kind,
            run_started_at: r.started_at,
            run_finished_at: r.finished_at,
            run_exit_code: r.exit_code,
            verdict: r.status.clone(),
            run_status: r.status,
            run_error: r.error,
            case_name: None,
        }))
    }));
    // Stable: results keep their insertion order among equal timestamps.
    rows.sort_by(|a, b| b.time().cmp(a.time()));
    rows.truncate(limit);
    rows
}

/// The human table: time, case, verdict, latent max |Δ|, SSIM, baseline version, generation
/// time, median UNet step, peak memory (a run without results shows `-` as its case, its status
/// as verdict, and its error as a line below).
pub fn table(entries: &[Row]) -> String {
    let header = [
        "time",
        "case",
        "verdict",
        "latent max|Δ|",
        "SSIM",
        "baseline",
        "gen s",
        "UNet step",
        "peak mem",
    ];
    let rows: Vec<[String; 9]> = entries
        .iter()
        .map(|row| {
            let e = match row {
                Row::Result(e) => e,
                Row::Run(r) => {
                    return [
                        r.created_at.clone(),
                        format!("- ({} run {})", r.run_kind, r.run_id),
                        r.verdict.clone(),
                        "-".into(),
                        "-".into(),
                        "-".into(),
                        "-".into(),
                        "-".into(),
                        "-".into(),
                    ];
                }
            };
            let perf: Option<crate::performance::Performance> = e
                .result
                .timings
                .as_ref()
                .and_then(|t| serde_json::from_value(t.clone()).ok());
            let perf = perf.unwrap_or_default();
            let r = &e.result;
            // A determinism test's verdict says whether the host agreed with itself.
            let verdict = match (e.run_kind.as_str(), r.verdict) {
                ("verify", crate::compare::Verdict::Identical) => "deterministic (verify)".into(),
                ("verify", crate::compare::Verdict::Drift) => "NOT deterministic (verify)".into(),
                ("verify", v) => format!("{v} (verify)"),
                // A quick check is no verdict: it says whether every network gave the same bits.
                ("quick", crate::compare::Verdict::Identical) => "same bits (quick)".into(),
                ("quick", crate::compare::Verdict::Drift) => "differs (quick)".into(),
                ("quick", _) => "cannot judge (quick)".into(),
                (_, v) if perf.slow => format!("{v} (slow)"),
                (_, v) => v.to_string(),
            };
            [
                e.created_at.clone(),
                r.case_name.clone(),
                verdict,
                r.latent_max_abs.map_or("-".into(), |v| {
                    if v == 0.0 {
                        "0".into()
                    } else {
                        format!("{v:.3e}")
                    }
                }),
                r.ssim.map_or("-".into(), |v| format!("{v:.6}")),
                r.baseline_version.map_or("-".into(), |v| format!("v{v}")),
                perf.generation_s.map_or("-".into(), |v| format!("{v:.2}")),
                perf.unet_step_median_s
                    .map_or("-".into(), |v| format!("{:.1} ms", v * 1e3)),
                memory(perf.gpu_memory_bytes, perf.peak_rss_bytes),
            ]
        })
        .collect();
    let mut widths = header.map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| -> String {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            let pad = w - cell.chars().count();
            // Text left-aligned, numbers right-aligned.
            if i >= 3 {
                s.push_str(&" ".repeat(pad));
                s.push_str(cell);
            } else {
                s.push_str(cell);
                if i + 1 < cells.len() {
                    s.push_str(&" ".repeat(pad));
                }
            }
            if i + 1 < cells.len() {
                s.push_str("  ");
            }
        }
        s.push('\n');
        s
    };
    let mut out = line(&header.map(String::from));
    for (row, entry) in rows.iter().zip(entries) {
        out.push_str(&line(row));
        match entry {
            Row::Run(r) => {
                if let Some(err) = &r.run_error {
                    out.push_str(&format!("    {}\n", one_line(err, 160)));
                }
            }
            Row::Result(e) => {
                let line = e
                    .result
                    .reasons
                    .as_ref()
                    .and_then(crate::stage_data::diverged_line_of);
                if let Some(l) = line {
                    out.push_str(&format!("    {}\n", one_line(&l, 200)));
                }
            }
        }
    }
    out
}

/// "GPU 3.2 GiB" when the driver reported the worker's GPU memory, else "RSS 812 MiB".
fn memory(gpu: Option<u64>, rss: Option<u64>) -> String {
    let size = crate::resources::human_bytes;
    match (gpu, rss) {
        (Some(g), _) => format!("GPU {}", size(g)),
        (None, Some(r)) => format!("RSS {}", size(r)),
        (None, None) => "-".into(),
    }
}

/// `s` on one line, cut to `max` characters.
fn one_line(s: &str, max: usize) -> String {
    let flat: String = s.chars().map(|c| if c == '\n' { ' ' } else { c }).collect();
    match flat.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &flat[..i]),
        None => flat,
    }
}
