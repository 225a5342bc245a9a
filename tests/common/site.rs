//! A scratch deployment for end-to-end tests: config, baselines, database and reports in a temp
//! folder, driven through the `monitor` binary as an operator would.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use monitor::baseline::BaselineStore;
use serde_json::Value;

use super::{old_ort_lib, repo, repo_path};

/// Thresholds that call any difference drift (a bit-level change of the latents fails them).
pub const TIGHT: &str =
    "thresholds: {latent_max_abs: 0.0, latent_cosine_min: 1.0, ssim_min: 1.0}\n";

/// A config, its storage and the binary.
pub struct Site {
    pub dir: tempfile::TempDir,
}

impl Site {
    /// Two small cases on `model` (default: the repo's tiny model), `extra` appended to the YAML.
    pub fn new(model: Option<&Path>, extra: &str) -> Site {
        Self::with_cases(model, &[FOX, OWL], extra)
    }

    /// `cases` (YAML flow mappings) on `model`, `extra` appended to the YAML.
    pub fn with_cases(model: Option<&Path>, cases: &[&str], extra: &str) -> Site {
        let dir = tempfile::tempdir().unwrap();
        let model = model.map_or_else(|| repo_path("onnx/tiny-sd15"), Path::to_path_buf);
        let mut yaml = format!(
            "model: {{path: {}, threads: 1}}\n\
             storage: {{baselines: baselines, database: monitor.db, reports: reports}}\n\
             cases:\n",
            model.display()
        );
        for c in cases {
            yaml.push_str(&format!("  - {c}\n"));
        }
        yaml.push_str(extra);
        std::fs::write(dir.path().join("monitor.yaml"), yaml).unwrap();
        Site { dir }
    }

    /// A path inside the site.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Rewrites the config with `from` replaced by `to` (which must occur).
    pub fn edit_config(&self, from: &str, to: &str) {
        let cfg = self.path("monitor.yaml");
        let text = std::fs::read_to_string(&cfg).unwrap();
        assert!(text.contains(from), "{from:?} not in the config");
        std::fs::write(&cfg, text.replace(from, to)).unwrap();
    }

    /// The binary with `args` and `--config` of this site, run in the repo root.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_monitor"));
        c.args(args)
            .arg("--config")
            .arg(self.path("monitor.yaml"))
            .current_dir(repo());
        c
    }

    /// Runs `monitor ARGS --config <site>`.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// `monitor rebaseline --yes`, which must succeed.
    pub fn rebaseline(&self) {
        let o = self.run(&["rebaseline", "--reason", "test baselines", "--yes"]);
        assert!(
            o.status.success(),
            "rebaseline failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    /// `monitor rebaseline --case CASE --yes`, which must succeed.
    pub fn rebaseline_only(&self, case: &str) {
        let o = self.run(&[
            "rebaseline",
            "--case",
            case,
            "--reason",
            "test baselines",
            "--yes",
        ]);
        assert!(
            o.status.success(),
            "rebaseline of {case} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    /// `monitor rebaseline` under ONNX Runtime 1.24.4 instead of the default release: a
    /// baseline the current runtime does not reproduce bit for bit (a real drift, not an edit).
    pub fn rebaseline_with_old_ort(&self, args: &[&str]) {
        let text = std::fs::read_to_string(self.path("monitor.yaml")).unwrap();
        let old = self.path("old-ort.yaml");
        std::fs::write(
            &old,
            format!(
                "{text}onnxruntime: {{library: {}}}\n",
                old_ort_lib().display()
            ),
        )
        .unwrap();
        let o = Command::new(env!("CARGO_BIN_EXE_monitor"))
            .args([
                "rebaseline",
                "--reason",
                "made with an older runtime",
                "--yes",
            ])
            .args(args)
            .arg("--config")
            .arg(&old)
            .current_dir(repo())
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "rebaseline under the old runtime failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    /// `monitor check --json`: (exit code, parsed JSON or Null, stderr).
    pub fn check(&self) -> (i32, Value, String) {
        parse_check(self.run(&["check", "--json"]))
    }

    /// The site's baseline store.
    pub fn store(&self) -> BaselineStore {
        BaselineStore::new(self.path("baselines"))
    }

    /// `monitor history --json` rows (all kinds), newest first.
    pub fn history(&self) -> Vec<Value> {
        let o = Command::new(env!("CARGO_BIN_EXE_monitor"))
            .args(["history", "--json", "--limit", "100", "--database"])
            .arg(self.path("monitor.db"))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice::<Value>(&o.stdout)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }
}

/// The two default cases.
pub const FOX: &str = "{name: fox, prompt: \"a red fox\", seed: 1, steps: 3, width: 64, height: 64, scheduler: pndm, noise: numpy}";
/// See [`FOX`].
pub const OWL: &str = "{name: owl, prompt: \"an owl\", negative_prompt: \"blurry\", seed: 2, steps: 3, width: 64, height: 48, scheduler: euler, noise: torch-cpu}";

/// (exit code, `--json` output or Null, stderr) of a `monitor check --json`.
pub fn parse_check(o: Output) -> (i32, Value, String) {
    let json = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
    (
        o.status.code().unwrap_or(-1),
        json,
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// The verdicts of a `check --json` result, in case order.
pub fn verdicts(v: &Value) -> Vec<String> {
    v["cases"]
        .as_array()
        .unwrap_or_else(|| panic!("no cases in {v}"))
        .iter()
        .map(|c| c["verdict"].as_str().unwrap().to_string())
        .collect()
}

/// One case of a `check --json` result.
pub fn case<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no case {name} in {v}"))
}

/// True when this process runs as root (which ignores file permissions).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// True when this process may mount in a private mount namespace (`unshare -m` as root with
/// CAP_SYS_ADMIN), probed once.
pub fn can_mount() -> bool {
    static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OK.get_or_init(|| {
        // MONITOR_TEST_NO_MOUNT=1 tries the fallbacks on a machine that could mount.
        if !is_root() || std::env::var_os("MONITOR_TEST_NO_MOUNT").is_some() {
            return false;
        }
        let probe = tempfile::tempdir().unwrap();
        Command::new("unshare")
            .args(["-m", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs \"$0\""])
            .arg(probe.path())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// `cmd` with `dirs` read-only for it. Where mounts are possible (root), each folder is
/// bind-mounted read-only in a private mount namespace of the command alone (`unshare -m`), so a
/// write fails with EROFS as on a read-only volume. Otherwise the folders lose their write bits
/// until the returned guard is dropped, and a root without mounts (which ignores permissions)
/// runs the command as `nobody`, with the rest of the site opened to it.
pub fn read_only(dirs: &[&Path], cmd: Command) -> (Command, ReadOnlyGuard) {
    if can_mount() {
        let mut script = String::from("set -e; ");
        for i in 0..dirs.len() {
            script.push_str(&format!(
                "mount --bind \"$RO{i}\" \"$RO{i}\"; mount -o remount,bind,ro \"$RO{i}\"; "
            ));
        }
        script.push_str("exec \"$@\"");
        let mut c = Command::new("unshare");
        c.args(["-m", "sh", "-c", &script, "sh"])
            .arg(cmd.get_program())
            .args(cmd.get_args());
        for (i, d) in dirs.iter().enumerate() {
            c.env(format!("RO{i}"), d);
        }
        copy_env(&cmd, &mut c);
        (c, ReadOnlyGuard { dirs: Vec::new() })
    } else {
        use std::os::unix::fs::PermissionsExt;
        let cmd = if is_root() {
            // The site (the folder holding monitor.yaml) becomes usable by nobody, then the
            // folders under test lose their write bits below.
            let site = dirs[0]
                .ancestors()
                .find(|a| a.join("monitor.yaml").exists())
                .expect("a folder of a site");
            let st = Command::new("chmod")
                .arg("-R")
                .arg("a+rwX")
                .arg(site)
                .status();
            assert!(st.is_ok_and(|s| s.success()), "chmod -R {}", site.display());
            let mut c = Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
                .arg(cmd.get_program())
                .args(cmd.get_args());
            copy_env(&cmd, &mut c);
            c
        } else {
            cmd
        };
        for d in dirs {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o555)).unwrap();
        }
        (
            cmd,
            ReadOnlyGuard {
                dirs: dirs.iter().map(|d| d.to_path_buf()).collect(),
            },
        )
    }
}

/// Restores the write bits [`read_only`] removed.
pub struct ReadOnlyGuard {
    dirs: Vec<PathBuf>,
}

impl Drop for ReadOnlyGuard {
    fn drop(&mut self) {
        use std::os::unix::fs::PermissionsExt;
        for d in &self.dirs {
            let _ = std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755));
        }
    }
}

/// The names in `dir`, sorted (empty when it does not exist).
pub fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Every file under `dir` with its bytes, sorted by relative path (a folder's full content).
pub fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd {
            let e = e.unwrap();
            let p = e.path();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                walk(base, &p, out);
            } else if ft.is_file() {
                let rel = p.strip_prefix(base).unwrap().to_string_lossy().into_owned();
                out.push((rel, std::fs::read(&p).unwrap()));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// `OsStr` helper for `Command::env`.
pub fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

/// Prints one line of the fault matrix: what was done, what came of it, what was preserved.
pub fn fault_line(fault: &str, outcome: &str, preserved: &str) {
    eprintln!("FAULT | {fault} | {outcome} | {preserved}");
}

/// Runs `cmd` with `dir` on a full disk, `free` bytes left: `dir` is covered, for the command
/// alone, by a tmpfs in a private mount namespace holding a copy of its content plus a filler
/// file that leaves `free` bytes, and afterwards `dir` holds what the command left there. `None`
/// where mounts are impossible (not root, or no CAP_SYS_ADMIN): a file-size limit is no stand-in,
/// since it also fails the writes outside `dir` the test relies on.
pub fn on_full_disk(dir: &Path, free: u64, cmd: Command) -> Option<Output> {
    if !can_mount() {
        return None;
    }
    let stage = tempfile::tempdir().unwrap();
    let stage = stage.keep();
    copy_all(dir, &stage);
    let content: u64 = snapshot(dir).iter().map(|(_, b)| b.len() as u64).sum();
    let size = content + free + (8 << 20);
    let script = r#"set -e
mount -t tmpfs -o "size=$FULL_SIZE" tmpfs "$FULL_DIR"
cp -a "$FULL_STAGE"/. "$FULL_DIR"/
avail=$(df -B1 --output=avail "$FULL_DIR" | tail -n 1)
fill=$((avail - FULL_FREE))
if [ "$fill" -gt 0 ]; then head -c "$fill" /dev/zero > "$FULL_DIR/.filler" 2>/dev/null || true; fi
set +e
"$@"
rc=$?
rm -f "$FULL_DIR/.filler"
rm -rf "$FULL_STAGE"; mkdir "$FULL_STAGE"; cp -a "$FULL_DIR"/. "$FULL_STAGE"/
exit $rc"#;
    let mut c = Command::new("unshare");
    c.args(["-m", "sh", "-c", script, "sh"])
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .env("FULL_DIR", dir)
        .env("FULL_STAGE", &stage)
        .env("FULL_SIZE", size.to_string())
        .env("FULL_FREE", free.to_string());
    copy_env(&cmd, &mut c);
    let out = c.output().unwrap();
    // The folder now holds what the command left on the full disk.
    std::fs::remove_dir_all(dir).unwrap();
    std::fs::create_dir(dir).unwrap();
    copy_all(&stage, dir);
    std::fs::remove_dir_all(&stage).unwrap();
    Some(out)
}

/// Gives `to` the environment changes and working folder of `from`.
fn copy_env(from: &Command, to: &mut Command) {
    for (k, v) in from.get_envs() {
        match v {
            Some(v) => to.env(k, v),
            None => to.env_remove(k),
        };
    }
    if let Some(d) = from.get_current_dir() {
        to.current_dir(d);
    }
}

/// `cp -a from/. to/`.
fn copy_all(from: &Path, to: &Path) {
    let st = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", from.display()))
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success(), "cp -a {} {}", from.display(), to.display());
}

/// `PRAGMA integrity_check` of a database: "ok" or what is wrong.
pub fn integrity(db: &Path) -> String {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.query_row("PRAGMA integrity_check", [], |r| r.get::<_, String>(0))
        .unwrap_or_else(|e| e.to_string())
}
