//! Shared test helpers: one ONNX Runtime per test process (ort allows one environment per
//! process), repo paths, and the conformance comparisons.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use monitor::sd::runtime::{Runtime, RuntimeSettings};

/// The repository root (tests run with it as the package root).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A path relative to the repository root.
pub fn repo_path(rel: &str) -> PathBuf {
    repo().join(rel)
}

/// The process-wide CPU runtime, found the way users find it (ORT_DYLIB_PATH, .venv, python3).
/// Panics with the install hint when ONNX Runtime is missing: these tests must not skip silently.
pub fn runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        // Discovery looks in ./.venv relative to the working directory; tests run in the repo root.
        std::env::set_current_dir(repo()).expect("cd to repo root");
        Runtime::init(
            None,
            RuntimeSettings {
                intra_op_threads: Some(1),
                ..RuntimeSettings::default()
            },
        )
        .unwrap_or_else(|e| panic!("{e} (run scripts/install-ort.sh)"))
    })
}

/// Max |a - b| and max |b| over two equally long slices.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> (f32, f32) {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let mut d = 0f32;
    let mut m = 0f32;
    for (x, y) in a.iter().zip(b) {
        d = d.max((x - y).abs());
        m = m.max(y.abs());
    }
    (d, m)
}

/// Pixel comparison: (values differing, max level difference, total values).
pub fn pixel_diff(a: &[u8], b: &[u8]) -> (usize, u8, usize) {
    assert_eq!(a.len(), b.len(), "image size mismatch");
    let mut n = 0;
    let mut worst = 0u8;
    for (x, y) in a.iter().zip(b) {
        let d = x.abs_diff(*y);
        if d > 0 {
            n += 1;
            worst = worst.max(d);
        }
    }
    (n, worst, a.len())
}

/// Copies a folder tree (for tests that assemble or break model folders).
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), &dst).unwrap();
        }
    }
}

/// The ONNX Runtime release that gives other bits than the default one on x86-64 CPUs
/// (a real drift source: same model, same inputs, another runtime).
pub const OLD_ORT_VERSION: &str = "1.24.4";

/// `libonnxruntime.so` of [`OLD_ORT_VERSION`], installed by `.ci/run` (or by hand with
/// `scripts/install-ort.sh 1.24.4 .venv-ort-1.24.4`). Panics with that hint when missing.
pub fn old_ort_lib() -> PathBuf {
    let venv = repo_path(&format!(".venv-ort-{OLD_ORT_VERSION}"));
    let lib_dir = std::fs::read_dir(venv.join("lib"))
        .ok()
        .and_then(|mut d| d.next())
        .and_then(|e| e.ok())
        .map(|e| e.path().join("site-packages/onnxruntime/capi"));
    let lib = lib_dir.map(|d| d.join(format!("libonnxruntime.so.{OLD_ORT_VERSION}")));
    match lib {
        Some(l) if l.is_file() => l,
        _ => panic!(
            "ONNX Runtime {OLD_ORT_VERSION} is missing in {} (run scripts/install-ort.sh {OLD_ORT_VERSION} .venv-ort-{OLD_ORT_VERSION})",
            venv.display()
        ),
    }
}
pub mod peers;
pub mod sd_servers;
pub mod site;

/// Numerical Recipes' 64-bit LCG: seeded delays for kill tests, so a failure reproduces (the top
/// bits are good enough for that).
pub struct Lcg(pub u64);

impl Lcg {
    /// The next 31-bit value.
    pub fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

/// Starts `cmd` with its output discarded, waits `delay`, and SIGKILLs it (whether or not it is
/// still running). Returns its pid.
pub fn kill_after(mut cmd: std::process::Command, delay: std::time::Duration) -> u32 {
    use std::process::Stdio;
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(delay);
    let _ = child.kill();
    let _ = child.wait();
    child.id()
}

/// Waits (at most 30 s) until no process is a worker started by one of `parents` (workers carry
/// their parent's pid in MONITOR_WORKER_PARENT).
pub fn wait_for_workers_of(parents: &[u32]) {
    let wanted: Vec<String> = parents
        .iter()
        .map(|p| format!("MONITOR_WORKER_PARENT={p}"))
        .collect();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let alive = std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
            std::fs::read(e.path().join("environ")).is_ok_and(|env| {
                env.split(|&b| b == 0)
                    .any(|var| wanted.iter().any(|w| var == w.as_bytes()))
            })
        });
        if !alive {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "workers of killed runs still alive after 30 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
