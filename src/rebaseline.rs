//! Accepting new baselines deliberately: regenerate, show what would change, write new versions
//! (old ones are kept), or restore an old version as the newest.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::json;

use crate::baseline::{BaselineStore, NewBaseline};
use crate::check::{compare_with, run_worker};
use crate::compare::{CompareReport, Verdict};
use crate::config::{Case, Config};
use crate::fingerprint::Environment;
use crate::generation::{self, GenerationFiles};
use crate::history::{CaseResult, History, NewRun};
use crate::worker::{Cancel, Outcome};

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
    /// Why the case could not be regenerated (or its output cannot be a baseline).
    pub error: Option<String>,
    /// Something the operator should know that does not block accepting it (e.g. the current
    /// baseline is damaged, so there is nothing to compare with).
    pub note: Option<String>,
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
    let run = run_worker(config, cases, environment, work, timeout, &Cancel::new())?;
    let mut out = Vec::new();
    for (case, (name, outcome)) in cases.iter().zip(&run.outcomes) {
        let mut p = Proposal {
            name: name.clone(),
            dir: None,
            previous: None,
            report: None,
            error: None,
            note: None,
        };
        match outcome {
            Outcome::Failed(e) => p.error = Some(e.clone()),
            Outcome::Done { dir, .. } => {
                p.dir = Some(dir.clone());
                let files = match generation::read(dir) {
                    Ok(f) => f,
                    Err(e) => {
                        p.error = Some(format!("{e:#}"));
                        out.push(p);
                        continue;
                    }
                };
                let non_finite = files
                    .latents
                    .iter()
                    .flat_map(|l| &l.values)
                    .filter(|v| !v.is_finite())
                    .count();
                if non_finite > 0 {
                    p.error = Some(format!(
                        "the generated latents contain {non_finite} NaN/inf values; refusing to accept them as a baseline (check the model and its scheduler config)"
                    ));
                    out.push(p);
                    continue;
                }
                compare_with_current(&store, config, case, &files, &mut p);
            }
        }
        out.push(p);
    }
    Ok(out)
}

/// Fills in what accepting `files` would change against the case's current baseline. A current
/// baseline that is damaged cannot be compared with, but replacing it is what a rebaseline is
/// for, so that is a note, not an error; only a store that cannot be written is an error.
fn compare_with_current(
    store: &BaselineStore,
    config: &Config,
    case: &Case,
    files: &GenerationFiles,
    p: &mut Proposal,
) {
    let latest = match store.latest_version(&case.name) {
        Ok(v) => v,
        Err(e) => {
            p.error = Some(format!("baselines of {}: {e}", case.name));
            return;
        }
    };
    let Some(latest) = latest else {
        return;
    };
    p.previous = Some(latest);
    let damaged = match store.load(&case.name, latest) {
        Ok(base) => match crate::metadata::check_baseline(&base, &case.name) {
            Ok(()) => {
                let thresholds = case.thresholds(&config.thresholds);
                p.report = Some(compare_with(files, &base, &thresholds).0);
                return;
            }
            Err(e) => e,
        },
        Err(e) => e.to_string(),
    };
    p.note = Some(format!(
        "current baseline v{latest} cannot be compared ({damaged}); the new version replaces it"
    ));
}

/// Who is accepting: `$SUDO_USER`, else `$USER`, else `$LOGNAME`, else the uid, at this host.
pub fn who() -> String {
    let user = ["SUDO_USER", "USER", "LOGNAME"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
        .unwrap_or_else(fallback_user);
    match crate::fingerprint::hostname() {
        Some(host) => format!("{user}@{host}"),
        None => user,
    }
}

/// The user when no variable names one: the uid on Unix, `%USERNAME%` on Windows.
fn fallback_user() -> String {
    // SAFETY: getuid has no preconditions and cannot fail.
    #[cfg(unix)]
    return format!("uid {}", unsafe { libc::getuid() });
    #[cfg(not(unix))]
    std::env::var("USERNAME")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "unknown user".to_string())
}

/// A rebaseline's row in the history, opened before any work so that a locked or foreign
/// database fails first, and closed however the rebaseline ends.
pub struct RunRecord {
    history: History,
    run_id: i64,
    start: std::time::Instant,
}

impl RunRecord {
    /// Opens the history, closes runs left by dead processes, and records the start of a run.
    pub fn begin(config: &Config, environment: &Environment) -> Result<RunRecord> {
        let mut history = History::open(&config.storage.database)?;
        history.close_interrupted()?;
        let run_id = history.begin_run(&NewRun {
            model_path: Some(config.model.path.display().to_string()),
            environment: Some(serde_json::to_value(environment)?),
            ..NewRun::now("rebaseline")
        })?;
        Ok(RunRecord {
            history,
            run_id,
            start: std::time::Instant::now(),
        })
    }

    /// Records that the rebaseline ended without writing anything, and why (best effort: the
    /// caller reports the reason itself).
    pub fn fail(&mut self, why: &str) {
        let _ = self
            .history
            .fail_run(self.run_id, why, self.start.elapsed().as_secs_f64());
    }
}

/// Writes every proposal as a new version, all or nothing, and records the outcome in `record`
/// (the written versions, or the error). All proposals must be free of errors (checked by the
/// caller); returns (case, new version) pairs.
pub fn accept(
    config: &Config,
    proposals: &[Proposal],
    record: &mut RunRecord,
    who: &str,
    why: &str,
) -> Result<Vec<(String, u32)>> {
    let store = BaselineStore::new(&config.storage.baselines);
    let written = match write_all(&store, proposals, who, why) {
        Ok(w) => w,
        Err(e) => {
            record.fail(&format!("{e:#}"));
            return Err(e);
        }
    };
    let rows: Vec<CaseResult> = written
        .iter()
        .map(|(name, version, latents_sha256)| {
            let p = proposals.iter().find(|p| &p.name == name);
            // The verdict of the accepted output against the baseline it replaces.
            let verdict = p
                .and_then(|p| p.report.as_ref())
                .map_or(Verdict::New, |r| r.classification.verdict);
            CaseResult {
                baseline_version: Some(i64::from(*version)),
                latents_sha256: latents_sha256.clone(),
                reasons: Some(
                    json!({"reason": why, "who": who, "replaces": p.and_then(|p| p.previous)}),
                ),
                ..CaseResult::new(name.clone(), verdict)
            }
        })
        .collect();
    let elapsed = record.start.elapsed().as_secs_f64();
    let recorded = record
        .history
        .record_results(record.run_id, &rows)
        .and_then(|()| record.history.finish_run(record.run_id, 0, elapsed));
    if let Err(e) = recorded {
        let list: Vec<String> = written
            .iter()
            .map(|(c, v, _)| format!("{c} v{v}"))
            .collect();
        return Err(anyhow::Error::new(e).context(format!(
            "new baselines written ({}), but the rebaseline was not recorded in the history",
            list.join(", ")
        )));
    }
    Ok(written.into_iter().map(|(c, v, _)| (c, v)).collect())
}

/// Reads every proposal's output and writes them as one batch.
fn write_all(
    store: &BaselineStore,
    proposals: &[Proposal],
    who: &str,
    why: &str,
) -> Result<Vec<(String, u32, Option<String>)>> {
    let mut outputs = Vec::new();
    for p in proposals {
        let dir = p
            .dir
            .as_deref()
            .with_context(|| format!("case {} has no output to accept", p.name))?;
        outputs.push((p.name.as_str(), generation::read(dir)?));
    }
    let batch: Vec<(&str, NewBaseline<'_>)> = outputs
        .iter()
        .map(|(name, files)| {
            (
                *name,
                NewBaseline {
                    latents: files.latents.as_ref(),
                    image: &files.image,
                    metadata: files.metadata.clone(),
                    stages: files.stages.as_ref(),
                    who: who.to_string(),
                    why: why.to_string(),
                    restored_from: None,
                },
            )
        })
        .collect();
    let written = store.write_batch(&batch)?;
    Ok(written
        .into_iter()
        .zip(&outputs)
        .map(|((name, version), (_, files))| {
            let sha = files
                .latents
                .as_ref()
                .map(|l| crate::compare::latent_sha256(&l.values));
            (name, version, sha)
        })
        .collect())
}

/// Short text for what accepting a proposal changes.
pub fn describe(p: &Proposal) -> String {
    if let Some(e) = &p.error {
        return format!("error: {e}");
    }
    if let Some(n) = &p.note {
        return n.clone();
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
                } else if let Some(i) = &r.image {
                    // An image-only (service) result.
                    s.push_str(&format!(
                        " (SSIM {:.4}, PSNR {:.1} dB, {} pixels differ)",
                        i.ssim, i.psnr_db, i.pixels_differing
                    ));
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
