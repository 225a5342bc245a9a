//! Model runs happen in a short-lived child process (`monitor worker`).
//!
//! ONNX Runtime never frees the CUDA context until its process exits, so a daemon running ORT
//! in-process would keep hundreds of MB on the GPU it shares with the service it watches. The
//! child also contains crashes and hangs: the parent kills a worker past its timeout and the
//! unfinished cases become `error` results instead of a hung check.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::case::{pretty_json, write_generation, CaseRunner, CaseSpec};
use crate::fingerprint::Environment;
use crate::fsutil::atomic_write;
use crate::limits::Limits;
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
    /// Size and memory bounds checked before each case runs.
    #[serde(default)]
    pub limits: Limits,
    /// A quick check: per case, the baseline version folder whose recorded inputs each network
    /// is replayed on (see `CaseRunner::replay`) instead of a full generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay: Option<std::collections::BTreeMap<String, PathBuf>>,
    /// ONNX Runtime's optimized-model cache folder (`None`: sessions are built from the model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_cache: Option<PathBuf>,
}

/// What a worker reports in `report.json` when it gets to finish.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    /// Seconds spent creating sessions.
    pub load_s: Option<f64>,
    /// The ONNX Runtime release the worker loaded.
    #[serde(default)]
    pub onnxruntime_version: Option<String>,
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
/// Environment variable carrying the parent's pid to the worker.
const PARENT_ENV: &str = "MONITOR_WORKER_PARENT";
const JOB: &str = "job.json";

/// A stop request for a running worker (the daemon is shutting down). Cloning shares the flag.
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    /// A flag that is not set.
    pub fn new() -> Cancel {
        Cancel::default()
    }

    /// Asks every worker watching this flag to be killed now.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// True once [`Cancel::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Parent side: runs `job` in `monitor worker`, writing into `out_dir`, killing it once
/// `timeout` has passed or `cancel` is set. A worker that crashes while running a case (an abort,
/// a segfault in a kernel) costs that case alone: it is reported with the crash, and the cases
/// after it run in a fresh worker. A crash before the model is loaded, a timeout or a
/// cancellation ends every unfinished case.
pub fn run_in_worker(
    job: &Job,
    out_dir: &Path,
    timeout: Duration,
    cancel: &Cancel,
) -> Result<WorkerRun> {
    std::fs::create_dir_all(out_dir)
        .with_context(|| format!("creating worker folder {}", out_dir.display()))?;
    let start = Instant::now();
    let deadline = start + timeout;
    let mut outcomes: Vec<Option<Outcome>> = vec![None; job.cases.len()];
    let mut report = Report::default();
    loop {
        let pending: Vec<usize> = (0..job.cases.len())
            .filter(|&i| outcomes[i].is_none())
            .collect();
        if pending.is_empty() {
            break;
        }
        let sub = Job {
            cases: pending.iter().map(|&i| job.cases[i].clone()).collect(),
            ..job.clone()
        };
        let (exit, attempt) = run_once(&sub, out_dir, deadline, cancel)?;
        if report.load_s.is_none() {
            report.load_s = attempt.load_s;
        }
        if report.onnxruntime_version.is_none() {
            report.onnxruntime_version = attempt.onnxruntime_version.clone();
        }
        report.fatal = report.fatal.or(attempt.fatal.clone());
        report.cases.extend(attempt.cases.iter().cloned());
        let progress = Progress::read(out_dir);
        let mut culprit_blamed = false;
        for (&i, case) in pending.iter().zip(&sub.cases) {
            match (outcome(case, out_dir, &attempt), &exit) {
                (Some(o), _) => outcomes[i] = Some(o),
                (None, Exit::Status(status)) if !culprit_blamed && progress.loaded => {
                    // The case that was running when the worker died; the rest get a new worker.
                    culprit_blamed = true;
                    outcomes[i] = Some(Outcome::Failed(crash_message(
                        status, &case.name, &progress,
                    )));
                }
                (None, _) => {}
            }
        }
        if !culprit_blamed {
            // Nothing to retry: every unfinished case shares the worker's fate.
            for (&i, case) in pending.iter().zip(&sub.cases) {
                if outcomes[i].is_none() {
                    outcomes[i] = Some(Outcome::Failed(unfinished_message(
                        &exit, &case.name, timeout,
                    )));
                }
            }
        }
    }
    let outcomes = job
        .cases
        .iter()
        .zip(outcomes)
        .map(|(c, o)| {
            let o = o.unwrap_or_else(|| Outcome::Failed(format!("case {} did not run", c.name)));
            (c.name.clone(), o)
        })
        .collect();
    Ok(WorkerRun {
        outcomes,
        report,
        wall_s: start.elapsed().as_secs_f64(),
    })
}

/// One worker process over `job`'s cases: how it ended and what it reported.
fn run_once(
    job: &Job,
    out_dir: &Path,
    deadline: Instant,
    cancel: &Cancel,
) -> Result<(Exit, Report)> {
    let job_file = out_dir.join(JOB);
    let body = serde_json::to_vec_pretty(job).context("encoding worker job")?;
    atomic_write(&job_file, &body).with_context(|| format!("writing {}", job_file.display()))?;
    for stale in [REPORT, PROGRESS] {
        let _ = std::fs::remove_file(out_dir.join(stale));
    }
    let exe = worker_executable()?;
    let mut child = Command::new(&exe)
        .arg("worker")
        .arg("--job")
        .arg(&job_file)
        .arg("--out")
        .arg(out_dir)
        .env(PARENT_ENV, std::process::id().to_string())
        // systemd's notification socket belongs to the daemon: a child must not speak for it.
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("starting worker {}", exe.display()))?;
    let exit = loop {
        if let Some(status) = child.try_wait().context("waiting for the worker")? {
            break Exit::Status(status);
        }
        if Instant::now() >= deadline {
            // SIGKILL: a hung CUDA call ignores gentler signals.
            let _ = child.kill();
            let _ = child.wait();
            break Exit::TimedOut;
        }
        if cancel.is_cancelled() {
            let _ = child.kill();
            let _ = child.wait();
            break Exit::Cancelled;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let report: Report = std::fs::read(out_dir.join(REPORT))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    Ok((exit, report))
}

/// The binary to run as the worker: this process's own. When it was replaced on disk while we run
/// (a package upgrade under a long-running daemon), Linux names it `PATH (deleted)`; the file now
/// at PATH is the upgraded monitor, which is what the next worker should be.
fn worker_executable() -> Result<PathBuf> {
    let exe =
        std::env::current_exe().context("finding the monitor executable to start a worker")?;
    let text = exe.to_string_lossy();
    match text.strip_suffix(" (deleted)") {
        Some(path) if Path::new(path).is_file() => {
            static ONCE: std::sync::Once = std::sync::Once::new();
            ONCE.call_once(|| {
                tracing::warn!("{path} was replaced since this process started; workers run the new binary (restart the daemon to run it throughout)")
            });
            Ok(PathBuf::from(path))
        }
        _ => Ok(exe),
    }
}

/// `progress.txt`: what a worker reached, appended as it goes, so that the parent can tell a
/// crash at load from a crash in a case, and which case.
const PROGRESS: &str = "progress.txt";

#[derive(Debug, Default)]
struct Progress {
    loaded: bool,
    running: Option<String>,
}

impl Progress {
    fn read(out_dir: &Path) -> Progress {
        let text = std::fs::read_to_string(out_dir.join(PROGRESS)).unwrap_or_default();
        let mut p = Progress::default();
        for line in text.lines() {
            if line == "loaded" {
                p.loaded = true;
            } else if let Some(c) = line.strip_prefix("start ") {
                p.running = Some(c.to_string());
            } else if line.starts_with("done ") {
                p.running = None;
            }
        }
        p
    }

    fn append(out_dir: &Path, line: &str) {
        use std::io::Write as _;
        // Best effort: without it a crash is blamed less precisely, nothing else changes.
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(out_dir.join(PROGRESS))
        {
            let _ = writeln!(f, "{line}");
        }
    }
}

/// How a case's error begins when the worker running it died (the metrics count these).
pub const CRASH_PREFIX: &str = "the worker died";
/// How a case's error begins when the worker was killed at its timeout.
pub const TIMEOUT_PREFIX: &str = "worker killed after the";

fn crash_message(status: &ExitStatus, case: &str, progress: &Progress) -> String {
    let how = describe(status);
    match &progress.running {
        Some(c) if c == case => format!(
            "{CRASH_PREFIX} ({how}) while running case {case}; the cases after it ran in a new worker"
        ),
        _ => format!(
            "{CRASH_PREFIX} ({how}) before case {case} finished; the cases after it ran in a new worker"
        ),
    }
}

fn unfinished_message(exit: &Exit, case: &str, timeout: Duration) -> String {
    match exit {
        Exit::TimedOut => format!(
            "{TIMEOUT_PREFIX} {} s timeout before case {case} finished",
            timeout.as_secs_f64()
        ),
        Exit::Status(s) => format!(
            "worker exited ({}) before case {case} finished",
            describe(s)
        ),
        Exit::Cancelled => {
            format!("worker stopped before case {case} finished: the monitor is shutting down")
        }
    }
}

enum Exit {
    Status(ExitStatus),
    TimedOut,
    Cancelled,
}

/// A case's outcome from what the worker left, or `None` when it did not get to finish it.
fn outcome(case: &CaseSpec, out_dir: &Path, report: &Report) -> Option<Outcome> {
    if let Some(r) = report.cases.iter().find(|r| r.name == case.name) {
        return Some(match &r.error {
            Some(e) => Outcome::Failed(e.clone()),
            None => Outcome::Done {
                dir: out_dir.join(&case.name),
                warnings: r.warnings.clone(),
                duration_s: r.duration_s,
            },
        });
    }
    if let Some(f) = &report.fatal {
        return Some(Outcome::Failed(f.clone()));
    }
    // No report for this case: metadata.json is written last, so its presence means complete.
    let dir = out_dir.join(&case.name);
    if crate::generation::is_complete(&dir) {
        return Some(Outcome::Done {
            dir,
            warnings: Vec::new(),
            duration_s: 0.0,
        });
    }
    None
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

/// Kinds of work folders; only names built from these are ever swept.
const WORK_KINDS: [&str; 2] = ["check", "rebaseline"];
/// Marker written into every work folder right after it is created; the sweep removes only
/// folders that carry it (a folder of the same name made by anyone else is never touched).
const WORK_MARKER: &str = ".monitor-work";

/// A private work folder for one check or rebaseline, removed when dropped. Folders left by a
/// process killed with SIGKILL are swept by the next one (see [`sweep_stale_work_dirs`]).
pub fn work_dir(kind: &str) -> Result<WorkDir> {
    let root = std::env::temp_dir();
    sweep_stale_work_dirs(&root);
    let path = tempfile::Builder::new()
        .prefix(&format!("monitor-{kind}-{}-", std::process::id()))
        .rand_bytes(6)
        .tempdir_in(&root)
        .with_context(|| format!("creating a work folder in {}", root.display()))?
        .keep();
    let marker = path.join(WORK_MARKER);
    let owner = Owner::current();
    if let Err(e) = std::fs::write(&marker, owner.to_marker()) {
        let _ = std::fs::remove_dir_all(&path);
        return Err(e).with_context(|| format!("writing {}", marker.display()));
    }
    Ok(WorkDir { path, owner })
}

/// A work folder made by [`work_dir`]. Dropping it removes it like the sweep does, marker last,
/// so a process killed while cleaning up leaves a folder the next sweep still recognises.
#[derive(Debug)]
pub struct WorkDir {
    path: PathBuf,
    owner: Owner,
}

impl WorkDir {
    /// The folder.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        remove_work_dir(&self.path, &self.owner);
    }
}

/// Who made a work folder: pid, the pid's start time (pids are reused) and uid.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Owner {
    pid: u32,
    start_ticks: Option<u64>,
    uid: u32,
}

impl Owner {
    fn current() -> Owner {
        let pid = std::process::id();
        Owner {
            pid,
            start_ticks: crate::process::start_ticks(pid),
            uid: current_uid(),
        }
    }

    fn to_marker(&self) -> String {
        let start = self.start_ticks.map_or("-".to_string(), |t| t.to_string());
        format!(
            "monitor work folder\npid {}\nstart {start}\nuid {}\n",
            self.pid, self.uid
        )
    }

    fn from_marker(text: &str) -> Option<Owner> {
        let mut lines = text.lines();
        if lines.next()? != "monitor work folder" {
            return None;
        }
        let mut field = |name: &str| lines.next()?.strip_prefix(name)?.strip_prefix(' ');
        let pid = field("pid")?.parse().ok()?;
        let start_ticks = match field("start")? {
            "-" => None,
            t => Some(t.parse().ok()?),
        };
        let uid = field("uid")?.parse().ok()?;
        Some(Owner {
            pid,
            start_ticks,
            uid,
        })
    }

    /// True while the process that wrote the marker runs (same pid *and* same start time).
    fn is_alive(&self) -> bool {
        crate::process::is_running(self.pid, self.start_ticks)
    }
}

/// The pid in a work folder name `monitor-<kind>-<pid>-<6 letters/digits>`, or `None` for any
/// other name.
fn work_dir_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("monitor-")?;
    let rest = WORK_KINDS
        .iter()
        .find_map(|k| rest.strip_prefix(k)?.strip_prefix('-'))?;
    let (pid, suffix) = rest.split_once('-')?;
    let digits_only = !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit());
    let suffix_ok = suffix.len() == 6 && suffix.bytes().all(|b| b.is_ascii_alphanumeric());
    if !(digits_only && suffix_ok) {
        return None;
    }
    pid.parse().ok()
}

/// Removes work folders in `root` left by monitor processes that are gone. Only a folder that
/// provably came from this program is removed: a name of the exact format, a real folder (not a
/// symlink) owned by this uid, holding a marker file written by the pid in its name, whose
/// process (pid and start time) no longer runs. A folder of that name whose owner died before
/// finishing the marker is removed only if it holds nothing else. Everything else is left alone.
pub fn sweep_stale_work_dirs(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    let uid = current_uid();
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(work_dir_pid) else {
            continue;
        };
        let path = e.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if !meta.file_type().is_dir() || owner_uid(&meta) != uid {
            continue;
        }
        let marker = path.join(WORK_MARKER);
        let owner = match std::fs::symlink_metadata(&marker) {
            Ok(m) if m.file_type().is_file() && owner_uid(&m) == uid && m.len() < 4096 => {
                std::fs::read_to_string(&marker)
                    .ok()
                    .and_then(|t| Owner::from_marker(&t))
            }
            _ => None,
        };
        match owner {
            Some(owner) => {
                if owner.pid != pid || owner.uid != uid || owner.is_alive() {
                    continue;
                }
                remove_work_dir(&path, &owner);
            }
            // Killed between creating the folder and finishing its marker: the folder holds
            // nothing else, so removing it cannot lose anyone's data (remove_dir refuses a folder
            // that is not empty).
            None if !crate::process::is_running(pid, None) && holds_only_marker(&path) => {
                let _ = std::fs::remove_file(&marker);
                let _ = std::fs::remove_dir(&path);
            }
            None => {}
        }
    }
}

/// This process's user id. Windows has no uids: there it is 0 for every folder, and the sweep
/// relies on the temp folder being per user (`%TEMP%` is under the user's profile).
fn current_uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    #[cfg(unix)]
    return unsafe { libc::getuid() };
    #[cfg(not(unix))]
    0
}

/// The user id owning a file (0 on Windows, as [`current_uid`]).
fn owner_uid(meta: &std::fs::Metadata) -> u32 {
    #[cfg(unix)]
    return std::os::unix::fs::MetadataExt::uid(meta);
    #[cfg(not(unix))]
    {
        let _ = meta;
        0
    }
}

/// Removes a work folder, its marker last, so that an interrupted removal never leaves it
/// unmarked. A dead owner's worker dies with it, but can finish one last file operation after its
/// parent is gone (a SIGKILL waits for the system call in progress); if that puts something back
/// while the folder is emptied, the folder keeps (or gets back) its marker, so the next sweep
/// removes it instead of leaking it.
fn remove_work_dir(dir: &Path, owner: &Owner) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_name() == WORK_MARKER {
                continue;
            }
            let p = e.path();
            // remove_dir_all does not follow symlinks inside the folder.
            let _ = match e.file_type() {
                Ok(t) if t.is_dir() => std::fs::remove_dir_all(&p),
                _ => std::fs::remove_file(&p),
            };
        }
    }
    if !holds_only_marker(dir) {
        return;
    }
    let marker = dir.join(WORK_MARKER);
    let _ = std::fs::remove_file(&marker);
    if std::fs::remove_dir(dir).is_err() && dir.is_dir() {
        let _ = std::fs::write(&marker, owner.to_marker());
    }
}

/// True when `dir` is empty or holds nothing but a (possibly partial) marker file.
fn holds_only_marker(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries
        .flatten()
        .all(|e| e.file_name() == WORK_MARKER && e.file_type().is_ok_and(|t| t.is_file()))
}

/// Child side: runs the job file's cases and writes `<out>/<case>/...` and `<out>/report.json`.
pub fn work(job_file: &Path, out_dir: &Path) -> Result<()> {
    #[cfg(target_os = "linux")]
    // SAFETY: prctl with these arguments only sets this process's parent-death signal.
    unsafe {
        // A worker whose check was killed must not keep the GPU busy for nobody.
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
    }
    // A parent that died before the line above set the signal leaves an orphan that would run
    // every case into a work folder the next monitor sweeps: stop now instead. (Windows has no
    // parent pid in std; there, as on other systems without PDEATHSIG, a worker whose parent dies
    // later runs its remaining cases to the end.)
    #[cfg(unix)]
    if let Some(parent) = std::env::var(PARENT_ENV)
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
    {
        if std::os::unix::process::parent_id() != parent {
            anyhow::bail!("the monitor process {parent} that started this worker is gone");
        }
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
    let mut runtime = Runtime::init(job.ort_library.as_deref(), job.runtime.clone())?;
    if let Some(dir) = &job.session_cache {
        runtime = runtime.with_session_cache(crate::sd::session_cache::SessionCache::new(
            dir,
            job.environment.session_cache_host(),
        ));
    }
    report.onnxruntime_version = Some(runtime.info().version.clone());
    let mut runner = CaseRunner::load(&runtime, &job.model, job.environment.clone(), &job.limits)?;
    report.load_s = Some(runner.load_s());
    Progress::append(out_dir, "loaded");
    // Test hook: abort (SIGABRT, as a failed allocation does) when this case starts.
    let abort_on = std::env::var("MONITOR_TEST_ABORT_IN_CASE").ok();
    // Test hook: a worker slowed by this many ms per step (as a throttled GPU is), which the
    // generation time includes.
    let step_delay = std::env::var("MONITOR_TEST_STEP_DELAY_MS")
        .ok()
        .and_then(|ms| ms.parse::<u64>().ok())
        .map(std::time::Duration::from_millis);
    for case in &job.cases {
        Progress::append(out_dir, &format!("start {}", case.name));
        if abort_on.as_deref() == Some(case.name.as_str()) {
            std::process::abort();
        }
        let start = Instant::now();
        let mut on_step = |_, _| {
            if let Some(d) = step_delay {
                std::thread::sleep(d);
            }
        };
        let ran = match job.replay.as_ref().map(|r| r.get(&case.name)) {
            None => runner.run(case, &mut on_step),
            Some(None) => Err(anyhow::anyhow!(
                "case {}: quick check without baseline latents",
                case.name
            )),
            Some(Some(dir)) => Reference::read(dir).and_then(|r| runner.replay(case, &r.inputs())),
        };
        let result = ran.and_then(|(gen, meta)| {
            // Not create_dir_all: a work folder swept away (its parent died) must not come back.
            let dir = out_dir.join(&case.name);
            std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
            write_generation(&dir, &gen, &meta)?;
            Ok(gen.warnings)
        });
        let duration_s = start.elapsed().as_secs_f64();
        Progress::append(out_dir, &format!("done {}", case.name));
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

/// A baseline version's recorded inputs for a replay: final latents always; ids, text
/// embeddings and initial noise where it kept them.
struct Reference {
    latents: ndarray::Array4<f32>,
    prompt_ids: Option<Vec<u32>>,
    negative_ids: Option<Vec<u32>>,
    text_embeddings: Option<ndarray::Array3<f32>>,
    initial_noise: Option<ndarray::Array4<f32>>,
    /// The baseline recorded its latent tile's decode: the replay decodes only that.
    has_tile: bool,
}

impl Reference {
    fn read(dir: &Path) -> Result<Reference> {
        let files = crate::generation::read(dir)
            .with_context(|| format!("reading the baseline in {}", dir.display()))?;
        let final_latents = files.pipeline_latents(dir).map_err(anyhow::Error::msg)?;
        let [n, c, h, w] = final_latents.shape[..] else {
            anyhow::bail!(
                "{}: latents shape {:?} is not [1, 4, h, w]",
                dir.display(),
                final_latents.shape
            );
        };
        let latents = ndarray::Array4::from_shape_vec((n, c, h, w), final_latents.values.clone())
            .with_context(|| format!("{}: latents", dir.display()))?;
        let tokens = files.metadata.tokens.as_ref();
        let stages = files.stages.as_ref();
        let has_tile = files
            .metadata
            .stages
            .iter()
            .flatten()
            .any(|s| s.stage == "decoded_tile");
        Ok(Reference {
            latents,
            prompt_ids: tokens.and_then(|t| t.prompt.clone()),
            negative_ids: tokens.and_then(|t| t.negative_prompt.clone()),
            text_embeddings: stages.and_then(|s| s.array3("text_embeddings")),
            initial_noise: stages.and_then(|s| s.array4("initial_noise")),
            has_tile,
        })
    }

    fn inputs(&self) -> crate::sd::pipeline::ReplayInputs<'_> {
        crate::sd::pipeline::ReplayInputs {
            final_latents: &self.latents,
            prompt_ids: self.prompt_ids.as_deref(),
            negative_ids: self.negative_ids.as_deref(),
            text_embeddings: self.text_embeddings.as_ref(),
            initial_noise: self.initial_noise.as_ref(),
            decode_tile_only: self.has_tile,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    fn dead_owner() -> Owner {
        // A child that has exited and been reaped: its pid is free (until reused, which the start
        // time guards against).
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        Owner {
            pid,
            start_ticks: Some(1),
            uid: current_uid(),
        }
    }

    #[cfg(unix)]
    fn make(root: &Path, name: &str, marker: Option<&Owner>) -> PathBuf {
        let d = root.join(name);
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("keep"), b"data").unwrap();
        if let Some(o) = marker {
            std::fs::write(d.join(WORK_MARKER), o.to_marker()).unwrap();
        }
        d
    }

    #[test]
    fn names_of_the_exact_format_only() {
        assert_eq!(work_dir_pid("monitor-check-123-aB3xY9"), Some(123));
        assert_eq!(work_dir_pid("monitor-rebaseline-7-000000"), Some(7));
        for bad in [
            "monitor-backup-2023",
            "monitor-check-123",
            "monitor-check-123-abc",
            "monitor-check-123-abcdefg",
            "monitor-check-12a-abcdef",
            "monitor-check--abcdef",
            "monitor-other-123-abcdef",
            "monitor-check-123-ab.def",
            "xmonitor-check-123-abcdef",
        ] {
            assert_eq!(work_dir_pid(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_work_folder_is_marked_and_removed_when_dropped() {
        let dir = work_dir("check").unwrap();
        let path = dir.path().to_path_buf();
        std::fs::create_dir(path.join("fox")).unwrap();
        std::fs::write(path.join("fox/latents.npy"), b"x").unwrap();
        let marker = std::fs::read_to_string(path.join(WORK_MARKER)).unwrap();
        assert_eq!(Owner::from_marker(&marker), Some(Owner::current()));
        drop(dir);
        assert!(!path.exists());
    }

    #[test]
    fn marker_round_trip() {
        let o = Owner::current();
        assert_eq!(Owner::from_marker(&o.to_marker()), Some(o.clone()));
        assert!(o.is_alive());
        assert_eq!(Owner::from_marker("monitor work folder\npid x\n"), None);
        assert_eq!(Owner::from_marker(""), None);
    }

    // Symlinks and the pid of an exited child, the Unix way.
    #[cfg(unix)]
    #[test]
    fn sweep_removes_only_what_it_provably_made() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let dead = dead_owner();
        let me = Owner::current();
        let stale = make(
            r,
            &format!("monitor-check-{}-abc123", dead.pid),
            Some(&dead),
        );
        // Everything below must survive.
        let foreign = make(r, "monitor-backup-2023", None);
        let no_marker = make(r, &format!("monitor-check-{}-abc124", dead.pid), None);
        let live = make(r, &format!("monitor-check-{}-abc125", me.pid), Some(&me));
        let other_pid = Owner {
            pid: dead.pid + 1,
            ..dead.clone()
        };
        let mismatch = make(
            r,
            &format!("monitor-check-{}-abc126", dead.pid),
            Some(&other_pid),
        );
        // Our pid, but another start time: the pid was reused, the writer is gone.
        let reused = Owner {
            start_ticks: Some(1),
            ..me.clone()
        };
        let reused_dir = make(
            r,
            &format!("monitor-rebaseline-{}-abc127", me.pid),
            Some(&reused),
        );
        // Killed between mkdir and a complete marker: empty, or only a partial marker; removed.
        let empty = r.join(format!("monitor-check-{}-abc129", dead.pid));
        std::fs::create_dir(&empty).unwrap();
        let partial = r.join(format!("monitor-check-{}-abc130", dead.pid));
        std::fs::create_dir(&partial).unwrap();
        std::fs::write(partial.join(WORK_MARKER), b"monitor work fo").unwrap();
        // The same name format and no marker, but holding data: kept.
        // (`no_marker` above.)
        // A symlink with our name and a marked target: neither the link nor its target goes.
        let target = make(r, "elsewhere", Some(&dead));
        let link = r.join(format!("monitor-check-{}-abc128", dead.pid));
        std::os::unix::fs::symlink(&target, &link).unwrap();

        sweep_stale_work_dirs(r);
        assert!(!stale.exists(), "the dead owner's folder must go");
        assert!(!reused_dir.exists(), "a folder of a reused pid must go");
        assert!(
            !empty.exists() && !partial.exists(),
            "half-made folders must go"
        );
        for kept in [&foreign, &no_marker, &live, &mismatch, &target] {
            assert!(kept.join("keep").exists(), "{} was removed", kept.display());
        }
        assert!(link.symlink_metadata().is_ok(), "the symlink was removed");
    }
}
