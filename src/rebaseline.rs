//! Accepting new baselines deliberately: regenerate, show what would change, write new versions
//! (old ones are kept), or restore an old version as the newest.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::json;

use crate::baseline::read_generation;
use crate::baseline::{BaselineStore, NewBaseline};
use crate::check::{compare_with, run_worker};
use crate::compare::{CompareReport, Verdict};
use crate::config::{Case, Config};
use crate::fingerprint::Environment;
use crate::history::{CaseResult, History, NewRun};
use crate::worker::Outcome;

/// A regenerated case, ready to be accepted.
pub struct Proposal {
    /// Case name.
    pub name: String,
    /// The worker's output folder for the case (absent when it failed).
    pub dir: Option<PathBuf>,
    /// The current baseline version, if any.
    pub previous: Option<u32>,
    /// The new output compared with the current baseline (absent without one).
    pub report: Option<CompareReport>,
    /// Why the case could not be regenerated or compared.
    pub error: Option<String>,
}

/// Runs `cases` in a worker (outputs under `work`) and compares each with its current baseline.
pub fn propose(
    config: &Config,
    cases: &[&Case],
    environment: &Environment,
    work: &Path,
    timeout: Duration,
) -> Result<Vec<Proposal>> {
    let store = BaselineStore::new(&config.storage.baselines);
    let run = run_worker(config, cases, environment, work, timeout)?;
    let mut out = Vec::new();
    for (case, (name, outcome)) in cases.iter().zip(&run.outcomes) {
        let mut p = Proposal {
            name: name.clone(),
            dir: None,
            previous: None,
            report: None,
            error: None,
        };
        match outcome {
            Outcome::Failed(e) => p.error = Some(e.clone()),
            Outcome::Done { dir, .. } => {
                p.dir = Some(dir.clone());
                match (store.current(&case.name), read_generation(dir)) {
                    (Ok(Some(base)), Ok(files)) => {
                        p.previous = Some(base.version);
                        let thresholds = case.thresholds(&config.thresholds);
                        p.report = Some(compare_with(&files, &base, &thresholds).0);
                    }
                    (Ok(None), Ok(_)) => {}
                    (Err(e), _) => {
                        p.error = Some(format!("current baseline of {}: {e}", case.name))
                    }
                    (_, Err(e)) => p.error = Some(format!("{e:#}")),
                }
            }
        }
        out.push(p);
    }
    Ok(out)
}

/// Who is accepting: `$SUDO_USER`, else `$USER`, else `$LOGNAME`, else the uid, at this host.
pub fn who() -> String {
    let user = ["SUDO_USER", "USER", "LOGNAME"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
        // SAFETY: getuid has no preconditions and cannot fail.
        .unwrap_or_else(|| format!("uid {}", unsafe { libc::getuid() }));
    match crate::fingerprint::hostname() {
        Some(host) => format!("{user}@{host}"),
        None => user,
    }
}

/// Writes every proposal as a new version and records a `rebaseline` run. All proposals must be
/// free of errors (checked by the caller); returns (case, new version) pairs.
pub fn accept(
    config: &Config,
    proposals: &[Proposal],
    environment: &Environment,
    who: &str,
    why: &str,
) -> Result<Vec<(String, u32)>> {
    let store = BaselineStore::new(&config.storage.baselines);
    let mut history = History::open(&config.storage.database)?;
    let run_id = history.begin_run(&NewRun {
        model_path: Some(config.model.path.display().to_string()),
        environment: Some(serde_json::to_value(environment)?),
        ..NewRun::now("rebaseline")
    })?;
    let start = std::time::Instant::now();
    let mut written = Vec::new();
    let mut rows = Vec::new();
    for p in proposals {
        let dir = p
            .dir
            .as_deref()
            .with_context(|| format!("case {} has no output to accept", p.name))?;
        let files = read_generation(dir)?;
        let version = store.write(
            &p.name,
            &NewBaseline {
                latents: &files.latents,
                shape: &files.shape,
                image: &files.image,
                metadata: files.metadata.clone(),
                who: who.to_string(),
                why: why.to_string(),
                restored_from: None,
            },
        )?;
        rows.push(CaseResult {
            case_name: p.name.clone(),
            // The verdict of the accepted output against the baseline it replaces.
            verdict: p
                .report
                .as_ref()
                .map_or("new".to_string(), |r| r.classification.verdict.to_string()),
            baseline_version: Some(i64::from(version)),
            latents_sha256: Some(crate::compare::latent_sha256(&files.latents)),
            reasons: Some(json!({"reason": why, "who": who, "replaces": p.previous})),
            ..CaseResult::default()
        });
        written.push((p.name.clone(), version));
    }
    history.record_results(run_id, &rows)?;
    history.finish_run(run_id, 0, start.elapsed().as_secs_f64())?;
    Ok(written)
}

/// Short text for what accepting a proposal changes.
pub fn describe(p: &Proposal) -> String {
    if let Some(e) = &p.error {
        return format!("error: {e}");
    }
    match (&p.previous, &p.report) {
        (None, _) => "new case: first baseline".to_string(),
        (Some(v), Some(r)) => {
            let verdict = r.classification.verdict;
            let mut s = format!("v{v} → v{}: {verdict}", v + 1);
            if verdict != Verdict::Identical {
                if let Some(l) = &r.latents {
                    s.push_str(&format!(
                        " (latent max|Δ| {:.2e}, cosine {:.6}",
                        l.max_abs, l.cosine
                    ));
                    if let Some(i) = &r.image {
                        s.push_str(&format!(", SSIM {:.4}", i.ssim));
                    }
                    s.push(')');
                }
            }
            for m in &r.classification.model_changes {
                s.push_str(&format!("; model file {} changed", m.file));
            }
            for d in &r.env_differences {
                s.push_str(&format!("; {} changed", d.key));
            }
            s
        }
        (Some(v), None) => format!("replaces v{v}"),
    }
}
