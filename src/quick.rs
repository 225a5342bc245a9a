//! `monitor check --quick`: each network once instead of a whole generation. The tokenizer and
//! text encoder run on the case's prompts, the noise source draws its initial latents, the UNet
//! makes its first call (and the scheduler its first step), and the VAE decodes the baseline's
//! own final latents; every stage's sha256 is compared with the same stage of the baseline.
//! Equal hashes mean each network computed the same bits on the same inputs; the first unequal
//! one names the network that changed. A quick result is never a verdict: a difference sends
//! the case to a full check, whose verdict is the one that counts.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::json;

use crate::baseline::BaselineStore;
use crate::check::{parameter_difference, pipeline_cases, CheckOptions};
use crate::compare::{self, Verdict};
use crate::config::Config;
use crate::generation;
use crate::history::CaseResult;
use crate::worker::{Job, Outcome};

/// What the quick check found for one case.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum QuickOutcome {
    /// Every replayed stage equals the baseline's, bit for bit.
    Same,
    /// This stage (or the model files) differs from the baseline's.
    Differs {
        /// The first differing stage, e.g. `text_embeddings` or `model files: unet/weights.pb`.
        stage: String,
    },
    /// The quick check cannot judge this case (no baseline, no stage data in it, other
    /// parameters, the replay failed): a full check must.
    Unknown {
        /// Why.
        reason: String,
    },
}

/// One case of a quick check.
#[derive(Debug, Clone, Serialize)]
pub struct QuickCase {
    /// Case name.
    pub name: String,
    /// The baseline version replayed against.
    pub baseline_version: Option<u32>,
    /// What was found.
    #[serde(flatten)]
    pub outcome: QuickOutcome,
    /// Stages compared.
    pub stages_compared: usize,
    /// Seconds inside ONNX Runtime for this case's replay.
    pub model_s: Option<f64>,
    /// Of the replay: the UNet call, and the VAE decode (at the case's full size), seconds.
    pub unet_s: Option<f64>,
    /// See `unet_s`.
    pub vae_s: Option<f64>,
    /// Environment differences from the baseline (they name a runtime change).
    pub env_differences: Vec<compare::EnvDiff>,
    /// Every differing stage that is a network's own output on the baseline's inputs
    /// (`text_embeddings`, `step 1 noise_pred`, `decoded_tile` — or `decoded` against a baseline
    /// made before the tile; `tokens`, `initial_noise` and
    /// `timesteps` are the tokenizer, the noise source and the scheduler). Where the baseline kept
    /// no stage tensors the UNet ran on recomputed inputs, so only the first one is the cause.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub differing: Vec<String>,
    /// Where it differs: how far apart the replay and the baseline are at the first differing
    /// stage (from the stage tensors both kept).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub divergence: Option<crate::stage_data::Divergence>,
}

impl QuickCase {
    /// Whether a full check must look at this case.
    pub fn needs_full_check(&self) -> bool {
        self.outcome != QuickOutcome::Same
    }
}

/// A finished quick check.
#[derive(Debug, Clone, Serialize)]
pub struct QuickRun {
    /// History row id (run kind `quick`).
    pub run_id: i64,
    /// Per case, in config order.
    pub cases: Vec<QuickCase>,
    /// Seconds of the worker process, start to exit.
    pub worker_s: f64,
    /// Session creation inside the worker.
    pub load_s: Option<f64>,
}

/// Runs a quick check of the selected cases and records it in the history as run kind `quick`
/// (which alerts, metrics and reports never count as a check).
pub fn quick_check(config: &Config, opts: &CheckOptions) -> Result<QuickRun> {
    let start = Instant::now();
    let cases = pipeline_cases(config, &opts.cases, "the quick check")?;
    let (mut history, environment, run_id) =
        crate::check::begin_run(config, "quick", opts.trigger)?;
    let result = run(config, opts, &cases, &environment);
    let (cases, worker) = match result {
        Ok(r) => r,
        Err(e) => {
            let _ = history.fail_run(run_id, &format!("{e:#}"), start.elapsed().as_secs_f64());
            return Err(e);
        }
    };
    let rows: Vec<CaseResult> = cases.iter().map(history_row).collect();
    let code = if cases.iter().all(|c| !c.needs_full_check()) {
        0
    } else {
        1
    };
    history.record_results(run_id, &rows)?;
    history.finish_run(run_id, code, start.elapsed().as_secs_f64())?;
    if let Some(v) = &worker
        .as_ref()
        .and_then(|w| w.report.onnxruntime_version.clone())
    {
        let _ = history.note_runtime(run_id, v);
    }
    Ok(QuickRun {
        run_id,
        cases,
        worker_s: worker.as_ref().map_or(0.0, |w| w.wall_s),
        load_s: worker.as_ref().and_then(|w| w.report.load_s),
    })
}

fn run(
    config: &Config,
    opts: &CheckOptions,
    cases: &[&crate::config::Case],
    environment: &crate::fingerprint::Environment,
) -> Result<(Vec<QuickCase>, Option<crate::worker::WorkerRun>)> {
    let store = BaselineStore::new(&config.storage.baselines);
    let _read = store
        .read_lock()
        .with_context(|| format!("reading baselines in {}", store.root().display()))?;
    let mut out: Vec<QuickCase> = Vec::new();
    let mut baselines = BTreeMap::new();
    let mut replay = BTreeMap::new();
    let mut specs = Vec::new();
    for case in cases {
        let mut q = QuickCase {
            name: case.name.clone(),
            baseline_version: None,
            outcome: QuickOutcome::Same,
            stages_compared: 0,
            model_s: None,
            unet_s: None,
            vae_s: None,
            env_differences: Vec::new(),
            differing: Vec::new(),
            divergence: None,
        };
        let unknown = |reason: String| QuickOutcome::Unknown { reason };
        match store.current(&case.name) {
            Ok(None) => q.outcome = unknown(format!("no baseline for case {}", case.name)),
            Err(e) => q.outcome = unknown(format!("baseline of case {}: {e:#}", case.name)),
            Ok(Some(b)) => {
                q.baseline_version = Some(b.version);
                if b.metadata.stages.is_none() {
                    q.outcome = unknown(format!(
                        "no stage data in baseline v{:04} (made before stage hashes)",
                        b.version
                    ));
                } else if let Some(diff) = parameter_difference(&case.spec(), &b.metadata) {
                    q.outcome = unknown(format!(
                        "case {} no longer matches baseline v{:04}: {diff}",
                        case.name, b.version
                    ));
                } else {
                    replay.insert(case.name.clone(), b.dir.clone());
                    specs.push(case.spec());
                    baselines.insert(case.name.clone(), b);
                }
            }
        }
        out.push(q);
    }
    if specs.is_empty() {
        return Ok((out, None));
    }
    let work = crate::worker::work_dir("check")?;
    let job = Job {
        replay: Some(replay),
        ..crate::check::job(config, specs, config.model.runtime_settings(), environment)
    };
    let worker =
        crate::check::run_job(config, &job, work.path(), opts.worker_timeout, &opts.cancel)?;
    for (name, outcome) in &worker.outcomes {
        let (Some(q), Some(b)) = (
            out.iter_mut().find(|q| &q.name == name),
            baselines.get(name),
        ) else {
            continue;
        };
        let dir = match outcome {
            Outcome::Failed(e) => {
                q.outcome = QuickOutcome::Unknown {
                    reason: format!("replay failed: {e}"),
                };
                continue;
            }
            Outcome::Done { dir, .. } => dir,
        };
        let run = match generation::read(dir) {
            Ok(r) => r,
            Err(e) => {
                q.outcome = QuickOutcome::Unknown {
                    reason: format!("{e:#}"),
                };
                continue;
            }
        };
        let t = run.metadata.timings.clone().unwrap_or_default();
        (q.model_s, q.unet_s, q.vae_s) = (t.ort_run_s, t.unet_s, t.vae_s);
        q.env_differences = compare::metadata_env_differences(&run.metadata, &b.metadata);
        let changes = compare::model_changes(run.metadata.model_files(), b.metadata.model_files());
        let (compared, differing) = crate::sd::pipeline::differing_stages(
            run.metadata.stages.as_deref().unwrap_or_default(),
            b.metadata.stages.as_deref().unwrap_or_default(),
        );
        q.stages_compared = compared;
        let first = differing.first().cloned();
        // Each network got the baseline's inputs: every stage of a network's own output that
        // differs names that network, not only the first. (`step 1 latents` follows from
        // `step 1 noise_pred` and `image` from `decoded`: they add nothing.)
        q.differing = differing
            .into_iter()
            .filter(|s| s != "step 1 latents" && s != "image")
            .collect();
        if let Some(stage) = &first {
            let limit = cases
                .iter()
                .find(|c| &c.name == name)
                .map_or(config.thresholds, |c| c.thresholds(&config.thresholds))
                .latent_max_abs;
            let replayed = crate::stage_data::Side {
                stages: run.stages.as_ref(),
                metadata: &run.metadata,
                latents: run.latents.as_ref().map(|l| l.values.as_slice()),
                image: &run.image,
            };
            let base = crate::stage_data::Side {
                stages: b.stages.as_ref(),
                metadata: &b.metadata,
                latents: b.latents.as_ref().map(|l| l.values.as_slice()),
                image: &b.image,
            };
            q.divergence = Some(crate::stage_data::divergence(
                stage, &replayed, &base, limit,
            ));
        }
        // The stage names the network; a changed model file says why it changed.
        q.outcome = match (first, changes.first()) {
            (Some(stage), Some(c)) => QuickOutcome::Differs {
                stage: format!("{stage} (model file changed: {})", c.file),
            },
            (Some(stage), None) => QuickOutcome::Differs { stage },
            (None, Some(c)) => QuickOutcome::Differs {
                stage: format!("model files: {}", c.file),
            },
            (None, None) => QuickOutcome::Same,
        };
    }
    Ok((out, Some(worker)))
}

/// The history row of a quick result: `identical` when every stage matched, `drift` when one
/// did not, `error` when it could not judge — in a run of kind `quick`, which nothing alerts on.
fn history_row(q: &QuickCase) -> CaseResult {
    let (verdict, detail) = match &q.outcome {
        QuickOutcome::Same => (Verdict::Identical, json!({"outcome": "same"})),
        QuickOutcome::Differs { stage } => (
            Verdict::Drift,
            json!({"outcome": "differs", "stage": stage}),
        ),
        QuickOutcome::Unknown { reason } => (
            Verdict::Error,
            json!({"outcome": "unknown", "reason": reason}),
        ),
    };
    CaseResult {
        baseline_version: q.baseline_version.map(i64::from),
        reasons: match &q.outcome {
            QuickOutcome::Differs { stage } => Some(
                json!({"diverged_at": stage, "differing": q.differing, "divergence": q.divergence}),
            ),
            _ => None,
        },
        env_diff: Some(json!(q.env_differences)),
        error: match &q.outcome {
            QuickOutcome::Unknown { reason } => Some(reason.clone()),
            _ => None,
        },
        details: Some(
            json!({"quick": {"stages_compared": q.stages_compared, "model_s": q.model_s, "result": detail}}),
        ),
        ..CaseResult::new(q.name.clone(), verdict)
    }
}

/// The cases a full check must look at after `run`.
pub fn follow_up(run: &QuickRun) -> Vec<String> {
    run.cases
        .iter()
        .filter(|c| c.needs_full_check())
        .map(|c| c.name.clone())
        .collect()
}
