//! The product's core loop: run the configured cases in a worker, compare each with its stored
//! baseline, keep what a human needs to see, and record everything in the history.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::json;

use crate::baseline::{Baseline, BaselineStore};
use crate::case::{pretty_json, CaseSpec};
use crate::compare::{self, CompareReport, Thresholds, Verdict};
use crate::config::{Case, Config, Target};
use crate::fingerprint::Environment;
use crate::fsutil::atomic_write;
use crate::generation::{self, GenerationFiles, Metadata, ParametersRecord, METADATA_FILE};
use crate::history::{CaseResult, History, NewRun};
use crate::sd::image::RgbImage;
use crate::sd::runtime::ExecutionProvider;
use crate::worker::{self, Cancel, Job, Outcome, WorkerRun};

/// How a check went as a whole; the CLI maps it to the exit code (`cli::exit_code`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckStatus {
    /// Every case identical or within tolerance.
    Ok,
    /// A case drifted or its model changed.
    Drift,
    /// A case could not be checked, or the results could not be recorded (takes precedence:
    /// the check is incomplete).
    Error,
}

impl CheckStatus {
    /// The worst status of `results`.
    pub fn of(results: &[CaseCheck]) -> CheckStatus {
        if results.iter().any(|r| r.verdict == Verdict::Error) {
            CheckStatus::Error
        } else if results
            .iter()
            .any(|r| matches!(r.verdict, Verdict::Drift | Verdict::ModelChanged))
        {
            CheckStatus::Drift
        } else {
            CheckStatus::Ok
        }
    }
}

/// One case's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct CaseCheck {
    /// Case name.
    pub name: String,
    /// The verdict.
    pub verdict: Verdict,
    /// The baseline version compared against.
    pub baseline_version: Option<u32>,
    /// Metrics, reasons and environment differences (absent when the case could not run).
    pub report: Option<CompareReport>,
    /// Why the case is `error`.
    pub error: Option<String>,
    /// Folder with the run's outputs and the diff heatmap, kept for non-identical results.
    pub artifacts: Option<PathBuf>,
    /// Pipeline warnings.
    pub warnings: Vec<String>,
    /// Seconds the case took in the worker.
    pub duration_s: f64,
    /// Batch invariance, the reference snapshot compared with: what only some results have.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
    /// Generation time and memory, and the `slow` flag (never part of the verdict).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub performance: Option<crate::performance::Performance>,
    /// The case's section of the round's HTML report: a URL under `report.base_url`, else the
    /// page's path (set once the report is written).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report_page: Option<String>,
}

/// Where a check's time went, to keep the monitor's own overhead visible.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CheckTimings {
    /// The whole check.
    pub total_s: f64,
    /// The worker process, start to exit (model load and generation).
    pub worker_s: f64,
    /// Session creation inside the worker.
    pub load_s: f64,
    /// Sum of the cases' generation times.
    pub generation_s: f64,
    /// Everything outside the worker: config, baselines, comparison, history, reports.
    pub outside_worker_s: f64,
}

/// A finished check.
#[derive(Debug, Clone, Serialize)]
pub struct CheckRun {
    /// History row id.
    pub run_id: i64,
    /// Per case, in config order.
    pub cases: Vec<CaseCheck>,
    /// The worst outcome.
    pub status: CheckStatus,
    /// Timings.
    pub timings: CheckTimings,
    /// Set when the results could not be written to the history (they are still reported).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history_error: Option<String>,
    /// The round's HTML report (written when a case is not identical).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<PathBuf>,
    /// Why the HTML report could not be written (the results stand without it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report_error: Option<String>,
}

/// Settings of one check beyond the config file.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// Only these cases (empty: all).
    pub cases: Vec<String>,
    /// Kill the worker after this long.
    pub worker_timeout: Duration,
    /// What started it (recorded in the history): manual, schedule, signal, recheck, once.
    pub trigger: &'static str,
    /// Set by a stopping daemon: the worker is killed, unfinished cases become `error`.
    pub cancel: Cancel,
    /// Compare with this snapshot (another host's outputs) instead of the baseline store.
    pub against: Option<PathBuf>,
}

impl CheckOptions {
    /// A manual check of `cases` (all when empty) with the config's worker timeout.
    pub fn manual(config: &Config, cases: Vec<String>) -> CheckOptions {
        CheckOptions {
            cases,
            worker_timeout: Duration::from_secs_f64(config.worker.timeout_s),
            trigger: "manual",
            cancel: Cancel::new(),
            against: None,
        }
    }
}

/// The config's cases named in `names` (all when empty), each once, in the order first named;
/// an unknown name is an error.
pub fn select_cases<'c>(config: &'c Config, names: &[String]) -> Result<Vec<&'c Case>> {
    if names.is_empty() {
        return Ok(config.cases.iter().collect());
    }
    let mut seen = std::collections::HashSet::new();
    names
        .iter()
        .filter(|n| seen.insert(n.as_str()))
        .map(|n| {
            config.cases.iter().find(|c| &c.name == n).with_context(|| {
                let all: Vec<&str> = config.cases.iter().map(|c| c.name.as_str()).collect();
                format!(
                    "no case named {n:?} in {} (cases: {})",
                    config.source.display(),
                    all.join(", ")
                )
            })
        })
        .collect()
}

/// [`select_cases`] for a command that runs the monitor's own pipeline only (`what`: the quick
/// check, determinism, snapshots): service cases are left out, and naming one is an error.
pub fn pipeline_cases<'c>(
    config: &'c Config,
    names: &[String],
    what: &str,
) -> Result<Vec<&'c Case>> {
    let cases = select_cases(config, names)?;
    if let Some(c) = cases
        .iter()
        .find(|c| c.target == Target::Service && !names.is_empty())
    {
        anyhow::bail!(
            "case {} targets the generation service; {what} runs the monitor's own pipeline only",
            c.name
        );
    }
    let cases: Vec<&Case> = cases
        .into_iter()
        .filter(|c| c.target == Target::Pipeline)
        .collect();
    if cases.is_empty() {
        anyhow::bail!(
            "{}: no pipeline cases; {what} runs the monitor's own pipeline only",
            config.source.display()
        );
    }
    Ok(cases)
}

/// Generates `cases` into `out_dir/<case>/`: pipeline cases in a worker with the config's model
/// and runtime settings, holding the model device's lock (waiting up to `timeout` for another
/// monitor process to finish with it); service cases by asking the generation service, after
/// the worker (the service often shares the GPU). Outcomes come back in `cases` order.
pub fn run_worker(
    config: &Config,
    cases: &[&Case],
    environment: &Environment,
    out_dir: &Path,
    timeout: Duration,
    cancel: &Cancel,
) -> Result<WorkerRun> {
    let runtime = config.model.runtime_settings();
    run_cases(
        config,
        cases,
        &[],
        runtime,
        environment,
        out_dir,
        timeout,
        cancel,
    )
}

/// Suffix of the pipeline run of a service case with `parity: true` (`<case>.parity`).
pub const PARITY_SUFFIX: &str = ".parity";

/// [`run_worker`] with runtime settings the caller chose for the pipeline cases (a
/// determinism re-run's fresh workers), also running each of `parity` (service cases) on the
/// pipeline as `<case>.parity`, after `cases`' outcomes.
#[allow(clippy::too_many_arguments)]
pub fn run_cases(
    config: &Config,
    cases: &[&Case],
    parity: &[&Case],
    runtime: crate::sd::runtime::RuntimeSettings,
    environment: &Environment,
    out_dir: &Path,
    timeout: Duration,
    cancel: &Cancel,
) -> Result<WorkerRun> {
    let (service, pipeline): (Vec<&Case>, Vec<&Case>) =
        cases.iter().partition(|c| c.target == Target::Service);
    let mut run = if pipeline.is_empty() && parity.is_empty() {
        WorkerRun {
            outcomes: Vec::new(),
            report: Default::default(),
            wall_s: 0.0,
        }
    } else {
        let mut specs: Vec<CaseSpec> = pipeline.iter().map(|c| c.spec()).collect();
        specs.extend(parity.iter().map(|c| CaseSpec {
            name: format!("{}{PARITY_SUFFIX}", c.name),
            ..c.spec()
        }));
        run_specs(
            config,
            specs,
            runtime,
            environment,
            out_dir,
            timeout,
            cancel,
        )?
    };
    if !service.is_empty() {
        std::fs::create_dir_all(out_dir)
            .with_context(|| format!("creating output folder {}", out_dir.display()))?;
        run.outcomes.extend(crate::service::cases::run(
            config, &service, out_dir, cancel,
        ));
    }
    // Cases in order, parity runs last.
    run.outcomes.sort_by_key(|(name, _)| {
        cases
            .iter()
            .position(|c| &c.name == name)
            .unwrap_or(cases.len())
    });
    Ok(run)
}

/// [`run_worker`] for case specs and runtime settings the caller chose (repeated runs under
/// other names, a determinism test's fresh workers).
pub fn run_specs(
    config: &Config,
    specs: Vec<CaseSpec>,
    runtime: crate::sd::runtime::RuntimeSettings,
    environment: &Environment,
    out_dir: &Path,
    timeout: Duration,
    cancel: &Cancel,
) -> Result<WorkerRun> {
    let job = job(config, specs, runtime, environment);
    run_job(config, &job, out_dir, timeout, cancel)
}

/// A worker job generating `specs` with the config's model, runtime library and limits.
pub fn job(
    config: &Config,
    specs: Vec<CaseSpec>,
    runtime: crate::sd::runtime::RuntimeSettings,
    environment: &Environment,
) -> Job {
    Job {
        model: config.model.path.clone(),
        ort_library: config.onnxruntime.library.clone(),
        runtime,
        cases: specs,
        environment: environment.clone(),
        limits: config.limits,
        replay: None,
        session_cache: config
            .model
            .session_cache_on()
            .then(|| config.storage.session_cache.clone()),
    }
}

/// Runs `job` in a worker, holding the model device's lock.
pub fn run_job(
    config: &Config,
    job: &Job,
    out_dir: &Path,
    timeout: Duration,
    cancel: &Cancel,
) -> Result<WorkerRun> {
    let device = match config.model.execution_provider {
        ExecutionProvider::Cpu => "cpu".to_string(),
        ExecutionProvider::Cuda => format!("cuda{}", config.model.device_id),
    };
    let _lock =
        crate::device_lock::acquire(&config.storage.database, &device, timeout, cancel, |who| {
            tracing::warn!("waiting for device {device}: {who}");
        })?;
    worker::run_in_worker(job, out_dir, timeout, cancel)
}

/// Opens the history (first: a locked or corrupt database must fail before minutes of GPU
/// work), closes runs left by dead processes, collects the host's fingerprint and records the
/// start of a run of `kind` started by `trigger`.
pub fn begin_run(
    config: &Config,
    kind: &str,
    trigger: &str,
) -> Result<(History, Environment, i64)> {
    let mut history = History::open(&config.storage.database)?;
    history.close_interrupted()?;
    let environment = crate::fingerprint::collect();
    let run_id = history.begin_run(&NewRun {
        model_path: Some(config.model.path.display().to_string()),
        environment: Some(serde_json::to_value(&environment)?),
        trigger: Some(trigger.to_string()),
        ..NewRun::now(kind)
    })?;
    Ok((history, environment, run_id))
}

/// Runs a check: worker, comparison, reports, history. Errors here are about the monitor itself
/// (config, database, storage); a case that cannot run is an `error` verdict, not an `Err`.
/// The run is recorded in the history whatever happens: finished with its exit code, or failed
/// with the error.
pub fn check(config: &Config, opts: &CheckOptions) -> Result<CheckRun> {
    let start = Instant::now();
    let cases = select_cases(config, &opts.cases)?;
    let (mut history, environment, run_id) = begin_run(config, "check", opts.trigger)?;
    let store = BaselineStore::new(&config.storage.baselines);
    let compared = run_and_compare(config, opts, &cases, &store, &environment, run_id);
    let (results, run) = match compared {
        Ok(r) => r,
        Err(e) => {
            // Best effort: the error itself is what the caller must see.
            let _ = history.fail_run(run_id, &format!("{e:#}"), start.elapsed().as_secs_f64());
            return Err(e);
        }
    };
    let mut status = CheckStatus::of(&results);
    if let Some(v) = &run.report.onnxruntime_version {
        // Best effort: the version also sits in every kept metadata.json.
        if let Err(e) = history.note_runtime(run_id, v) {
            tracing::warn!("{e}");
        }
    }
    let rows: Vec<CaseResult> = results.iter().map(history_row).collect();
    let total_s = start.elapsed().as_secs_f64();
    // The model run is done and its results are worth showing even if they cannot be stored
    // (e.g. the database stayed locked past the busy timeout): report, don't discard.
    let recorded = history
        .record_results(run_id, &rows)
        .and_then(|()| {
            history.finish_run(run_id, i32::from(crate::cli::exit_code(status)), total_s)
        })
        .and_then(|()| match config.storage.retention_days {
            0 => Ok(0),
            days => history.prune(days),
        });
    let history_error = recorded.err().map(|e| e.to_string());
    if history_error.is_some() {
        status = CheckStatus::Error;
    }
    let mut results = results;
    let (report, report_error) = if history_error.is_none() {
        write_report(config, &history, run_id, &mut results)
    } else {
        // The report is built from the history; without the results there it would be empty.
        (None, None)
    };
    let generation_s = results.iter().map(|r| r.duration_s).sum();
    let timings = CheckTimings {
        total_s,
        worker_s: run.wall_s,
        load_s: run.report.load_s.unwrap_or(0.0),
        generation_s,
        outside_worker_s: total_s - run.wall_s,
    };
    Ok(CheckRun {
        run_id,
        cases: results,
        status,
        timings,
        history_error,
        report,
        report_error,
    })
}

/// Writes the round's HTML report when a case is not identical, prunes reports whose run the
/// history no longer keeps, and links each case to its section. A report that cannot be written
/// costs the page, never the results: the error is returned beside them.
fn write_report(
    config: &Config,
    history: &History,
    run_id: i64,
    results: &mut [CaseCheck],
) -> (Option<PathBuf>, Option<String>) {
    let reports = &config.storage.reports;
    let mut error = None;
    if let Err(e) = crate::report::prune(reports, history) {
        error = Some(format!("pruning old reports: {e:#}"));
    }
    if results.iter().all(|r| r.verdict == Verdict::Identical) {
        return (None, error);
    }
    let settings = config.report.settings();
    match crate::report::write_round(reports, history, run_id, &settings) {
        Ok(page) => {
            for r in results.iter_mut() {
                r.report_page = Some(crate::report::link(reports, &settings, run_id, &r.name));
            }
            (Some(page), error)
        }
        Err(e) => (None, Some(format!("{e:#}"))),
    }
}

/// The worker run and every case's comparison.
fn run_and_compare(
    config: &Config,
    opts: &CheckOptions,
    cases: &[&Case],
    store: &BaselineStore,
    environment: &Environment,
    run_id: i64,
) -> Result<(Vec<CaseCheck>, WorkerRun)> {
    // A damaged reference snapshot must fail before minutes of GPU work.
    let snapshot = match &opts.against {
        Some(p) => Some(crate::snapshot::Snapshot::open(p)?),
        None => None,
    };
    let work = crate::worker::work_dir("check")?;
    let parity: Vec<&Case> = cases
        .iter()
        .copied()
        .filter(|c| c.target == Target::Service && c.parity)
        .collect();
    let run = run_cases(
        config,
        cases,
        &parity,
        config.model.runtime_settings(),
        environment,
        work.path(),
        opts.worker_timeout,
        &opts.cancel,
    )?;
    // Every case is compared with the current baselines of one moment: no rebaseline batch can
    // be half-renamed while they are read.
    let _read = match &snapshot {
        None => Some(
            store
                .read_lock()
                .with_context(|| format!("reading baselines in {}", store.root().display()))?,
        ),
        Some(_) => None,
    };
    let reference = match &snapshot {
        Some(s) => Reference::Snapshot(s),
        None => Reference::Store(store),
    };
    let mut results = Vec::new();
    for (case, (name, outcome)) in cases.iter().zip(&run.outcomes) {
        debug_assert_eq!(&case.name, name);
        let thresholds = case.thresholds(&config.thresholds);
        let mut result = check_case(
            &reference,
            case,
            outcome,
            &thresholds,
            config.performance.max_slowdown,
            &config.storage.reports,
            run_id,
        );
        if let Some(s) = &snapshot {
            let details = result.details.get_or_insert_with(|| json!({}));
            details["against"] =
                json!({"snapshot": s.source.display().to_string(), "host": s.name()});
        }
        if case.target == Target::Service && case.parity {
            let pipeline = format!("{}{PARITY_SUFFIX}", case.name);
            let details = result.details.get_or_insert_with(|| json!({}));
            details["parity"] = parity_of(outcome, find_outcome(&run, &pipeline));
        }
        results.push(result);
    }
    Ok((results, run))
}

/// True when a result's details mark it as the generation service's (set by `check_case`; read
/// back by alerts and reports, from a fresh result or the history).
pub fn is_service_result(details: Option<&serde_json::Value>) -> bool {
    details
        .and_then(|d| d.get("target"))
        .is_some_and(|t| t == Target::Service.as_str())
}

/// The outcome of `name` in `run`.
fn find_outcome<'r>(run: &'r WorkerRun, name: &str) -> Option<&'r Outcome> {
    run.outcomes.iter().find(|(n, _)| n == name).map(|(_, o)| o)
}

/// How far a service case's image is from the pipeline's for the same parameters (SSIM, PSNR,
/// pixel differences), or why there is no answer. Informational: another sampler or precision
/// legitimately differs, so it never decides a verdict.
fn parity_of(service: &Outcome, pipeline: Option<&Outcome>) -> serde_json::Value {
    let image = |o: Option<&Outcome>, what: &str| match o {
        Some(Outcome::Done { dir, .. }) => generation::read(dir)
            .map(|f| f.image)
            .map_err(|e| format!("{what}: {e}")),
        Some(Outcome::Failed(e)) => Err(format!("{what}: {e}")),
        None => Err(format!("{what}: did not run")),
    };
    let measured = image(Some(service), "the service")
        .and_then(|s| Ok((s, image(pipeline, "the pipeline")?)))
        .and_then(|(s, p)| compare::image_metrics(&s, &p).map_err(|e| e.to_string()));
    match measured {
        Ok(m) => json!(m),
        Err(e) => json!({ "error": e }),
    }
}

/// "parity with the pipeline (informational): SSIM 0.4123, PSNR 11.2 dB, 96% of pixels differ"
/// from [`parity_of`]'s JSON.
pub fn describe_parity(p: &serde_json::Value) -> String {
    if let Some(e) = p.get("error").and_then(|e| e.as_str()) {
        return format!("parity with the pipeline: not measured: {e}");
    }
    if p.get("identical").and_then(|v| v.as_bool()) == Some(true) {
        return "parity with the pipeline: the same pixels".into();
    }
    let num = |k: &str| p.get(k).and_then(|v| v.as_f64());
    let pixels = match (num("pixels_differing"), num("width"), num("height")) {
        (Some(n), Some(w), Some(h)) if w * h > 0.0 => format!("{:.0}%", 100.0 * n / (w * h)),
        _ => "?".into(),
    };
    format!(
        "parity with the pipeline (informational, samplers and precisions differ): SSIM {}, PSNR {} dB, {pixels} of pixels differ",
        num("ssim").map_or("?".into(), |v| format!("{v:.4}")),
        num("psnr_db").map_or("?".into(), |v| format!("{v:.1}")),
    )
}

/// What a check compares with: this host's baselines, or another host's snapshot.
enum Reference<'a> {
    Store(&'a BaselineStore),
    Snapshot(&'a crate::snapshot::Snapshot),
}

impl Reference<'_> {
    /// The case's reference outputs, or the message to show when there are none.
    fn current(&self, case: &str) -> Result<Baseline, String> {
        match self {
            Reference::Store(store) => match store.current(case) {
                Ok(Some(b)) => Ok(b),
                Ok(None) => Err(format!(
                    "no baseline for case {case} in {}; create one with `monitor rebaseline --case {case} --reason ...`",
                    store.root().display()
                )),
                Err(e) => Err(format!("baseline of case {case}: {e}")),
            },
            Reference::Snapshot(s) => match s.case(case) {
                Some(b) => Ok(b.clone()),
                None => Err(match s.errors.get(case) {
                    Some(e) => format!(
                        "case {case} failed on the snapshot's host {}: {e}",
                        s.name()
                    ),
                    None => format!(
                        "case {case} is not in snapshot {} (take it with --case {case})",
                        s.source.display()
                    ),
                }),
            },
        }
    }
}

fn check_case(
    reference: &Reference<'_>,
    case: &Case,
    outcome: &Outcome,
    thresholds: &Thresholds,
    max_slowdown: Option<f64>,
    reports: &Path,
    run_id: i64,
) -> CaseCheck {
    let mut out = CaseCheck {
        name: case.name.clone(),
        verdict: Verdict::Error,
        baseline_version: None,
        report: None,
        error: None,
        artifacts: None,
        warnings: Vec::new(),
        duration_s: 0.0,
        details: None,
        performance: None,
        report_page: None,
    };
    if case.target == Target::Service {
        // Read by the history, reports and alerts to tell the service's results apart.
        out.details = Some(json!({"target": Target::Service.as_str()}));
    }
    let dir = match outcome {
        Outcome::Failed(e) => {
            out.error = Some(e.clone());
            return out;
        }
        Outcome::Done {
            dir,
            warnings,
            duration_s,
        } => {
            out.warnings = warnings.clone();
            out.duration_s = *duration_s;
            dir
        }
    };
    let baseline = match reference.current(&case.name) {
        Ok(b) => b,
        Err(e) => {
            out.error = Some(e);
            return out;
        }
    };
    if let Reference::Store(_) = reference {
        out.baseline_version = Some(baseline.version);
    }
    if let Err(e) = crate::metadata::check_baseline(&baseline, &case.name) {
        out.error = Some(e);
        return out;
    }
    let run = match generation::read(dir) {
        Ok(r) => r,
        Err(e) => {
            out.error = Some(format!("{e:#}"));
            return out;
        }
    };
    if let Err(reason) = crate::metadata::validate(&run.metadata, &case.name) {
        out.error = Some(format!(
            "{}: run output damaged: {reason}",
            dir.join(METADATA_FILE).display()
        ));
        return out;
    }
    if let Some(batch) = &run.metadata.batch {
        out.details.get_or_insert_with(|| json!({}))["batch"] = json!(batch);
    }
    // A service case's parameters include the sampler the service was sent, which only the run
    // knows (it comes from the service section's mapping).
    let now = match case.target {
        Target::Service => run.metadata.parameters.clone().unwrap_or_default(),
        Target::Pipeline => case.spec().parameters(),
    };
    let then = baseline.metadata.parameters.clone().unwrap_or_default();
    if let Some(diff) = parameters_difference(&then, &now) {
        out.error = Some(format!(
            "case {} no longer matches baseline v{:04}: {diff}; accept the new parameters with `monitor rebaseline --case {}`",
            case.name, baseline.version, case.name
        ));
        return out;
    }
    out.performance = Some(crate::performance::Performance::assess(
        &run.metadata,
        Some(&baseline.metadata),
        max_slowdown,
    ));
    let (mut report, heatmap) = compare_with(&run, &baseline, thresholds);
    out.verdict = report.classification.verdict;
    if out.verdict != Verdict::Identical {
        let keep = reports.join(format!("run-{run_id:06}")).join(&case.name);
        // The verdict stands without the copies: a full or read-only reports folder costs the
        // evidence, never the result.
        match keep_artifacts(
            dir,
            &keep,
            &baseline.image,
            heatmap.map(|h| h.image),
            &mut report,
        ) {
            Ok(()) => out.artifacts = Some(keep),
            Err(e) => out
                .warnings
                .push(format!("outputs not kept (reports folder): {e:#}")),
        }
    }
    out.error = report.classification.error.clone();
    out.report = Some(report);
    out
}

/// Compares a run's files with a baseline under `thresholds`.
pub fn compare_with(
    run: &GenerationFiles,
    baseline: &Baseline,
    thresholds: &Thresholds,
) -> (CompareReport, Option<compare::DiffHeatmap>) {
    compare::compare(&run.outputs(), &baseline.outputs(), thresholds)
}

/// The first parameter where a case differs from what its baseline was made with, if any.
/// Comparing outputs of different inputs would report drift that is only a config edit.
pub fn parameter_difference(spec: &CaseSpec, baseline_meta: &Metadata) -> Option<String> {
    parameters_difference(
        &baseline_meta.parameters.clone().unwrap_or_default(),
        &spec.parameters(),
    )
}

/// The first comparable parameter where `now` differs from `then`, as "seed 1 → 5" (floats
/// within 1e-9 relative are equal; an absent `karras_sigmas` in `then` is false).
pub fn parameters_difference(then: &ParametersRecord, now: &ParametersRecord) -> Option<String> {
    let (then, now) = (then.comparable(), now.comparable());
    then.into_iter().zip(now).find_map(|((k, a), (_, b))| {
        let same = match (a.as_f64(), b.as_f64()) {
            (Some(x), Some(y)) => (x - y).abs() <= 1e-9 * x.abs().max(1.0),
            // Early baselines did not record karras_sigmas, and had none.
            _ => a == b || (k == "karras_sigmas" && a.is_null() && b == false),
        };
        (!same).then(|| format!("{k} {a} → {b}"))
    })
}

/// Copies the run's outputs, the heatmap and compare.json into `keep`, all or nothing: they are
/// written into a temp folder beside it that is renamed into place when complete.
fn keep_artifacts(
    run_dir: &Path,
    keep: &Path,
    baseline_image: &RgbImage,
    heatmap: Option<RgbImage>,
    report: &mut CompareReport,
) -> Result<()> {
    let result = crate::fsutil::write_dir(keep, |tmp| {
        generation::copy_folder(run_dir, tmp, false)?;
        let p = tmp.join(crate::report::BASELINE_IMAGE);
        atomic_write(
            &p,
            &baseline_image
                .to_png()
                .context("encoding the baseline's image")?,
        )
        .with_context(|| format!("writing {}", p.display()))?;
        if let Some(h) = heatmap {
            let p = tmp.join("diff.png");
            atomic_write(&p, &h.to_png().context("encoding diff.png")?)
                .with_context(|| format!("writing {}", p.display()))?;
            report.heatmap = Some("diff.png".into());
        }
        let p = tmp.join("compare.json");
        atomic_write(&p, &pretty_json(&serde_json::to_value(&*report)?))
            .with_context(|| format!("writing {}", p.display()))
    });
    if result.is_err() {
        report.heatmap = None;
    }
    result
}

/// "3 cases: 2 identical, 1 drift": the verdicts of a check, counted in order of first
/// appearance (the CLI's last line and the daemon's round summary).
pub fn case_counts(results: &[CaseCheck]) -> String {
    let verdicts: Vec<Verdict> = results.iter().map(|c| c.verdict).collect();
    verdict_counts(&verdicts)
}

/// [`case_counts`] of bare verdicts (a report built from the history).
pub fn verdict_counts(verdicts: &[Verdict]) -> String {
    let mut counts: Vec<(Verdict, usize)> = Vec::new();
    for v in verdicts {
        match counts.iter_mut().find(|(c, _)| c == v) {
            Some((_, n)) => *n += 1,
            None => counts.push((*v, 1)),
        }
    }
    let parts: Vec<String> = counts.iter().map(|(v, n)| format!("{n} {v}")).collect();
    let plural = if verdicts.len() == 1 { "" } else { "s" };
    format!("{} case{plural}: {}", verdicts.len(), parts.join(", "))
}

/// The history row of a case.
pub fn history_row(r: &CaseCheck) -> CaseResult {
    let report = r.report.as_ref();
    let lat = report.and_then(|r| r.latents.as_ref());
    let img = report.and_then(|r| r.image.as_ref());
    CaseResult {
        case_name: r.name.clone(),
        verdict: r.verdict,
        baseline_version: r.baseline_version.map(i64::from),
        latents_sha256: lat.map(|l| l.run_sha256.clone()),
        latent_max_abs: lat.map(|l| l.max_abs),
        latent_mean_abs: lat.map(|l| l.mean_abs),
        latent_rmse: lat.map(|l| l.rmse),
        latent_cosine: lat.map(|l| l.cosine),
        ssim: img.map(|i| i.ssim),
        psnr_db: img.map(|i| i.psnr_db),
        pixels_differing: img.map(|i| i.pixels_differing as i64),
        reasons: report.map(|r| json!({"failures": r.classification.failures, "model_changes": r.classification.model_changes, "diverged_at": r.diverged_at, "divergence": r.divergence})),
        env_diff: report.map(|r| json!(r.env_differences)),
        error: r.error.clone(),
        duration_s: Some(r.duration_s),
        timings: r
            .performance
            .as_ref()
            .and_then(|p| serde_json::to_value(p).ok()),
        details: r.details.clone(),
    }
}
