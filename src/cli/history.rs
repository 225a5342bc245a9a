//! `monitor history`: the newest results, as a table or JSON.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::history::{History, HistoryEntry};

/// Flags of `monitor history` (names are stable: scripts call them).
#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// Only this case.
    #[arg(long, value_name = "NAME")]
    case: Option<String>,
    /// At most this many results, newest first.
    #[arg(long, default_value_t = 20, value_name = "N")]
    limit: usize,
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
    let history = History::open_existing(&database)?;
    let entries = history.recent(a.case.as_deref(), a.limit)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&entries)?);
    } else if entries.is_empty() {
        match &a.case {
            Some(c) => println!("no results for case {c} in {}", database.display()),
            None => println!("no results in {}", database.display()),
        }
    } else {
        print!("{}", table(&entries));
    }
    Ok(0)
}

/// The human table: time, case, verdict, latent max |Δ|, SSIM, baseline version.
pub fn table(entries: &[HistoryEntry]) -> String {
    let header = [
        "time",
        "case",
        "verdict",
        "latent max|Δ|",
        "SSIM",
        "baseline",
    ];
    let rows: Vec<[String; 6]> = entries
        .iter()
        .map(|e| {
            let r = &e.result;
            [
                e.created_at.clone(),
                r.case_name.clone(),
                r.verdict.clone(),
                r.latent_max_abs.map_or("-".into(), |v| {
                    if v == 0.0 {
                        "0".into()
                    } else {
                        format!("{v:.3e}")
                    }
                }),
                r.ssim.map_or("-".into(), |v| format!("{v:.6}")),
                r.baseline_version.map_or("-".into(), |v| format!("v{v}")),
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
    for row in &rows {
        out.push_str(&line(row));
    }
    out
}
