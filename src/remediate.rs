//! Remediation: restarting the generation service when a drift is confirmed.

use std::io::Read;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::duration::ConfigDuration;

/// What to restart: a systemd unit, or a command (argv, never through a shell). Written in the
/// config as `{unit: NAME}` or `{command: [argv...]}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawRestart")]
pub enum RestartTarget {
    /// `systemctl restart UNIT`.
    Unit(String),
    /// This argv.
    Command(Vec<String>),
}

/// `restart:` as written: exactly one of the keys.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRestart {
    unit: Option<String>,
    command: Option<Vec<String>>,
}

impl TryFrom<RawRestart> for RestartTarget {
    type Error = String;

    fn try_from(r: RawRestart) -> Result<Self, String> {
        match (r.unit, r.command) {
            (Some(u), None) => Ok(RestartTarget::Unit(u)),
            (None, Some(c)) => Ok(RestartTarget::Command(c)),
            (Some(_), Some(_)) => Err("restart takes `unit` or `command`, not both".into()),
            (None, None) => {
                Err("restart needs `unit: NAME` or `command: [program, args...]`".into())
            }
        }
    }
}

/// `remediation:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemediationConfig {
    /// What to restart.
    pub restart: RestartTarget,
    /// Restarts allowed per `window`.
    #[serde(default = "default_max_restarts")]
    pub max_restarts: u32,
    /// The window `max_restarts` counts in.
    #[serde(default = "default_window")]
    pub window: ConfigDuration,
    /// Wait this long after a restart before re-checking the drifting cases.
    #[serde(default = "default_recheck_delay")]
    pub recheck_delay: ConfigDuration,
    /// Kill the restart command after this long.
    #[serde(default = "default_restart_timeout")]
    pub timeout: ConfigDuration,
    /// Store new baselines when drift persists after a restart (opt-in).
    #[serde(default)]
    pub auto_rebaseline: bool,
}

fn default_max_restarts() -> u32 {
    3
}
fn default_window() -> ConfigDuration {
    ConfigDuration(std::time::Duration::from_secs(3600))
}
fn default_recheck_delay() -> ConfigDuration {
    ConfigDuration(std::time::Duration::from_secs(30))
}
fn default_restart_timeout() -> ConfigDuration {
    ConfigDuration(std::time::Duration::from_secs(120))
}

/// How much of the restart command's stdout and stderr is kept (the end, where errors are).
const TAIL_BYTES: usize = 2048;

/// After the command exits, how long its output pipes may stay open: a background process it
/// started can hold them for ever, and the outcome must not wait on that.
const PIPE_GRACE: Duration = Duration::from_secs(1);

/// `unit_exists` gives up on systemctl after this long (a wedged D-Bus must not hang startup).
const UNIT_QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// Unit types `systemctl restart` can act on.
const RESTARTABLE_SUFFIXES: [&str; 8] = [
    "service",
    "target",
    "socket",
    "timer",
    "path",
    "mount",
    "automount",
    "swap",
];

/// Variables systemd gives the daemon that must not reach the restart command: a child that
/// speaks sd_notify would otherwise report (or ping the watchdog) on the daemon's behalf.
const DAEMON_ONLY_ENV: [&str; 3] = ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"];

/// What came of one restart attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct RestartOutcome {
    /// The command ran and exited 0.
    pub ok: bool,
    /// `"ok"`, `"failed"`, `"timed_out"` or `"not_started"`.
    pub outcome: &'static str,
    /// One line: the exit status and the end of stderr (or stdout), or why it did not start.
    pub detail: String,
    /// Seconds from spawn (or refusal) to the end.
    pub duration_s: f64,
}

/// The command line a restart runs, for logs and alerts (arguments shell-quoted for display only:
/// the command itself never goes through a shell).
pub fn describe(target: &RestartTarget) -> String {
    match target {
        RestartTarget::Unit(unit) => format!("systemctl restart {}", shell_quote(unit)),
        RestartTarget::Command(argv) => argv
            .iter()
            .map(|a| shell_quote(a))
            .collect::<Vec<_>>()
            .join(" "),
    }
}

fn shell_quote(arg: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "_-.,:/=+@%^".contains(c);
    if !arg.is_empty() && arg.chars().all(plain) {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

/// Restarts `target` (`systemctl restart UNIT`, or the argv run directly), killing the command's
/// whole process group if it outlives `timeout`. Never panics and never returns early without
/// reaping what it started.
pub async fn restart(target: &RestartTarget, timeout: Duration) -> RestartOutcome {
    let started = Instant::now();
    let done = |ok: bool, outcome: &'static str, detail: String| RestartOutcome {
        ok,
        outcome,
        detail,
        duration_s: started.elapsed().as_secs_f64(),
    };
    let argv: Vec<&str> = match target {
        RestartTarget::Unit(unit) => {
            // A name like `--help` would be read by systemctl as an option and "succeed".
            if let Some(problem) = unit_name_problem(unit) {
                return done(false, "not_started", problem);
            }
            vec!["systemctl", "restart", unit.as_str()]
        }
        RestartTarget::Command(argv) => argv.iter().map(String::as_str).collect(),
    };
    let Some((program, args)) = argv.split_first() else {
        return done(false, "not_started", "restart command is empty".into());
    };

    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // If the daemon drops this future (shutdown), the child must not run on unsupervised.
        .kill_on_drop(true);
    // Its own process group, so a timeout can kill everything it started, not just the direct
    // child (a shell script's `sleep` would otherwise outlive it).
    #[cfg(unix)]
    cmd.process_group(0);
    for key in DAEMON_ONLY_ENV {
        cmd.env_remove(key);
    }
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            return done(
                false,
                "not_started",
                format!("cannot start {}: {e}", describe(target)),
            )
        }
    };
    let pgid = child.id();
    let mut guard = GroupGuard(pgid);
    let stdout = Tail::spawn(child.stdout.take());
    let stderr = Tail::spawn(child.stderr.take());

    let waited = tokio::time::timeout(timeout, child.wait()).await;
    let ended = match waited {
        Ok(Ok(status)) => {
            guard.disarm();
            Ended::Exited(status)
        }
        Ok(Err(e)) => {
            kill_group(pgid);
            #[cfg(not(unix))]
            let _ = child.start_kill();
            let _ = child.wait().await;
            guard.disarm();
            Ended::WaitFailed(format!("waiting for {} failed: {e}", describe(target)))
        }
        Err(_elapsed) => {
            kill_group(pgid);
            #[cfg(not(unix))]
            let _ = child.start_kill();
            // Reaps the leader; the rest of the group, now orphaned, is reaped by init.
            let _ = child.wait().await;
            guard.disarm();
            let mut what = format!(
                "timed out after {}; killed its process group",
                fmt_secs(timeout)
            );
            if let RestartTarget::Unit(unit) = target {
                what.push_str(&format!(
                    " (systemd may still be running the restart job: systemctl status {unit})"
                ));
            }
            Ended::TimedOut(what)
        }
    };
    // On a normal exit the rest of the group is left alone: a restart script may legitimately
    // start the service in the background.
    let out = stdout.finish().await;
    let err = stderr.finish().await;
    let output = if !err.is_empty() {
        format!("; stderr: {err}")
    } else if !out.is_empty() {
        format!("; stdout: {out}")
    } else {
        String::new()
    };
    match ended {
        Ended::Exited(status) if status.success() => {
            done(true, "ok", format!("exit status 0{output}"))
        }
        Ended::Exited(status) => done(
            false,
            "failed",
            format!("{} {}{output}", describe(target), describe_status(status)),
        ),
        Ended::TimedOut(e) => done(false, "timed_out", format!("{e}{output}")),
        Ended::WaitFailed(e) => done(false, "failed", format!("{e}{output}")),
    }
}

/// How the wait for the restart command ended (the texts are the start of `detail`).
enum Ended {
    Exited(ExitStatus),
    TimedOut(String),
    WaitFailed(String),
}

/// Kills the command's process group when `restart` is dropped before the command was reaped
/// (the daemon shutting down mid-restart): `kill_on_drop` alone would only kill the leader.
struct GroupGuard(Option<u32>);

impl GroupGuard {
    /// Called once the leader is reaped: from then on its pid, and so the group id, may be reused.
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        kill_group(self.0);
    }
}

/// Kills the process group led by `pgid` (the command's pid). Windows has no process groups to
/// kill: there callers kill the command itself, and what it started in the background lives on.
fn kill_group(pgid: Option<u32>) {
    #[cfg(unix)]
    if let Some(pgid) = pgid
        .and_then(|p| libc::pid_t::try_from(p).ok())
        .filter(|&p| p > 0)
    {
        // SAFETY: kill(2) has no memory-safety preconditions. Callers only pass the group of a
        // leader not yet reaped, so the id cannot have been reused by another group.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
    }
    #[cfg(not(unix))]
    let _ = pgid;
}

fn describe_status(status: ExitStatus) -> String {
    #[cfg(unix)]
    let signal = std::os::unix::process::ExitStatusExt::signal(&status);
    #[cfg(not(unix))]
    let signal: Option<i32> = None;
    match (status.code(), signal) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => format!("was killed by signal {sig}"),
        (None, None) => format!("ended with {status}"),
    }
}

fn fmt_secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{s:.0}s")
    } else {
        format!("{}s", format!("{s:.3}").trim_end_matches('0'))
    }
}

/// The last `TAIL_BYTES` of a pipe, collected by a task; shared so that what was read survives
/// the task being abandoned.
struct Tail {
    buf: Arc<Mutex<Vec<u8>>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Tail {
    fn spawn<R: AsyncRead + Unpin + Send + 'static>(pipe: Option<R>) -> Tail {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let task = pipe.map(|mut pipe| {
            let buf = Arc::clone(&buf);
            tokio::spawn(async move {
                let mut chunk = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut chunk).await {
                    if n == 0 {
                        break;
                    }
                    let mut b = buf.lock().unwrap_or_else(|p| p.into_inner());
                    b.extend_from_slice(&chunk[..n]);
                    if b.len() > 2 * TAIL_BYTES {
                        let cut = b.len() - TAIL_BYTES;
                        b.drain(..cut);
                    }
                }
            })
        });
        Tail { buf, task }
    }

    /// Waits up to `PIPE_GRACE` for end of file, then gives the tail as one cleaned-up line.
    async fn finish(mut self) -> String {
        if let Some(mut task) = self.task.take() {
            if tokio::time::timeout(PIPE_GRACE, &mut task).await.is_err() {
                task.abort();
            }
        }
        let b = self.buf.lock().unwrap_or_else(|p| p.into_inner());
        one_line_tail(&b)
    }
}

fn one_line_tail(bytes: &[u8]) -> String {
    let mut start = bytes.len().saturating_sub(TAIL_BYTES);
    // Do not start inside a UTF-8 sequence cut by the tail.
    while start < bytes.len() && start > 0 && (bytes[start] & 0xC0) == 0x80 {
        start += 1;
    }
    let text = String::from_utf8_lossy(&bytes[start..]);
    text.lines()
        .map(|l| {
            l.chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect::<String>()
                .trim()
                .to_string()
        })
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" | ")
}

/// True when fewer than `max_restarts` of `past_restarts_unix` fall within `window` before
/// `now_unix`. Timestamps after `now_unix` (the clock stepped back) count as recent.
pub fn budget_allows(
    past_restarts_unix: &[f64],
    now_unix: f64,
    max_restarts: u32,
    window: Duration,
) -> bool {
    let window = window.as_secs_f64();
    let recent = past_restarts_unix
        .iter()
        .filter(|&&t| now_unix - t < window)
        .count();
    (recent as u64) < u64::from(max_restarts)
}

/// Whether systemd knows `unit` (`systemctl show -p LoadState`); None when that cannot be told:
/// no systemctl, systemd not running as PID 1, no answer within a few seconds.
pub fn unit_exists(unit: &str) -> Option<bool> {
    unit_exists_with(&["systemctl"], unit, UNIT_QUERY_TIMEOUT)
}

/// `unit_exists` running `systemctl` as `program` (tests pass a fake one) with a time limit.
fn unit_exists_with(program: &[&str], unit: &str, timeout: Duration) -> Option<bool> {
    if unit_name_problem(unit).is_some() {
        return Some(false);
    }
    let (exe, pre) = program.split_first()?;
    let mut cmd = std::process::Command::new(exe);
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
    }
    let mut child = cmd
        .args(pre)
        .args(["show", "--property=LoadState", "--value", "--"])
        .arg(unit)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let pgid = Some(child.id());
    let (tx, rx) = std::sync::mpsc::channel();
    if let Some(mut out) = child.stdout.take() {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = out.read_to_string(&mut text);
            let _ = tx.send(text);
        });
    }
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => break None,
        }
    };
    let Some(status) = status else {
        kill_group(pgid);
        #[cfg(not(unix))]
        let _ = child.kill();
        let _ = child.wait();
        return None;
    };
    let text = rx.recv_timeout(PIPE_GRACE).ok()?;
    if !status.success() {
        return None;
    }
    match text.lines().next().map(str::trim) {
        None | Some("") => None,
        Some("not-found") => Some(false),
        // loaded, masked, error, bad-setting: the unit is there, whatever its state.
        Some(_) => Some(true),
    }
}

/// Why `unit` is not a restartable unit name, or None when it is one.
fn unit_name_problem(unit: &str) -> Option<String> {
    if unit.is_empty() {
        return Some("unit name is empty; give the unit to restart, e.g. sd-webui.service".into());
    }
    if unit.chars().any(char::is_whitespace) {
        return Some(format!("unit name {unit:?} contains whitespace"));
    }
    if unit.contains('/') {
        return Some(format!(
            "unit name {unit:?} contains '/'; give the unit's name (e.g. sd-webui.service), not its file"
        ));
    }
    if let Some(c) = unit
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || ":-_.\\@".contains(c)))
    {
        return Some(format!(
            "unit name {unit:?} contains {c:?}, which systemd unit names cannot"
        ));
    }
    if unit.starts_with('-') {
        return Some(format!(
            "unit name {unit:?} starts with '-' (systemctl would read it as an option)"
        ));
    }
    if unit.len() > 255 {
        return Some(format!(
            "unit name is {} bytes long; systemd allows 255",
            unit.len()
        ));
    }
    let (stem, suffix) = unit.rsplit_once('.').unwrap_or((unit, ""));
    if !RESTARTABLE_SUFFIXES.contains(&suffix) {
        return Some(format!(
            "unit name {unit:?} does not end in a restartable unit type (.{})",
            RESTARTABLE_SUFFIXES.join(", .")
        ));
    }
    if stem.is_empty() || stem.starts_with('@') {
        return Some(format!("unit name {unit:?} has no name before the suffix"));
    }
    if stem.ends_with('@') {
        return Some(format!(
            "unit name {unit:?} is a template; name an instance (e.g. {}gpu0.{suffix})",
            stem
        ));
    }
    None
}

/// Structural problems in `remediation:` as (key, message); empty when it is usable.
pub fn validate(config: &RemediationConfig) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    let mut problem = |key: &str, message: String| problems.push((key.to_string(), message));
    match &config.restart {
        RestartTarget::Unit(unit) => {
            if let Some(p) = unit_name_problem(unit) {
                problem("remediation.restart.unit", p);
            }
        }
        RestartTarget::Command(argv) => match argv.first() {
            None => problem(
                "remediation.restart.command",
                "restart command is empty; give the program and its arguments, e.g. [/usr/local/bin/restart-webui]".into(),
            ),
            Some(program) if program.trim().is_empty() => problem(
                "remediation.restart.command",
                "the restart command's program (its first element) is empty".into(),
            ),
            Some(_) => {
                if let Some(i) = argv.iter().position(|a| a.contains('\0')) {
                    problem(
                        "remediation.restart.command",
                        format!("argument {i} of the restart command contains a NUL byte"),
                    );
                }
            }
        },
    }
    if config.max_restarts == 0 {
        problem(
            "remediation.max_restarts",
            "max_restarts is 0; at least 1 is needed (remove remediation: to never restart)".into(),
        );
    }
    if config.window.is_zero() {
        problem(
            "remediation.window",
            "window is 0; give the span max_restarts counts over, e.g. 1h".into(),
        );
    }
    if config.timeout.is_zero() {
        problem(
            "remediation.timeout",
            "timeout is 0; give how long a restart may take before it is killed, e.g. 2m".into(),
        );
    }
    problems
}

// Restart commands are `sh` scripts; process groups and /proc are Unix.
#[cfg(all(test, unix))]
mod tests {
    use super::*;

    fn cmd(argv: &[&str]) -> RestartTarget {
        RestartTarget::Command(argv.iter().map(|s| s.to_string()).collect())
    }

    /// Gone: no such process, or a zombie waiting for init to reap it (it no longer runs).
    fn process_gone(pid: i32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => {
                let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start());
                matches!(state.and_then(|s| s.chars().next()), Some('Z') | Some('X'))
            }
        }
    }

    fn read_pid(path: &std::path::Path) -> i32 {
        let text = std::fs::read_to_string(path).expect("the command wrote its child's pid");
        text.trim().parse().expect("pid file holds a number")
    }

    #[tokio::test]
    async fn a_succeeding_command_is_ok() {
        let r = restart(
            &cmd(&["sh", "-c", "echo restarted; echo note >&2"]),
            Duration::from_secs(10),
        )
        .await;
        assert!(r.ok, "{r:?}");
        assert_eq!(r.outcome, "ok");
        assert_eq!(r.detail, "exit status 0; stderr: note");
        assert!(r.duration_s >= 0.0 && r.duration_s < 5.0, "{r:?}");
    }

    #[tokio::test]
    async fn a_failing_command_reports_status_and_stderr_tail_on_one_line() {
        let r = restart(
            &cmd(&[
                "sh",
                "-c",
                "echo progress; echo 'unit failed' >&2; echo 'see journal' >&2; exit 3",
            ]),
            Duration::from_secs(10),
        )
        .await;
        assert!(!r.ok);
        assert_eq!(r.outcome, "failed");
        assert!(r.detail.contains("exited with status 3"), "{}", r.detail);
        assert!(
            r.detail.contains("stderr: unit failed | see journal"),
            "{}",
            r.detail
        );
        assert!(!r.detail.contains('\n'));

        let only_stdout = restart(
            &cmd(&["sh", "-c", "echo 'no such unit'; exit 5"]),
            Duration::from_secs(10),
        )
        .await;
        assert!(
            only_stdout
                .detail
                .ends_with("exited with status 5; stdout: no such unit"),
            "{}",
            only_stdout.detail
        );
    }

    #[tokio::test]
    async fn only_the_end_of_long_output_is_kept() {
        let r = restart(
            &cmd(&[
                "sh",
                "-c",
                "i=0; while [ $i -lt 3000 ]; do echo line$i >&2; i=$((i+1)); done; exit 1",
            ]),
            Duration::from_secs(20),
        )
        .await;
        assert_eq!(r.outcome, "failed");
        assert!(
            r.detail.ends_with("line2999"),
            "{}",
            &r.detail[r.detail.len() - 40..]
        );
        assert!(!r.detail.contains("line0 "));
        // The tail plus " | " separators and the status prefix.
        assert!(r.detail.len() < 2 * TAIL_BYTES, "{}", r.detail.len());
    }

    #[tokio::test]
    async fn a_hanging_command_is_killed_at_the_timeout() {
        let r = restart(&cmd(&["sleep", "30"]), Duration::from_millis(500)).await;
        assert!(!r.ok);
        assert_eq!(r.outcome, "timed_out");
        assert!(r.detail.starts_with("timed out after 0.5s"), "{}", r.detail);
        assert!(r.duration_s >= 0.5 && r.duration_s < 5.0, "{r:?}");
    }

    #[tokio::test]
    async fn a_timeout_kills_grandchildren_too() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("grandchild.pid");
        let script = format!("sleep 30 & echo $! > '{}'; sleep 30", pidfile.display());
        let r = restart(&cmd(&["sh", "-c", &script]), Duration::from_millis(500)).await;
        assert_eq!(r.outcome, "timed_out", "{r:?}");
        // The grandchild held stdout too: returning promptly shows its pipe was not waited on.
        assert!(r.duration_s < 5.0, "{r:?}");
        let pid = read_pid(&pidfile);
        let deadline = Instant::now() + Duration::from_secs(2);
        while !process_gone(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(process_gone(pid), "grandchild {pid} survived the timeout");
    }

    #[tokio::test]
    async fn dropping_a_restart_kills_its_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("grandchild.pid");
        let script = format!("sleep 30 & echo $! > '{}'; sleep 30", pidfile.display());
        let target = cmd(&["sh", "-c", &script]);
        let cut_short = tokio::time::timeout(
            Duration::from_millis(500),
            restart(&target, Duration::from_secs(60)),
        )
        .await;
        assert!(
            cut_short.is_err(),
            "the restart should still have been running"
        );
        let pid = read_pid(&pidfile);
        let deadline = Instant::now() + Duration::from_secs(2);
        while !process_gone(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            process_gone(pid),
            "grandchild {pid} outlived the dropped restart"
        );
    }

    #[tokio::test]
    async fn a_background_process_holding_the_pipe_does_not_delay_the_outcome() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("bg.pid");
        let script = format!("sleep 30 & echo $! > '{}'; echo started", pidfile.display());
        let r = restart(&cmd(&["sh", "-c", &script]), Duration::from_secs(10)).await;
        let pid = read_pid(&pidfile);
        let survived = !process_gone(pid);
        // SAFETY: plain kill(2) on the pid our own test command started.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
        assert_eq!(r.outcome, "ok", "{r:?}");
        assert_eq!(r.detail, "exit status 0; stdout: started");
        assert!(r.duration_s < PIPE_GRACE.as_secs_f64() + 3.0, "{r:?}");
        assert!(
            survived,
            "a normal exit must leave what the command started running"
        );
    }

    #[tokio::test]
    async fn a_missing_program_is_not_started() {
        let r = restart(
            &cmd(&["/nonexistent/restart-webui", "now"]),
            Duration::from_secs(5),
        )
        .await;
        assert!(!r.ok);
        assert_eq!(r.outcome, "not_started");
        assert!(
            r.detail.contains("/nonexistent/restart-webui"),
            "{}",
            r.detail
        );
        assert!(r.detail.contains("No such file"), "{}", r.detail);

        let empty = restart(&cmd(&[]), Duration::from_secs(5)).await;
        assert_eq!(empty.outcome, "not_started");
        assert_eq!(empty.detail, "restart command is empty");

        let option_like = restart(
            &RestartTarget::Unit("--help".into()),
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(option_like.outcome, "not_started");
        assert!(
            option_like.detail.contains("--help"),
            "{}",
            option_like.detail
        );
    }

    #[test]
    fn describe_shows_what_runs() {
        assert_eq!(
            describe(&RestartTarget::Unit("sd-webui.service".into())),
            "systemctl restart sd-webui.service"
        );
        assert_eq!(
            describe(&cmd(&["/opt/bin/restart", "--gpu=0", "a b", "it's", ""])),
            r"/opt/bin/restart --gpu=0 'a b' 'it'\''s' ''"
        );
    }

    #[test]
    fn budget_counts_restarts_inside_the_window() {
        let hour = Duration::from_secs(3600);
        let now = 1_700_000_000.0;
        assert!(budget_allows(&[], now, 1, hour));
        assert!(!budget_allows(&[], now, 0, hour));
        assert!(budget_allows(&[now - 10.0, now - 20.0], now, 3, hour));
        assert!(!budget_allows(
            &[now - 10.0, now - 20.0, now - 30.0],
            now,
            3,
            hour
        ));
        // Restarts older than the window no longer count; one exactly a window ago has expired.
        assert!(budget_allows(
            &[now - 10.0, now - 20.0, now - 3600.0],
            now,
            3,
            hour
        ));
        assert!(budget_allows(
            &[now - 10.0, now - 20.0, now - 7200.0],
            now,
            3,
            hour
        ));
        assert!(!budget_allows(
            &[now - 10.0, now - 20.0, now - 3599.5],
            now,
            3,
            hour
        ));
        // A clock stepped back makes past restarts look future: they still count.
        assert!(!budget_allows(&[now + 50.0], now, 1, hour));
    }

    fn config(restart: RestartTarget) -> RemediationConfig {
        RemediationConfig {
            restart,
            max_restarts: default_max_restarts(),
            window: default_window(),
            recheck_delay: default_recheck_delay(),
            timeout: default_restart_timeout(),
            auto_rebaseline: false,
        }
    }

    #[test]
    fn validate_accepts_good_targets() {
        for unit in [
            "sd-webui.service",
            "webui@gpu0.service",
            "comfy.target",
            "a\\x2db.service",
        ] {
            assert_eq!(
                validate(&config(RestartTarget::Unit(unit.into()))),
                vec![],
                "{unit}"
            );
        }
        assert_eq!(
            validate(&config(cmd(&["/usr/local/bin/restart-webui"]))),
            vec![]
        );
    }

    #[test]
    fn validate_reports_each_problem_at_its_key() {
        for unit in [
            "",
            "sd webui.service",
            "/etc/systemd/system/sd-webui.service",
            "sd-webui",
            "sd-webui.scope",
            "sd-webui.device",
            "-x.service",
            ".service",
            "webui@.service",
            "sd;reboot.service",
        ] {
            let p = validate(&config(RestartTarget::Unit(unit.into())));
            assert_eq!(p.len(), 1, "{unit:?}: {p:?}");
            assert_eq!(p[0].0, "remediation.restart.unit");
            assert!(!p[0].1.contains('\n'));
        }
        for argv in [&[][..], &[""][..], &["  ", "x"][..], &["prog", "a\0b"][..]] {
            let p = validate(&config(cmd(argv)));
            assert_eq!(p.len(), 1, "{argv:?}: {p:?}");
            assert_eq!(p[0].0, "remediation.restart.command");
        }
        let mut c = config(RestartTarget::Unit("sd-webui.service".into()));
        c.max_restarts = 0;
        c.window = ConfigDuration(Duration::ZERO);
        c.timeout = ConfigDuration(Duration::ZERO);
        let keys: Vec<String> = validate(&c).into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            [
                "remediation.max_restarts",
                "remediation.window",
                "remediation.timeout"
            ]
        );
    }

    fn fake_systemctl(script: &str, unit: &str, timeout: Duration) -> Option<bool> {
        unit_exists_with(&["sh", "-c", script, "systemctl"], unit, timeout)
    }

    #[test]
    fn unit_exists_reads_load_state() {
        let t = Duration::from_secs(5);
        assert_eq!(
            fake_systemctl("echo loaded", "sd-webui.service", t),
            Some(true)
        );
        assert_eq!(
            fake_systemctl("echo masked", "sd-webui.service", t),
            Some(true)
        );
        assert_eq!(
            fake_systemctl("echo not-found", "sd-webui.service", t),
            Some(false)
        );
        // What systemctl does when systemd is not PID 1 (a container, this CI host).
        let not_booted = "echo 'System has not been booted with systemd as init system (PID 1). Can'\\''t operate.' >&2; exit 1";
        assert_eq!(fake_systemctl(not_booted, "sd-webui.service", t), None);
        assert_eq!(fake_systemctl("exit 0", "sd-webui.service", t), None);
        assert_eq!(
            unit_exists_with(&["/nonexistent/systemctl"], "sd-webui.service", t),
            None
        );
        assert_eq!(fake_systemctl("echo loaded", "--help", t), Some(false));
    }

    #[test]
    fn unit_exists_asks_about_exactly_that_unit() {
        let dir = tempfile::tempdir().unwrap();
        let args = dir.path().join("args");
        let script = format!("printf '%s\\n' \"$@\" > '{}'; echo loaded", args.display());
        assert_eq!(
            fake_systemctl(&script, "sd-webui.service", Duration::from_secs(5)),
            Some(true)
        );
        assert_eq!(
            std::fs::read_to_string(&args).unwrap(),
            "show\n--property=LoadState\n--value\n--\nsd-webui.service\n"
        );
    }

    #[test]
    fn unit_exists_gives_up_on_a_hung_systemctl() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("sleep.pid");
        let script = format!("sleep 30 & echo $! > '{}'; wait", pidfile.display());
        let started = Instant::now();
        assert_eq!(
            fake_systemctl(&script, "sd-webui.service", Duration::from_millis(300)),
            None
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        let pid = read_pid(&pidfile);
        let deadline = Instant::now() + Duration::from_secs(2);
        while !process_gone(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            process_gone(pid),
            "the hung query's child {pid} was left running"
        );
    }

    #[test]
    fn unit_exists_on_this_host() {
        let systemd_running = std::path::Path::new("/run/systemd/system").is_dir();
        let answer = unit_exists("monitor-test-no-such-unit.service");
        if systemd_running {
            assert_eq!(answer, Some(false));
        } else {
            // systemctl (if installed) cannot reach a manager: the caller must be told "unknown".
            assert_eq!(answer, None);
        }
    }
}
