//! Is this host deterministic at all? The write-up's "same platform, several runs" test: each
//! case runs N times in one worker (sessions reused) and once in each of N-1 fresh workers (new
//! process, new sessions, as the write-up reloads its pipeline between runs). Every run must be
//! bit-identical to the first; where one is not, the spread and the first differing stage say
//! how and where. `rebaseline` uses the same runs to refuse a baseline no host could reproduce.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde::Serialize;
use serde_json::json;

use crate::case::CaseSpec;
use crate::check::{pipeline_cases, run_specs, CheckStatus};
use crate::compare::Verdict;
use crate::config::{Case, Config, Target};
use crate::fingerprint::Environment;
use crate::generation::{self, GenerationFiles};
use crate::history::CaseResult;
use crate::sd::pipeline::first_difference;
use crate::sd::runtime::{ConvAlgoSearch, ExecutionProvider, RuntimeSettings};
use crate::worker::{Cancel, Outcome};

/// Test hook: the graph optimization level of fresh workers (2..N) only. No setting makes ONNX
/// Runtime's CPU kernels differ from run to run, so the tests inject a real bit-changing setting
/// between processes to see a non-deterministic host reported.
const TEST_FRESH_GRAPH_OPT: &str = "MONITOR_TEST_FRESH_WORKER_GRAPH_OPT";

/// One run of a case: where it ran and what it produced.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    /// `worker 1 run 2`, `fresh worker 3`.
    pub label: String,
    /// sha256 of the final latents (f32 LE).
    pub latents_sha256: String,
    /// sha256 of the image's RGB8 pixels.
    pub image_sha256: String,
}

/// How far a group of runs is from the first run.
#[derive(Debug, Clone, Serialize)]
pub struct Spread {
    /// Every run of the group is bit-identical to the first run.
    pub identical: bool,
    /// Largest |Δ| of any final latent value against the first run.
    pub latent_max_abs: f64,
    /// Largest per-channel pixel difference against the first run.
    pub image_max_abs: u8,
    /// The runs that differ, each with the first stage where it does (`None`: no stage data).
    pub differing: Vec<(String, Option<String>)>,
    /// Recorded settings or host facts that differ from the first run's ("key: a → b").
    pub settings_differ: Vec<String>,
}

/// One case's verdict.
#[derive(Debug, Clone, Serialize)]
pub struct CaseDeterminism {
    /// Case name.
    pub name: String,
    /// Every run in order, the reference first.
    pub runs: Vec<RunSummary>,
    /// Runs 2..N in the first worker against run 1.
    pub same_worker: Option<Spread>,
    /// The fresh workers' runs against run 1.
    pub fresh_workers: Option<Spread>,
    /// Why the case could not be tested.
    pub error: Option<String>,
    /// The setting most likely responsible when the runs differ.
    pub likely_cause: Option<String>,
}

impl CaseDeterminism {
    /// `Some(true)` when every run is bit-identical, `None` on error.
    pub fn deterministic(&self) -> Option<bool> {
        if self.error.is_some() {
            return None;
        }
        Some(
            [&self.same_worker, &self.fresh_workers]
                .iter()
                .all(|s| s.as_ref().is_none_or(|s| s.identical)),
        )
    }

    /// One line: what differs, how much and where first.
    pub fn describe_difference(&self) -> Option<String> {
        let mut parts = Vec::new();
        for (what, spread) in [
            ("same worker", &self.same_worker),
            ("fresh workers", &self.fresh_workers),
        ] {
            let Some(s) = spread.as_ref().filter(|s| !s.identical) else {
                continue;
            };
            let first = s
                .differing
                .iter()
                .find_map(|(_, stage)| stage.clone())
                .unwrap_or_else(|| "unknown (no stage data)".into());
            parts.push(format!(
                "{what}: {} of the runs differ, max |Δ latent| {:.3e}, max |Δ pixel| {}, first differing stage: {first}",
                s.differing.len(),
                s.latent_max_abs,
                s.image_max_abs
            ));
        }
        (!parts.is_empty()).then(|| parts.join("; "))
    }
}

/// A whole test: per case, plus the history run it was recorded as.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyRun {
    /// History run id (kind `verify`).
    pub run_id: i64,
    /// Per case, in config order.
    pub cases: Vec<CaseDeterminism>,
    /// Ok: deterministic; Drift: some case is not; Error: some case could not be tested.
    pub status: CheckStatus,
    /// Why the results could not be recorded, if they could not.
    pub history_error: Option<String>,
}

/// Runs `names` (all cases when empty) `runs` times each, records and returns the verdicts.
pub fn verify(config: &Config, names: &[String], runs: usize) -> Result<VerifyRun> {
    if runs < 2 {
        bail!("--runs {runs}: a determinism test needs at least 2 runs");
    }
    let start = Instant::now();
    let cases = pipeline_cases(config, names, "a determinism test")?;
    let (mut history, environment, run_id) = crate::check::begin_run(config, "verify", "manual")?;
    let work = crate::worker::work_dir("verify")?;
    let results = match test_cases(config, &cases, &environment, work.path(), runs) {
        Ok(r) => r,
        Err(e) => {
            let _ = history.fail_run(run_id, &format!("{e:#}"), start.elapsed().as_secs_f64());
            return Err(e);
        }
    };
    let status = status_of(&results);
    let rows: Vec<CaseResult> = results.iter().map(history_row).collect();
    let recorded = history.record_results(run_id, &rows).and_then(|()| {
        history.finish_run(
            run_id,
            i32::from(crate::cli::exit_code(status)),
            start.elapsed().as_secs_f64(),
        )
    });
    Ok(VerifyRun {
        run_id,
        cases: results,
        status,
        history_error: recorded.err().map(|e| e.to_string()),
    })
}

fn status_of(results: &[CaseDeterminism]) -> CheckStatus {
    if results.iter().any(|c| c.deterministic().is_none()) {
        CheckStatus::Error
    } else if results.iter().any(|c| c.deterministic() == Some(false)) {
        CheckStatus::Drift
    } else {
        CheckStatus::Ok
    }
}

/// Runs every case `runs` times in one worker and once in each of `runs - 1` fresh workers.
pub fn test_cases(
    config: &Config,
    cases: &[&Case],
    environment: &Environment,
    work: &Path,
    runs: usize,
) -> Result<Vec<CaseDeterminism>> {
    let timeout = Duration::from_secs_f64(config.worker.timeout_s);
    let settings = config.model.runtime_settings();
    // Worker 1: every case `runs` times, under names that keep the outputs apart.
    let mut specs = Vec::new();
    for case in cases {
        for r in 1..=runs {
            specs.push(CaseSpec {
                name: run_name(&case.name, r),
                ..case.spec()
            });
        }
    }
    let first = run_specs(
        config,
        specs,
        settings.clone(),
        environment,
        &work.join("worker-1"),
        timeout,
        &Cancel::new(),
    )?;
    let fresh = run_fresh_workers(config, cases, environment, work, runs)?;
    let mut results = Vec::new();
    for case in cases {
        let mut same = Vec::new();
        for r in 1..=runs {
            same.push((
                format!("worker 1 run {r}"),
                outcome_of(&first.outcomes, &run_name(&case.name, r)),
            ));
        }
        let others = fresh_outcomes(&fresh, &case.name, |w| format!("fresh worker {w}"));
        results.push(assess(&case.name, &same, &others, &settings));
    }
    Ok(results)
}

/// The output folder of case `name` in a worker's outcomes, or why there is none.
fn outcome_of(outcomes: &[(String, Outcome)], name: &str) -> Result<PathBuf, String> {
    match outcomes.iter().find(|(n, _)| n == name).map(|(_, o)| o) {
        Some(Outcome::Done { dir, .. }) => Ok(dir.clone()),
        Some(Outcome::Failed(e)) => Err(e.clone()),
        None => Err(format!("{name} did not run")),
    }
}

/// Workers 2..=`runs`, each a new process running every case once (service cases: a new
/// request), into `base/worker-N`.
fn run_fresh_workers(
    config: &Config,
    cases: &[&Case],
    environment: &Environment,
    base: &Path,
    runs: usize,
) -> Result<Vec<crate::worker::WorkerRun>> {
    let timeout = Duration::from_secs_f64(config.worker.timeout_s);
    let settings = fresh_settings(&config.model.runtime_settings())?;
    (2..=runs)
        .map(|w| {
            // Service cases are asked again: a service that does not reproduce its own image
            // would drift against the baseline it gives.
            crate::check::run_cases(
                config,
                cases,
                &[],
                settings.clone(),
                environment,
                &base.join(format!("worker-{w}")),
                timeout,
                &Cancel::new(),
            )
        })
        .collect()
}

/// Case `name`'s output in each fresh worker (numbered from 2), labelled by `label(number)`.
fn fresh_outcomes(
    fresh: &[crate::worker::WorkerRun],
    name: &str,
    label: impl Fn(usize) -> String,
) -> Vec<(String, Result<PathBuf, String>)> {
    fresh
        .iter()
        .enumerate()
        .map(|(i, w)| (label(i + 2), outcome_of(&w.outcomes, name)))
        .collect()
}

fn run_name(case: &str, run: usize) -> String {
    format!("{case}.run{run}")
}

fn fresh_settings(settings: &RuntimeSettings) -> Result<RuntimeSettings> {
    let mut s = settings.clone();
    if let Ok(level) = std::env::var(TEST_FRESH_GRAPH_OPT) {
        s.graph_optimization = level
            .parse()
            .map_err(|e: String| anyhow::anyhow!("{TEST_FRESH_GRAPH_OPT}: {e}"))?;
    }
    Ok(s)
}

/// Compares every run with the first one. `same[0]` is the reference.
pub fn assess(
    name: &str,
    same: &[(String, Result<PathBuf, String>)],
    fresh: &[(String, Result<PathBuf, String>)],
    settings: &RuntimeSettings,
) -> CaseDeterminism {
    let mut out = CaseDeterminism {
        name: name.to_string(),
        runs: Vec::new(),
        same_worker: None,
        fresh_workers: None,
        error: None,
        likely_cause: None,
    };
    let mut load = |label: &str, r: &Result<PathBuf, String>| -> Option<GenerationFiles> {
        let files = match r {
            Ok(dir) => generation::read(dir).map_err(|e| format!("{e:#}")),
            Err(e) => Err(e.clone()),
        };
        match files {
            Ok(f) => Some(f),
            Err(e) => {
                if out.error.is_none() {
                    out.error = Some(format!("{label}: {e}"));
                }
                None
            }
        }
    };
    let mut loaded = Vec::new();
    for (label, r) in same.iter().chain(fresh) {
        loaded.push((label.clone(), load(label, r)));
    }
    if out.error.is_some() {
        return out;
    }
    let loaded: Vec<(String, GenerationFiles)> = loaded
        .into_iter()
        .map(|(l, f)| (l, f.expect("errors returned above")))
        .collect();
    for (label, f) in &loaded {
        out.runs.push(RunSummary {
            label: label.clone(),
            latents_sha256: crate::generation::Latents::sha256_of(f.latents.as_ref()),
            image_sha256: f
                .metadata
                .outputs
                .as_ref()
                .and_then(|o| o.image.as_ref())
                .and_then(|i| i.sha256_rgb.clone())
                .unwrap_or_default(),
        });
    }
    let reference = &loaded[0].1;
    let n_same = same.len();
    out.same_worker = (n_same > 1).then(|| spread(reference, &loaded[1..n_same]));
    out.fresh_workers = (!fresh.is_empty()).then(|| spread(reference, &loaded[n_same..]));
    if out.deterministic() == Some(false) {
        let same_differs = out.same_worker.as_ref().is_some_and(|s| !s.identical);
        let recorded: Vec<String> = [&out.same_worker, &out.fresh_workers]
            .iter()
            .filter_map(|s| s.as_ref())
            .flat_map(|s| s.settings_differ.iter().cloned())
            .collect();
        out.likely_cause = Some(if recorded.is_empty() {
            likely_cause(settings, same_differs)
        } else {
            // The runs did not even run the same way: that is the cause, whatever else is.
            format!(
                "the runs' recorded settings differ: {}",
                recorded.join(", ")
            )
        });
    }
    out
}

fn spread(reference: &GenerationFiles, others: &[(String, GenerationFiles)]) -> Spread {
    let mut s = Spread {
        identical: true,
        latent_max_abs: 0.0,
        image_max_abs: 0,
        differing: Vec::new(),
        settings_differ: Vec::new(),
    };
    for (label, f) in others {
        // Two image-only runs (a service's answers) have no latents to differ: `None`.
        let lat = match (&f.latents, &reference.latents) {
            (Some(a), Some(b)) => Some(crate::compare::latent_metrics(
                &a.values, &a.shape, &b.values, &b.shape,
            )),
            (None, None) => None,
            _ => Some(Err(crate::compare::CompareError::NoLatents)),
        };
        let same_image = f.image == reference.image;
        let same_latents = lat
            .as_ref()
            .is_none_or(|l| l.as_ref().is_ok_and(|l| l.identical));
        if same_image && same_latents {
            continue;
        }
        s.identical = false;
        // NaN (a NaN difference, or shapes that cannot be compared) stays NaN.
        let max_abs = lat.map_or(0.0, |l| l.map_or(f64::NAN, |l| l.max_abs));
        if max_abs.is_nan() || max_abs > s.latent_max_abs {
            s.latent_max_abs = max_abs;
        }
        if !same_image {
            let px = crate::compare::image_metrics(&f.image, &reference.image)
                .map_or(u8::MAX, |i| i.max_level_diff);
            s.image_max_abs = s.image_max_abs.max(px);
        }
        let stage = match (&reference.metadata.stages, &f.metadata.stages) {
            (Some(a), Some(b)) => first_difference(a, b),
            _ => None,
        };
        s.differing.push((label.clone(), stage));
        for d in crate::compare::metadata_env_differences(&f.metadata, &reference.metadata) {
            let line = d.describe();
            if !s.settings_differ.contains(&line) {
                s.settings_differ.push(line);
            }
        }
    }
    s
}

/// The setting most likely to make runs differ on this host, in words an operator acts on.
pub fn likely_cause(s: &RuntimeSettings, within_one_process: bool) -> String {
    if !s.deterministic_compute {
        return "deterministic_compute: false (ONNX Runtime may pick non-deterministic kernels; set it to true)".into();
    }
    if s.execution_provider == ExecutionProvider::Cuda {
        if s.conv_algo_search != ConvAlgoSearch::Heuristic {
            return format!(
                "conv_algo_search: {} (cuDNN benchmarks convolution algorithms in each new session and may pick others; use heuristic)",
                format!("{:?}", s.conv_algo_search).to_lowercase()
            );
        }
        return "the GPU kernels themselves (atomics in reductions); with deterministic_compute: true and conv_algo_search: heuristic already set, try prefer_nhwc: false or another ONNX Runtime release".into();
    }
    if within_one_process {
        return "a kernel that is not deterministic within one process on this CPU (try threads: 1)".into();
    }
    "something that differs between processes though every recorded setting is the same (threads: null sizes ONNX Runtime's pool from the CPUs a process may use, which a container or cgroup can change: set threads explicitly)".into()
}

/// The history row of one case (verdict identical: deterministic; drift: not; error).
pub fn history_row(c: &CaseDeterminism) -> CaseResult {
    let verdict = match c.deterministic() {
        Some(true) => Verdict::Identical,
        Some(false) => Verdict::Drift,
        None => Verdict::Error,
    };
    let max_abs = [&c.same_worker, &c.fresh_workers]
        .iter()
        .filter_map(|s| s.as_ref().map(|s| s.latent_max_abs))
        .fold(0.0, f64::max);
    CaseResult {
        latents_sha256: c.runs.first().map(|r| r.latents_sha256.clone()),
        latent_max_abs: (c.error.is_none()).then_some(max_abs),
        error: c.error.clone(),
        details: Some(json!({
            "determinism": {
                "runs": c.runs,
                "same_worker": c.same_worker,
                "fresh_workers": c.fresh_workers,
                "likely_cause": c.likely_cause,
            }
        })),
        ..CaseResult::new(c.name.clone(), verdict)
    }
}

/// The determinism check of `rebaseline`: runs each case `runs - 1` more times in fresh workers
/// and compares each with the first run (`first`, the proposal's output folder). Returns, per
/// case that is not deterministic, why it cannot become a baseline.
pub fn recheck_for_rebaseline(
    config: &Config,
    cases: &[&Case],
    first: &[(String, Option<PathBuf>)],
    environment: &Environment,
    work: &Path,
    runs: usize,
) -> Result<Vec<(String, String)>> {
    let settings = config.model.runtime_settings();
    // `work` holds the first run's case folders; a leading dot is never a case name.
    let fresh = run_fresh_workers(config, cases, environment, &work.join(".determinism"), runs)?;
    let mut refused = Vec::new();
    for (case, (name, dir)) in cases.iter().zip(first) {
        let Some(dir) = dir else { continue };
        let same = [("run 1".to_string(), Ok(dir.clone()))];
        let others = fresh_outcomes(&fresh, &case.name, |w| format!("run {w} (fresh worker)"));
        let d = assess(name, &same, &others, &settings);
        if let Some(e) = d.error {
            refused.push((name.clone(), format!("the determinism re-run failed: {e}")));
        } else if d.deterministic() == Some(false) && case.target == Target::Service {
            // An image is all a service returns: no latents, no stages to report.
            let (n, px) = d
                .fresh_workers
                .as_ref()
                .map_or((0, 0), |s| (s.differing.len(), s.image_max_abs));
            refused.push((
                name.clone(),
                format!(
                    "the generation service did not return the same image twice for this case ({n} of {} repeated requests differ, max |Δ pixel| {px}); a baseline from it would drift against itself (make the service deterministic, or --runs 1 to store it anyway)",
                    runs - 1
                ),
            ));
        } else if d.deterministic() == Some(false) {
            refused.push((
                name.clone(),
                format!(
                    "this host is not deterministic for this case ({}); most likely: {}; a baseline from it would drift against itself (fix the setting, or --runs 1 to store it anyway)",
                    d.describe_difference().unwrap_or_default(),
                    d.likely_cause.unwrap_or_default()
                ),
            ));
        }
    }
    Ok(refused)
}

/// A unique name is needed per repeated run; it must stay a valid case folder name.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_names_are_valid_case_names() {
        assert!(crate::baseline::validate_case(&run_name("fox", 3)).is_ok());
    }

    #[test]
    fn likely_cause_names_the_setting() {
        let mut s = RuntimeSettings {
            execution_provider: ExecutionProvider::Cuda,
            conv_algo_search: ConvAlgoSearch::Default,
            ..RuntimeSettings::default()
        };
        assert!(likely_cause(&s, false).starts_with("conv_algo_search: default"));
        s.deterministic_compute = false;
        assert!(likely_cause(&s, false).starts_with("deterministic_compute: false"));
    }
}
