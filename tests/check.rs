//! End to end on the tiny model: `monitor rebaseline` then `monitor check`, and every way the
//! stored state can be wrong. Each test works in its own temp folder with its own config.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::site::{case, verdicts, Site, FOX, OWL, TIGHT};
use common::{copy_tree, repo, repo_path};
use serde_json::Value;

#[test]
fn rebaseline_then_check_is_identical_and_recorded() {
    let site = Site::new(None, "");
    site.rebaseline();
    let (code, v, err) = site.check();
    assert_eq!(code, 0, "{err}");
    assert_eq!(verdicts(&v), ["identical", "identical"]);
    assert_eq!(case(&v, "fox")["baseline_version"], 1);

    // Human output: a table with one row per case and the summary line.
    let o = site.run(&["check"]);
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(
        table.contains("fox") && table.contains("owl") && table.contains("2 cases: 2 identical"),
        "{table}"
    );

    // History holds both checks and the rebaseline, newest first.
    let o = Command::new(env!("CARGO_BIN_EXE_monitor"))
        .args(["history", "--json", "--database"])
        .arg(site.path("monitor.db"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rows: Value = serde_json::from_slice(&o.stdout).unwrap();
    let rows = rows.as_array().unwrap();
    let kinds: Vec<&str> = rows
        .iter()
        .map(|r| r["run_kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "check",
            "check",
            "check",
            "check",
            "rebaseline",
            "rebaseline"
        ],
        "{rows:?}"
    );
    let first = &rows[0];
    assert_eq!(first["verdict"], "identical");
    assert_eq!(first["run_exit_code"], 0);
}

#[test]
fn a_changed_model_file_is_model_changed_not_drift() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    copy_tree(&repo_path("onnx/tiny-sd15"), &model);
    let site = Site::new(Some(&model), "");
    site.rebaseline();
    // Same weights, one config byte different: outputs stay identical, the model is not the same.
    let index = model.join("model_index.json");
    let mut text = std::fs::read_to_string(&index).unwrap();
    text.push('\n');
    std::fs::write(&index, text).unwrap();
    let (code, v, err) = site.check();
    assert_eq!(code, 1, "{err}");
    assert_eq!(verdicts(&v), ["model_changed", "model_changed"]);
    let changes = &case(&v, "fox")["report"]["model_changes"];
    assert_eq!(changes[0]["file"], "model_index.json", "{changes}");
}

#[test]
fn a_baseline_from_another_onnx_runtime_is_drift_with_metrics_and_artifacts() {
    let site = Site::new(None, TIGHT);
    site.rebaseline_with_old_ort(&[]);
    let (code, v, err) = site.check();
    assert_eq!(code, 1, "{err}");
    assert_eq!(verdicts(&v), ["drift", "drift"]);
    let fox = case(&v, "fox");
    let max_abs = fox["report"]["latents"]["max_abs"].as_f64().unwrap();
    assert!(max_abs > 0.0 && max_abs < 0.1, "max_abs {max_abs}");
    let failures = fox["report"]["failures"].as_array().unwrap();
    assert!(
        failures
            .iter()
            .any(|f| f["message"].as_str().unwrap().contains("latent max|Δ|")),
        "{failures:?}"
    );
    // The reason is named beside the verdict.
    let env = fox["report"]["env_differences"].as_array().unwrap();
    assert!(
        env.iter()
            .any(|d| d["key"] == "onnxruntime.version" && d["baseline"] == common::OLD_ORT_VERSION),
        "{env:?}"
    );
    let artifacts = PathBuf::from(fox["artifacts"].as_str().unwrap());
    for f in ["latents.npy", "image.png", "metadata.json", "compare.json"] {
        assert!(
            artifacts.join(f).exists(),
            "{f} missing in {}",
            artifacts.display()
        );
    }
}

#[test]
fn per_case_thresholds_are_respected() {
    // Loose globally, tight for fox: the same runtime change is tolerated for owl only.
    let site = Site::new(
        None,
        "thresholds: {latent_max_abs: 0.5, latent_cosine_min: 0.99, ssim_min: 0.5}\n",
    );
    let cfg = site.path("monitor.yaml");
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "noise: numpy}",
        "noise: numpy, thresholds: {latent_max_abs: 0.0}}",
    );
    std::fs::write(&cfg, text).unwrap();
    site.rebaseline_with_old_ort(&[]);
    let (code, v, err) = site.check();
    assert_eq!(code, 1, "{err}");
    assert_eq!(verdicts(&v), ["drift", "within_tolerance"]);
}

#[test]
fn restore_makes_an_old_version_current_again() {
    let site = Site::new(None, TIGHT);
    site.rebaseline_with_old_ort(&[]); // v1: another runtime's output
    site.rebaseline(); // v2: this runtime's output, identical to a fresh run
    assert_eq!(site.check().0, 0);
    let o = site.run(&[
        "rebaseline",
        "--case",
        "fox",
        "--restore",
        "1",
        "--reason",
        "undo",
        "--yes",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v3 = site.store().load("fox", 3).unwrap();
    assert_eq!(v3.metadata.baseline.unwrap().restored_from, Some(1));
    // v1 came from the other runtime, so the restored baseline drifts from a fresh run: the
    // restore is real.
    let (code, v, _) = site.check();
    assert_eq!((code, verdicts(&v)[0].as_str()), (1, "drift"));
    assert_eq!(case(&v, "fox")["baseline_version"], 3);
}

#[test]
fn rebaseline_refuses_without_confirmation_or_reason() {
    let site = Site::new(None, "");
    let o = site.run(&["rebaseline", "--reason", "x"]); // stdin is not a terminal, no --yes
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--yes"));
    assert!(site.store().cases().unwrap().is_empty());
}

/// A way to damage one baseline file.
type Damage = Box<dyn Fn(&Path)>;

#[test]
fn damaged_baselines_are_errors_naming_the_file() {
    let site = Site::new(None, "");
    site.rebaseline();
    let dir = site.store().version_dir("fox", 1).unwrap();
    let cases: [(&str, Damage); 4] = [
        (
            "latents.npy",
            Box::new(|p: &Path| std::fs::remove_file(p).unwrap()),
        ),
        (
            "latents.npy",
            Box::new(|p: &Path| std::fs::write(p, b"\x93NUMPY garbage").unwrap()),
        ),
        (
            "image.png",
            Box::new(|p: &Path| {
                let small = monitor::sd::image::RgbImage {
                    width: 8,
                    height: 8,
                    pixels: vec![0; 192],
                };
                std::fs::write(p, small.to_png().unwrap()).unwrap()
            }),
        ),
        (
            "metadata.json",
            Box::new(|p: &Path| std::fs::write(p, b"{not json").unwrap()),
        ),
    ];
    for (file, damage) in cases {
        let p = dir.join(file);
        let saved = std::fs::read(&p).unwrap();
        damage(&p);
        let (code, v, err) = site.check();
        assert_eq!(code, 2, "{file}: {err}");
        assert_eq!(verdicts(&v), ["error", "identical"], "{file}");
        let msg = case(&v, "fox")["error"].as_str().unwrap().to_string();
        assert!(msg.contains(&p.display().to_string()), "{file}: {msg}");
        std::fs::write(&p, saved).unwrap();
    }
}

#[test]
fn a_case_without_a_baseline_says_how_to_make_one() {
    let site = Site::new(None, "");
    let (code, v, _) = site.check();
    assert_eq!(code, 2);
    let msg = case(&v, "owl")["error"].as_str().unwrap();
    assert!(msg.contains("monitor rebaseline"), "{msg}");
}

#[test]
fn a_changed_case_parameter_is_not_called_drift() {
    let site = Site::new(None, "");
    site.rebaseline();
    let cfg = site.path("monitor.yaml");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("seed: 1,", "seed: 5,");
    std::fs::write(&cfg, text).unwrap();
    let (code, v, _) = site.check();
    assert_eq!(code, 2);
    let msg = case(&v, "fox")["error"].as_str().unwrap();
    assert!(msg.contains("seed 1 → 5"), "{msg}");
}

#[test]
fn a_corrupt_database_is_named_and_left_untouched() {
    let site = Site::new(None, "");
    let db = site.path("monitor.db");
    std::fs::write(
        &db,
        b"this is not a sqlite database, it is a text file that got here",
    )
    .unwrap();
    let before = std::fs::read(&db).unwrap();
    let (code, _, err) = site.check();
    assert_eq!(code, 2);
    assert!(err.contains(&db.display().to_string()), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert_eq!(std::fs::read(&db).unwrap(), before);
}

#[test]
fn a_locked_database_fails_before_running_the_model() {
    let site = Site::new(None, "");
    site.rebaseline();
    let conn = rusqlite::Connection::open(site.path("monitor.db")).unwrap();
    conn.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let start = std::time::Instant::now();
    let (code, _, err) = site.check();
    assert_eq!(code, 2);
    assert!(
        err.contains("locked") && err.contains("monitor.db"),
        "{err}"
    );
    assert!(start.elapsed().as_secs() < 30);
    conn.execute_batch("ROLLBACK").unwrap();
    let (code, _, err) = site.check();
    assert_eq!(code, 0, "after the lock is gone: {err}");
}

#[test]
fn a_worker_past_its_timeout_is_killed_and_reported() {
    let site = Site::new(None, "worker: {timeout_s: 0.05}\n");
    let (code, v, err) = site.check();
    assert_eq!(code, 2, "{err}");
    assert_eq!(verdicts(&v), ["error", "error"]);
    let msg = case(&v, "fox")["error"].as_str().unwrap();
    assert!(
        msg.contains("worker killed after the 0.05 s timeout"),
        "{msg}"
    );
}

/// Kill -9 of `monitor rebaseline` at seeded random moments: whatever the moment, the store
/// holds only complete baselines, numbered without gaps, and every case has as many versions as
/// the others (a rebaseline's cases land together or not at all).
#[test]
fn kill_9_of_rebaseline_never_leaves_a_half_baseline() {
    let site = Site::new(None, "");
    let config = site.path("monitor.yaml");
    // Kill moments spread over one uninterrupted run's duration (and a little past it), so the
    // test covers start-up, generation and the writes on a machine of any speed.
    let start = std::time::Instant::now();
    site.rebaseline();
    let span_ms = (start.elapsed().as_millis() as u64 * 6 / 5).max(50);
    let mut rng = common::Lcg(0x5eed);
    let mut landed_after_write = 0;
    let mut killed_pids = Vec::new();
    let iterations = 50;
    for _ in 0..iterations {
        let delay_ms = rng.next() % span_ms;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_monitor"));
        cmd.args(["rebaseline", "--reason", "crash test", "--yes", "--config"])
            .arg(&config)
            .current_dir(repo());
        killed_pids.push(common::kill_after(
            cmd,
            std::time::Duration::from_millis(delay_ms),
        ));
        // What a check does before reading: finish a batch whose writer was killed after
        // committing it. Then both cases have the same number of versions: a rebaseline writes
        // all of its cases or none.
        site.store().recover().unwrap();
        assert_eq!(
            site.store().version_numbers("fox").unwrap().len(),
            site.store().version_numbers("owl").unwrap().len(),
            "a killed rebaseline wrote one case without the other"
        );
        for name in ["fox", "owl"] {
            let versions = site.store().version_numbers(name).unwrap();
            let expected: Vec<u32> = (1..=versions.len() as u32).collect();
            assert_eq!(versions, expected, "versions of {name} have a gap");
            for v in &versions {
                site.store()
                    .load(name, *v)
                    .unwrap_or_else(|e| panic!("{name} v{v} is not complete: {e}"));
            }
        }
        landed_after_write = site.store().version_numbers("fox").unwrap().len() - 1;
    }
    // A killed run's worker dies with it, but may finish the system call it was in; the sweep
    // keeps a folder such a last write touches for the run after. Let the workers die first, so
    // that the next run alone must sweep every folder.
    common::wait_for_workers_of(&killed_pids);
    site.rebaseline();
    let leftovers: Vec<String> = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| {
            killed_pids
                .iter()
                .any(|p| n.starts_with(&format!("monitor-rebaseline-{p}-")))
        })
        .collect();
    let contents: Vec<String> = leftovers
        .iter()
        .map(|n| {
            let d = std::env::temp_dir().join(n);
            let files: Vec<String> = std::fs::read_dir(&d)
                .map(|rd| {
                    rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            let marker = std::fs::read_to_string(d.join(".monitor-work")).unwrap_or_default();
            format!("{n}: {files:?} marker {marker:?}")
        })
        .collect();
    assert!(
        leftovers.is_empty(),
        "work folders of killed runs left behind: {contents:?}"
    );
    eprintln!("kill -9 loop: {iterations} kills spread over {span_ms} ms; {landed_after_write} came after the fox baseline was written");
    // The delays must have covered both sides of the write, or the test proved nothing.
    assert!(
        landed_after_write > 0 && landed_after_write < iterations,
        "{landed_after_write} of {iterations} killed runs wrote fox"
    );
}

/// A real write failure (the file-size limit, as a full disk would fail a write) during
/// `monitor rebaseline`: exit 2, one line, and the existing baselines untouched.
#[test]
fn a_write_failure_during_rebaseline_loses_nothing() {
    let site = Site::new(None, "");
    // A 256×256 image (about 200 KB as PNG) is larger than the limit below; SQLite's 32 KiB
    // shared-memory file is not.
    let cfg = site.path("monitor.yaml");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("width: 64, height: 64", "width: 256, height: 256");
    std::fs::write(&cfg, text).unwrap();
    site.rebaseline();
    let before: Vec<Vec<u8>> = ["latents.npy", "image.png", "metadata.json"]
        .iter()
        .map(|f| std::fs::read(site.store().version_dir("fox", 1).unwrap().join(f)).unwrap())
        .collect();
    // `ulimit -f 100` (512-byte blocks in sh): no file may grow past 50 KiB; SIGXFSZ ignored so
    // the write returns EFBIG.
    let o = Command::new("sh")
        .arg("-c")
        .arg(r#"trap '' XFSZ; ulimit -f 100; exec "$0" rebaseline --reason "under a size limit" --yes --config "$1""#)
        .arg(env!("CARGO_BIN_EXE_monitor"))
        .arg(site.path("monitor.yaml"))
        .current_dir(repo())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("File too large") || err.contains("failed"),
        "{err}"
    );
    for name in ["fox", "owl"] {
        assert_eq!(site.store().version_numbers(name).unwrap(), [1], "{name}");
    }
    let after: Vec<Vec<u8>> = ["latents.npy", "image.png", "metadata.json"]
        .iter()
        .map(|f| std::fs::read(site.store().version_dir("fox", 1).unwrap().join(f)).unwrap())
        .collect();
    assert_eq!(before, after);
    let temps = std::fs::read_dir(site.path("baselines/fox"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with(".tmp-")
        })
        .count();
    assert_eq!(temps, 0);
}

/// A worker that dies in one case (here SIGABRT, as a failed allocation aborts) costs that case
/// alone: it is reported with the signal, and the cases after it run in a new worker.
#[test]
fn a_worker_crash_in_one_case_costs_that_case_alone() {
    let site = Site::with_cases(None, &[FOX, OWL, FOX2], "");
    site.rebaseline();
    let o = site
        .command(&["check", "--json"])
        .env("MONITOR_TEST_ABORT_IN_CASE", "owl")
        .output()
        .unwrap();
    let (code, v, err) = common::site::parse_check(o);
    assert_eq!(code, 2, "{err}");
    assert_eq!(verdicts(&v), ["identical", "error", "identical"]);
    let msg = case(&v, "owl")["error"].as_str().unwrap();
    assert!(
        msg.contains("signal 6") && msg.contains("while running case owl"),
        "{msg}"
    );
    // The metrics count the crash (and no timeout).
    let prom = site.path("m.prom");
    let o = site
        .command(&["check", "--metrics-textfile", prom.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let text = std::fs::read_to_string(&prom).unwrap();
    assert!(
        text.contains("monitor_worker_failures{kind=\"crash\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("monitor_worker_failures{kind=\"timeout\"} 0"),
        "{text}"
    );
}

const FOX2: &str = "{name: fox2, prompt: \"a red fox\", seed: 7, steps: 2, width: 64, height: 64, scheduler: ddim, noise: numpy}";

/// A worker whose parent died before it could arm its parent-death signal stops at once instead
/// of running every case, as an orphan, into a work folder the next monitor sweeps.
#[test]
fn an_orphaned_worker_stops_before_doing_anything() {
    let out = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_monitor"))
        .args(["worker", "--job"])
        .arg(out.path().join("job.json"))
        .arg("--out")
        .arg(out.path())
        // Not this test's pid: as if the monitor that started it were gone.
        .env("MONITOR_WORKER_PARENT", "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("process 1 that started this worker is gone"),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0);
}
