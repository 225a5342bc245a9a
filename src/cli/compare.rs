//! `monitor compare A B [C ...]`: hosts side by side, A the reference.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use crate::compare::Thresholds;
use crate::config::Config;
use crate::host_compare::{compare_hosts, HostComparison};
use crate::snapshot::Snapshot;

/// Flags of `monitor compare`.
#[derive(Debug, Args)]
pub struct CompareArgs {
    /// Snapshots (tar or folder) or baseline stores; the first is the reference.
    #[arg(value_name = "SNAPSHOT", num_args = 2.., required = true)]
    inputs: Vec<PathBuf>,
    /// Take thresholds (global and per case) from this config file (its model need not exist
    /// here); default: latent max|Δ| 1e-3, cosine 0.9999, SSIM 0.99.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print the full result as JSON on stdout.
    #[arg(long)]
    json: bool,
}

/// Runs the command: 0 every host identical or within tolerance, 1 drift, 2 error or missing.
pub fn run(a: CompareArgs) -> Result<u8> {
    let config = match &a.config {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            Some(Config::parse(&text, p)?)
        }
        None => None,
    };
    let mut snapshots = Vec::new();
    for p in &a.inputs {
        snapshots.push(Snapshot::open(p)?);
    }
    let thresholds = |case: &str| -> Thresholds {
        match &config {
            Some(c) => match c.cases.iter().find(|k| k.name == case) {
                Some(k) => k.thresholds(&c.thresholds),
                None => c.thresholds,
            },
            None => Thresholds::default(),
        }
    };
    let result = compare_hosts(&snapshots, &thresholds);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        print_matrix(&result);
    }
    Ok(super::exit_code(result.status))
}

/// "16eba012813c within_tolerance |Δ| 2.1e-4 SSIM 0.99998".
fn cell_text(c: &crate::host_compare::Cell) -> String {
    let mut text = c.latents_sha256.clone().unwrap_or_else(|| "-".into());
    if c.status != "reference" {
        text.push(' ');
        text.push_str(&c.status);
    }
    if let Some(m) = c.latent_max_abs.filter(|&m| m > 0.0) {
        text.push_str(&format!(" |Δ| {m:.1e}"));
    }
    match c.ssim {
        Some(s) if s < 0.9999 => text.push_str(&format!(" SSIM {s:.4}")),
        Some(s) if s < 1.0 => text.push_str(&format!(" 1-SSIM {:.0e}", 1.0 - s)),
        _ => {}
    }
    text
}

fn print_matrix(r: &HostComparison) {
    for h in &r.hosts {
        let role = if h.column == "A" { " (reference)" } else { "" };
        println!(
            "{}  {}{role}: {} — {}",
            h.column, h.name, h.describe, h.source
        );
    }
    println!();
    let texts: Vec<Vec<String>> = r
        .rows
        .iter()
        .map(|row| row.cells.iter().map(cell_text).collect())
        .collect();
    let widths: Vec<usize> = (0..r.hosts.len())
        .map(|i| {
            texts
                .iter()
                .map(|t| t[i].chars().count())
                .chain([1])
                .max()
                .unwrap_or(1)
        })
        .collect();
    let case_w = r
        .rows
        .iter()
        .map(|x| x.case.len())
        .chain([4])
        .max()
        .unwrap_or(4);
    let mut header = format!("{:<case_w$}", "case");
    for (h, w) in r.hosts.iter().zip(&widths) {
        header.push_str(&format!("  {:<w$}", h.column));
    }
    println!("{}", header.trim_end());
    for (row, cells) in r.rows.iter().zip(&texts) {
        let mut line = format!("{:<case_w$}", row.case);
        for (text, w) in cells.iter().zip(&widths) {
            line.push_str(&format!("  {text:<w$}"));
        }
        println!("{}", line.trim_end());
        for (h, c) in r.hosts.iter().zip(&row.cells) {
            if let Some(e) = &c.error {
                println!("    {}: {e}", h.column);
            } else if let Some(stage) = &c.diverged_at {
                println!("    {}: first differs at {stage}", h.column);
            }
        }
    }
    println!();
    for ex in &r.explanations {
        let total = r.rows.len();
        if ex.differing_cases.is_empty() {
            println!(
                "{} vs A: identical in {total} of {total} cases{}",
                ex.column,
                if ex.differences.is_empty() {
                    String::new()
                } else {
                    format!(" (despite: {})", ex.differences.join(", "))
                }
            );
            continue;
        }
        println!(
            "{} vs A: {} of {total} cases differ ({})",
            ex.column,
            ex.differing_cases.len(),
            ex.differing_cases.join(", ")
        );
        if ex.differences.is_empty() {
            println!("    no recorded setting or host fact differs (same ONNX Runtime, settings, hardware as recorded): suspect what is not recorded");
        }
        for d in &ex.differences {
            println!("    {d}");
        }
    }
}
