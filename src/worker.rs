//! Model runs happen in a short-lived child process (`monitor worker`).
//!
//! ONNX Runtime never frees the CUDA context until its process exits, so a daemon running ORT
//! in-process would keep hundreds of MB on the GPU it shares with the service it watches. The
//! child also contains crashes and hangs: the parent kills a worker past its timeout and the
//! unfinished cases become `error` results instead of a hung check.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::case::{pretty_json, write_generation, CaseRunner, CaseSpec};
use crate::fingerprint::Environment;
use crate::fsutil::atomic_write;
use crate::sd::runtime::{Runtime, RuntimeSettings};

/// What a worker is asked to do: one model, one runtime configuration, several cases.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    /// SD1.5 ONNX export folder.
    pub model: PathBuf,
    /// Explicit ONNX Runtime library, else ORT_DYLIB_PATH, else discovery.
    pub ort_library: Option<PathBuf>,
    /// Execution provider and determinism settings.
    pub runtime: RuntimeSettings,
    /// The cases, run in order with the model loaded once.
    pub cases: Vec<CaseSpec>,
    /// The host fingerprint, collected once by the parent (nvidia-smi is not free).
    pub environment: Environment,
}

/// What a worker reports in `report.json` when it gets to finish.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    /// Seconds spent creating sessions.
    pub load_s: Option<f64>,
    /// An error that stopped every case (no ONNX Runtime, model folder broken, ...).
    pub fatal: Option<String>,
    /// One entry per case that was attempted.
    pub cases: Vec<CaseReport>,
}

/// One case's outcome inside the worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CaseReport {
    /// Case name.
    pub name: String,
    /// The error, when it failed.
    pub error: Option<String>,
    /// Pipeline warnings (truncated prompts, ...).
    pub warnings: Vec<String>,
    /// Wall time of the case.
    pub duration_s: f64,
}

/// A case as the parent sees it after the worker is gone.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Outputs are complete in this folder.
    Done {
        /// `<out>/<case>/` with latents.npy, image.png, metadata.json.
        dir: PathBuf,
        /// Pipeline warnings.
        warnings: Vec<String>,
        /// Wall time of the case in the worker.
        duration_s: f64,
    },
    /// The case could not run; the message says why.
    Failed(String),
}

/// Everything the parent learned from one worker run.
#[derive(Debug, Clone)]
pub struct WorkerRun {
    /// Per case, in job order.
    pub outcomes: Vec<(String, Outcome)>,
    /// The worker's report, when it finished.
    pub report: Report,
    /// Wall time of the whole worker, start-up included.
    pub wall_s: f64,
}

const REPORT: &str = "report.json";
const JOB: &str = "job.json";

/// Parent side: runs `job` in `monitor worker`, writing into `out_dir`, killing it after `timeout`.
pub fn run_in_worker(job: &Job, out_dir: &Path, timeout: Duration) -> Result<WorkerRun> {
    std::fs::create_dir_all(out_dir)
        .with_context(|| format!("creating worker folder {}", out_dir.display()))?;
    let job_file = out_dir.join(JOB);
    let body = serde_json::to_vec_pretty(job).context("encoding worker job")?;
    atomic_write(&job_file, &body).with_context(|| format!("writing {}", job_file.display()))?;
    let exe =
        std::env::current_exe().context("finding the monitor executable to start a worker")?;
    let start = Instant::now();
    let mut child = Command::new(&exe)
        .arg("worker")
        .arg("--job")
        .arg(&job_file)
        .arg("--out")
        .arg(out_dir)
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("starting worker {}", exe.display()))?;
    let status = loop {
        if let Some(status) = child.try_wait().context("waiting for the worker")? {
            break Exit::Status(status);
        }
        if start.elapsed() > timeout {
            // SIGKILL: a hung CUDA call ignores gentler signals.
            let _ = child.kill();
            let _ = child.wait();
            break Exit::TimedOut;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let wall_s = start.elapsed().as_secs_f64();
    let report: Report = std::fs::read(out_dir.join(REPORT))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let outcomes = job
        .cases
        .iter()
        .map(|c| {
            (
                c.name.clone(),
                outcome(c, out_dir, &report, &status, timeout),
            )
        })
        .collect();
    Ok(WorkerRun {
        outcomes,
        report,
        wall_s,
    })
}

enum Exit {
    Status(ExitStatus),
    TimedOut,
}

fn outcome(
    case: &CaseSpec,
    out_dir: &Path,
    report: &Report,
    exit: &Exit,
    timeout: Duration,
) -> Outcome {
    if let Some(r) = report.cases.iter().find(|r| r.name == case.name) {
        return match &r.error {
            Some(e) => Outcome::Failed(e.clone()),
            None => Outcome::Done {
                dir: out_dir.join(&case.name),
                warnings: r.warnings.clone(),
                duration_s: r.duration_s,
            },
        };
    }
    if let Some(f) = &report.fatal {
        return Outcome::Failed(f.clone());
    }
    // No report for this case: metadata.json is written last, so its presence means complete.
    let dir = out_dir.join(&case.name);
    if dir.join("metadata.json").exists() {
        return Outcome::Done {
            dir,
            warnings: Vec::new(),
            duration_s: 0.0,
        };
    }
    Outcome::Failed(match exit {
        Exit::TimedOut => format!(
            "worker killed after the {} s timeout before case {} finished",
            timeout.as_secs_f64(),
            case.name
        ),
        Exit::Status(s) => format!(
            "worker exited ({}) before case {} finished",
            describe(s),
            case.name
        ),
    })
}

fn describe(s: &ExitStatus) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = s.signal() {
            return format!("killed by signal {sig}");
        }
    }
    match s.code() {
        Some(c) => format!("exit code {c}"),
        None => "unknown status".into(),
    }
}

/// A private work folder for one check or rebaseline, removed when dropped. Its name carries the
/// owner's pid, so folders left by a process killed with SIGKILL can be swept by the next one.
pub fn work_dir(kind: &str) -> Result<tempfile::TempDir> {
    sweep_stale_work_dirs();
    tempfile::Builder::new()
        .prefix(&format!("monitor-{kind}-{}-", std::process::id()))
        .tempdir()
        .context("creating a work folder")
}

/// Removes `monitor-<kind>-<pid>-*` folders in the temp dir whose pid is no longer running.
fn sweep_stale_work_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("monitor-") else {
            continue;
        };
        let pid = rest.split('-').nth(1).and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// Child side: runs the job file's cases and writes `<out>/<case>/...` and `<out>/report.json`.
pub fn work(job_file: &Path, out_dir: &Path) -> Result<()> {
    #[cfg(target_os = "linux")]
    // SAFETY: prctl with these arguments only sets this process's parent-death signal.
    unsafe {
        // A worker whose check was killed must not keep the GPU busy for nobody.
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
    }
    let bytes = std::fs::read(job_file)
        .with_context(|| format!("reading worker job {}", job_file.display()))?;
    let job: Job = serde_json::from_slice(&bytes)
        .with_context(|| format!("parsing worker job {}", job_file.display()))?;
    let mut report = Report::default();
    let result = run_cases(&job, out_dir, &mut report);
    if let Err(e) = result {
        report.fatal = Some(format!("{e:#}"));
    }
    let p = out_dir.join(REPORT);
    atomic_write(&p, &pretty_json(&serde_json::to_value(&report)?))
        .with_context(|| format!("writing {}", p.display()))
}

fn run_cases(job: &Job, out_dir: &Path, report: &mut Report) -> Result<()> {
    let runtime = Runtime::init(job.ort_library.as_deref(), job.runtime.clone())?;
    let mut runner = CaseRunner::load(&runtime, &job.model, job.environment.clone())?;
    report.load_s = Some(runner.load_s());
    for case in &job.cases {
        let start = Instant::now();
        let result = runner.run(case, &mut |_, _| {}).and_then(|(gen, meta)| {
            write_generation(&out_dir.join(&case.name), &gen, &meta)?;
            Ok(gen.warnings)
        });
        let duration_s = start.elapsed().as_secs_f64();
        report.cases.push(match result {
            Ok(warnings) => CaseReport {
                name: case.name.clone(),
                error: None,
                warnings,
                duration_s,
            },
            Err(e) => CaseReport {
                name: case.name.clone(),
                error: Some(format!("{e:#}")),
                warnings: vec![],
                duration_s,
            },
        });
    }
    Ok(())
}
