//! `monitor compare`: any number of hosts side by side. The first snapshot is the reference;
//! every other host's case is compared with the reference's as a check compares a run with its
//! baseline (same metrics, thresholds and verdicts), and each host that differs gets the
//! recorded environment differences that explain it.

use serde::Serialize;

use crate::baseline::Baseline;
use crate::check::CheckStatus;
use crate::compare::{self, Thresholds, Verdict};
use crate::generation::Latents;
use crate::snapshot::Snapshot;

/// One host: where it came from and what it is.
#[derive(Debug, Clone, Serialize)]
pub struct HostSummary {
    /// A, B, C, ...
    pub column: String,
    /// The path given.
    pub source: String,
    /// Snapshot label or host name.
    pub name: String,
    /// One line: platform, ONNX Runtime version, execution provider.
    pub describe: String,
}

/// One cell of the matrix: a case on one host.
#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    /// `identical`, `within_tolerance`, `drift`, `model_changed`, `error`, `missing`, or
    /// `reference` for the first host.
    pub status: String,
    /// First 12 hex digits of the latents' sha256.
    pub latents_sha256: Option<String>,
    /// max |Δ latent| against the reference.
    pub latent_max_abs: Option<f64>,
    /// SSIM against the reference.
    pub ssim: Option<f64>,
    /// Why this cell is an error.
    pub error: Option<String>,
    /// The first pipeline stage that differs from the reference.
    pub diverged_at: Option<String>,
}

/// One row: a case on every host.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Case name.
    pub case: String,
    /// One cell per host, in column order.
    pub cells: Vec<Cell>,
}

/// What explains one host's differences from the reference.
#[derive(Debug, Clone, Serialize)]
pub struct HostExplanation {
    /// The host's column.
    pub column: String,
    /// Cases that are not identical to the reference.
    pub differing_cases: Vec<String>,
    /// Recorded facts that differ from the reference ("key: a → b"), over all its cases.
    pub differences: Vec<String>,
}

/// The whole comparison.
#[derive(Debug, Clone, Serialize)]
pub struct HostComparison {
    /// Column A is the reference.
    pub hosts: Vec<HostSummary>,
    /// One row per case, in order of first appearance.
    pub rows: Vec<Row>,
    /// Per non-reference host.
    pub explanations: Vec<HostExplanation>,
    /// Ok / Drift / Error, as `check` would exit.
    pub status: CheckStatus,
}

/// Compares every snapshot with the first. `thresholds(case)` gives each case's thresholds.
pub fn compare_hosts(
    snapshots: &[Snapshot],
    thresholds: &dyn Fn(&str) -> Thresholds,
) -> HostComparison {
    let hosts: Vec<HostSummary> = snapshots
        .iter()
        .enumerate()
        .map(|(i, s)| HostSummary {
            column: column(i),
            source: s.source.display().to_string(),
            name: s.name(),
            describe: describe(s),
        })
        .collect();
    let mut names: Vec<String> = Vec::new();
    for s in snapshots {
        for (n, _) in &s.cases {
            if !names.contains(n) {
                names.push(n.clone());
            }
        }
        for n in s.errors.keys() {
            if !names.contains(n) {
                names.push(n.clone());
            }
        }
    }
    let mut rows = Vec::new();
    let mut explanations: Vec<HostExplanation> = hosts
        .iter()
        .skip(1)
        .map(|h| HostExplanation {
            column: h.column.clone(),
            differing_cases: Vec::new(),
            differences: Vec::new(),
        })
        .collect();
    let mut worst = CheckStatus::Ok;
    for name in &names {
        let reference = snapshots.first().and_then(|s| s.case(name));
        let mut cells = Vec::new();
        for (i, snap) in snapshots.iter().enumerate() {
            let cell = match (i, snap.case(name), reference) {
                (_, None, _) => Cell {
                    status: if snap.errors.contains_key(name) {
                        "error"
                    } else {
                        "missing"
                    }
                    .into(),
                    error: Some(snap.errors.get(name).cloned().unwrap_or_else(|| {
                        format!("case {name} is not in {}", snap.source.display())
                    })),
                    ..empty()
                },
                (0, Some(b), _) => Cell {
                    status: "reference".into(),
                    latents_sha256: Some(short(&Latents::sha256_of(b.latents.as_ref()))),
                    ..empty()
                },
                (_, Some(b), None) => Cell {
                    status: "error".into(),
                    latents_sha256: Some(short(&Latents::sha256_of(b.latents.as_ref()))),
                    error: Some(format!("no reference: case {name} is missing from host A")),
                    ..empty()
                },
                (_, Some(b), Some(r)) => {
                    let (cell, diffs) = compare_case(name, b, r, &thresholds(name));
                    let ex = &mut explanations[i - 1];
                    if cell.status != "identical" {
                        ex.differing_cases.push(name.clone());
                    }
                    for d in diffs {
                        if !ex.differences.contains(&d) {
                            ex.differences.push(d);
                        }
                    }
                    cell
                }
            };
            worst = worse(worst, &cell.status);
            cells.push(cell);
        }
        rows.push(Row {
            case: name.clone(),
            cells,
        });
    }
    HostComparison {
        hosts,
        rows,
        explanations,
        status: worst,
    }
}

fn empty() -> Cell {
    Cell {
        status: String::new(),
        latents_sha256: None,
        latent_max_abs: None,
        ssim: None,
        error: None,
        diverged_at: None,
    }
}

fn column(i: usize) -> String {
    let letters = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    match letters.get(i) {
        Some(&c) => (c as char).to_string(),
        None => format!("H{}", i + 1),
    }
}

fn short(sha: &str) -> String {
    sha.chars().take(12).collect()
}

fn worse(current: CheckStatus, status: &str) -> CheckStatus {
    let s = match status {
        "error" | "missing" => CheckStatus::Error,
        "drift" | "model_changed" => CheckStatus::Drift,
        _ => CheckStatus::Ok,
    };
    match (current, s) {
        (CheckStatus::Error, _) | (_, CheckStatus::Error) => CheckStatus::Error,
        (CheckStatus::Drift, _) | (_, CheckStatus::Drift) => CheckStatus::Drift,
        _ => CheckStatus::Ok,
    }
}

/// "linux x86_64 · ONNX Runtime 1.31.1 · cpu".
fn describe(s: &Snapshot) -> String {
    let meta = s.cases.first().map(|(_, b)| &b.metadata);
    let ort = meta
        .and_then(|m| m.onnxruntime.as_ref())
        .and_then(|o| o.version.clone())
        .unwrap_or_else(|| "?".into());
    let ep = meta
        .and_then(|m| m.execution_provider.as_ref())
        .and_then(|e| e.execution_provider.clone())
        .unwrap_or_else(|| "?".into());
    let gpu = meta
        .and_then(|m| m.environment.as_ref())
        .and_then(|e| e.gpu_name.clone());
    let platform = s
        .info
        .as_ref()
        .map(|i| i.platform.clone())
        .unwrap_or_else(|| "baseline store".into());
    let mut parts = vec![platform, format!("ONNX Runtime {ort}"), ep];
    parts.extend(gpu);
    parts.join(" · ")
}

/// One case on one host against the reference: the cell and the recorded differences.
fn compare_case(
    name: &str,
    host: &Baseline,
    reference: &Baseline,
    thresholds: &Thresholds,
) -> (Cell, Vec<String>) {
    let sha = Some(short(&Latents::sha256_of(host.latents.as_ref())));
    if let Some(diff) = parameter_difference(host, reference) {
        return (
            Cell {
                status: "error".into(),
                latents_sha256: sha,
                error: Some(format!(
                    "case {name} was generated with other parameters than on host A ({diff}); not comparable"
                )),
                ..empty()
            },
            Vec::new(),
        );
    }
    let (a, b) = (host.outputs(), reference.outputs());
    let (report, _) = compare::compare(&a, &b, thresholds);
    let verdict = report.classification.verdict;
    let mut diffs: Vec<String> = report
        .env_differences
        .iter()
        .map(|d| d.describe())
        .collect();
    for m in compare::model_changes(
        host.metadata.model_files(),
        reference.metadata.model_files(),
    ) {
        diffs.push(format!("model file {}", describe_model_change(&m)));
    }
    let cell = Cell {
        status: verdict.as_str().into(),
        latents_sha256: sha,
        latent_max_abs: report.latents.as_ref().map(|l| l.max_abs),
        ssim: report.image.as_ref().map(|i| i.ssim),
        error: (verdict == Verdict::Error)
            .then(|| report.classification.error.clone())
            .flatten(),
        diverged_at: report.diverged_at.clone(),
    };
    (cell, diffs)
}

fn describe_model_change(m: &compare::ModelFileChange) -> String {
    let show = |v: &Option<String>| v.as_deref().map_or("(absent)".to_string(), short);
    format!("{}: {} → {}", m.file, show(&m.baseline), show(&m.run))
}

/// The first generation parameter that differs between two hosts' outputs of a case (`b` the
/// reference), by the same rule as a check against a baseline.
pub fn parameter_difference(a: &Baseline, b: &Baseline) -> Option<String> {
    crate::check::parameters_difference(
        &b.metadata.parameters.clone().unwrap_or_default(),
        &a.metadata.parameters.clone().unwrap_or_default(),
    )
}
