//! One test per defect an adversarial probe found (issue 7): each reproduces the probe's recipe
//! through the `monitor` binary and asserts the safe outcome. They drive only the command line
//! and the files, so they run unchanged against older builds (which fail them).

mod common;

use std::path::Path;
use std::process::Command;

use common::site::{
    case, fault_line, names, parse_check, read_only, snapshot, verdicts, Site, FOX, OWL, TIGHT,
};
use common::{repo, repo_path};
use monitor::sd::image::RgbImage;
use monitor::sd::npy::{read_npy, write_npy_f32};
use serde_json::Value;

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

// ---- 1. the temp-folder sweep ----

#[test]
fn d01_the_work_folder_sweep_removes_only_its_own_folders() {
    let site = Site::new(None, "");
    site.rebaseline();
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    // The probe's recipe: a folder that merely looks like ours.
    std::fs::create_dir_all(t.join("monitor-backup-2023")).unwrap();
    std::fs::write(t.join("monitor-backup-2023/keep"), b"precious").unwrap();
    // Our exact name format, but not made by us (no marker): kept.
    std::fs::create_dir_all(t.join("monitor-check-999999-abcdef")).unwrap();
    std::fs::write(t.join("monitor-check-999999-abcdef/keep"), b"precious").unwrap();
    // A symlink with our name pointing at someone's data: neither followed nor removed.
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("keep"), b"precious").unwrap();
    std::os::unix::fs::symlink(data.path(), t.join("monitor-check-999998-abcdef")).unwrap();

    let o = site.command(&["check"]).env("TMPDIR", t).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    for kept in [
        t.join("monitor-backup-2023/keep"),
        t.join("monitor-check-999999-abcdef/keep"),
        data.path().join("keep"),
    ] {
        assert_eq!(
            std::fs::read(&kept).unwrap(),
            b"precious",
            "{}",
            kept.display()
        );
    }
    assert!(t
        .join("monitor-check-999998-abcdef")
        .symlink_metadata()
        .is_ok());
    fault_line(
        "look-alike, unmarked and symlinked monitor-* entries in $TMPDIR, then check",
        "exit 0",
        "all three kept, the symlink's target untouched",
    );
}

// ---- 2. a failed multi-case rebaseline ----

const CAT: &str = "{name: zebra, prompt: \"a zebra\", seed: 3, steps: 3, width: 64, height: 64, scheduler: ddim, noise: numpy}";

#[test]
fn d02_a_rebaseline_whose_last_case_cannot_be_written_writes_nothing_and_is_recorded() {
    let site = Site::with_cases(None, &[FOX, OWL, CAT], "");
    site.rebaseline();
    let before = snapshot(&site.path("baselines"));
    // The third case's folder is read-only: its write fails after the other two were prepared.
    let zebra = site.path("baselines/zebra");
    let (mut cmd, _guard) = read_only(
        &[&zebra],
        site.command(&["rebaseline", "--reason", "second round", "--yes"]),
    );
    let o = cmd.output().unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("zebra"), "{err}");
    drop(_guard);
    for name in ["fox", "owl", "zebra"] {
        assert_eq!(site.store().version_numbers(name).unwrap(), [1], "{name}");
    }
    let after: Vec<_> = snapshot(&site.path("baselines"))
        .into_iter()
        .filter(|(p, _)| !p.ends_with(".lock"))
        .collect();
    let before: Vec<_> = before
        .into_iter()
        .filter(|(p, _)| !p.ends_with(".lock"))
        .collect();
    assert_eq!(after, before, "the store changed");
    // The attempt is in the history, failed, with the reason.
    let runs = runs(&site);
    let last = runs.last().unwrap();
    assert_eq!(last["kind"], "rebaseline");
    assert_eq!(last["status"], "failed", "{last}");
    assert!(last["error"].as_str().unwrap().contains("zebra"), "{last}");
    fault_line(
        "rebaseline of 3 cases, the 3rd case's folder read-only",
        "exit 2, the message names zebra",
        "no case got a new version; run recorded as failed",
    );
}

/// Every run row (oldest first) of the site's database, read with sqlite directly.
fn runs(site: &Site) -> Vec<Value> {
    let conn = rusqlite::Connection::open(site.path("monitor.db")).unwrap();
    let mut stmt = conn
        .prepare("SELECT id, kind, finished_at, exit_code, status, error FROM runs ORDER BY id")
        .unwrap();
    stmt.query_map([], |r| {
        Ok(serde_json::json!({
            "id": r.get::<_, i64>(0)?,
            "kind": r.get::<_, String>(1)?,
            "finished_at": r.get::<_, Option<String>>(2)?,
            "exit_code": r.get::<_, Option<i64>>(3)?,
            "status": r.get::<_, Option<String>>(4)?,
            "error": r.get::<_, Option<String>>(5)?,
        }))
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

// ---- 3. baselines verified against their recorded hashes ----

/// A way to change one file of a stored baseline.
type Edit = Box<dyn Fn(&Path)>;

fn edit_latents(f: impl Fn(&mut Vec<f32>) + 'static) -> Edit {
    Box::new(move |p: &Path| {
        let mut a = read_npy(p).unwrap();
        f(&mut a.data);
        let mut bytes = Vec::new();
        write_npy_f32(&mut bytes, &a.shape, &a.data).unwrap();
        std::fs::write(p, bytes).unwrap();
    })
}

fn edit_image(f: impl Fn(&mut RgbImage) + 'static) -> Edit {
    Box::new(move |p: &Path| {
        let mut img = RgbImage::from_png(&std::fs::read(p).unwrap()).unwrap();
        f(&mut img);
        std::fs::write(p, img.to_png().unwrap()).unwrap();
    })
}

#[test]
fn d03_a_baseline_file_changed_on_disk_is_damaged_never_compared() {
    // Loose thresholds: compared as genuine, most of these edits would even pass.
    let site = Site::new(
        None,
        "thresholds: {latent_max_abs: 1.0, latent_cosine_min: 0.5, ssim_min: 0.1}\n",
    );
    site.rebaseline();
    let dir = site.store().version_dir("fox", 1).unwrap();
    let edits: Vec<(&str, &str, Edit)> = vec![
        (
            "one float +0.5",
            "latents.npy",
            edit_latents(|d| d[0] += 0.5),
        ),
        (
            "one float +1e-6",
            "latents.npy",
            edit_latents(|d| d[7] += 1e-6),
        ),
        ("a NaN", "latents.npy", edit_latents(|d| d[3] = f32::NAN)),
        ("one pixel", "image.png", edit_image(|i| i.pixels[0] ^= 1)),
        (
            "a grayscale re-save",
            "image.png",
            edit_image(|i| {
                for px in i.pixels.chunks_exact_mut(3) {
                    let g = ((u32::from(px[0]) + u32::from(px[1]) + u32::from(px[2])) / 3) as u8;
                    px.fill(g);
                }
            }),
        ),
    ];
    for (what, file, edit) in edits {
        let p = dir.join(file);
        let saved = std::fs::read(&p).unwrap();
        edit(&p);
        let (code, v, err) = site.check();
        assert_eq!(code, 2, "{what}: {err}");
        assert_eq!(verdicts(&v), ["error", "identical"], "{what}");
        let msg = case(&v, "fox")["error"].as_str().unwrap();
        assert!(
            msg.contains(&p.display().to_string()) && msg.contains("baseline damaged"),
            "{what}: {msg}"
        );
        std::fs::write(&p, saved).unwrap();
    }
    assert_eq!(site.check().0, 0, "restored files are genuine again");
    fault_line(
        "baseline edited: float +0.5, float +1e-6, NaN, one pixel, grayscale re-save",
        "exit 2, error 'baseline damaged' naming the file (5/5)",
        "never compared; restored files verify again",
    );
}

// ---- 4. sizes: bounded, checked before running, one case's failure stays its own ----

#[test]
fn d04_a_huge_case_is_refused_by_validation_with_the_limit() {
    let site = Site::with_cases(
        None,
        &[
            FOX,
            "{name: huge, prompt: \"x\", seed: 1, steps: 1, width: 262144, height: 262144}",
        ],
        "",
    );
    let o = site.run(&["config", "validate"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("cases[1].width") && err.contains("limits.max_width"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    fault_line(
        "case of 262144x262144",
        "config validate: exit 2, cases[1].width above limits.max_width",
        "nothing runs",
    );
}

#[test]
fn d04_a_case_needing_more_memory_than_there_is_errors_alone() {
    // Within the size limits but far beyond any machine's memory (the limit is raised).
    let site = Site::with_cases(
        None,
        &[
            FOX,
            "{name: big, prompt: \"x\", seed: 1, steps: 1, width: 16384, height: 16384, noise: torch-cpu}",
        ],
        "limits: {max_width: 16384, max_height: 16384, max_pixels: 268435456}\n",
    );
    site.rebaseline_only("fox");
    let (code, v, err) = site.check();
    assert_eq!(code, 2, "{err}");
    assert_eq!(verdicts(&v), ["identical", "error"], "{v}");
    let msg = case(&v, "big")["error"].as_str().unwrap();
    assert!(msg.contains("memory") && msg.contains("GiB"), "{msg}");
    fault_line(
        "case of 16384x16384 with raised size limits",
        "exit 2, that case error with the GiB estimate",
        "the other case identical",
    );
}

/// A copy of the tiny export whose UNet up-samples by fixed scales, as an export traced at a
/// divisible size does.
fn fixed_upsample_model(dir: &Path) -> std::path::PathBuf {
    let model = dir.join("model");
    common::copy_tree(&repo_path("onnx/tiny-sd15"), &model);
    std::fs::copy(
        repo_path("tests/fixtures/models/quirks/unet-fixed-upsample.onnx"),
        model.join("unet/model.onnx"),
    )
    .unwrap();
    model
}

#[test]
fn d04_a_size_the_unet_cannot_halve_is_named_before_running() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixed_upsample_model(tmp.path());
    let site = Site::with_cases(
        Some(&model),
        &[
            FOX,
            "{name: odd, prompt: \"x\", seed: 1, steps: 1, width: 96, height: 72}",
        ],
        "",
    );
    // `config validate` knows it without running anything.
    let o = site.run(&["config", "validate"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("cases[1].height") && err.contains("latent height 9"),
        "{err}"
    );
    // And `check` makes it that case's error alone, without ONNX Runtime's message.
    site.rebaseline_only("fox");
    let (code, v, err) = site.check();
    assert_eq!(code, 2, "{err}");
    assert_eq!(verdicts(&v), ["identical", "error"]);
    let msg = case(&v, "odd")["error"].as_str().unwrap();
    assert!(
        msg.contains("height 72 gives latent height 9")
            && msg.contains("down-sampling")
            && !msg.contains('\u{1b}')
            && !msg.contains("Concat"),
        "{msg}"
    );
    assert!(!err.contains('\u{1b}'), "{err}");
    // The same with `monitor generate`, before the model runs.
    let out = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_monitor"))
        .args(["generate", "--model"])
        .arg(&model)
        .args([
            "--prompt", "x", "--seed", "1", "--steps", "1", "--width", "96", "--height", "72",
            "--out",
        ])
        .arg(out.path())
        .current_dir(repo())
        .output()
        .unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("latent height 9"), "{err}");
    fault_line(
        "96x72 on an export with fixed-scale up-sampling",
        "validate and generate exit 2, check: that case error naming latent height 9",
        "the other case identical; no ONNX Runtime message",
    );
}

#[test]
fn d04_monitor_noise_refuses_a_shape_over_the_limit() {
    let out = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_monitor"))
        .args([
            "noise",
            "--source",
            "numpy",
            "--seed",
            "1",
            "--shape",
            "1,4,100000,100000",
            "--out",
        ])
        .arg(out.path().join("n.npy"))
        .output()
        .unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("1,4,100000,100000") || err.contains("[1, 4, 100000, 100000]"),
        "{err}"
    );
    assert!(err.contains("--max-elements"), "{err}");
    assert!(!out.path().join("n.npy").exists());
    fault_line(
        "monitor noise --shape 1,4,100000,100000",
        "exit 2 naming --max-elements",
        "no allocation, no file",
    );
}

// ---- 5. version numbers never wrap ----

#[test]
fn d05_the_highest_version_number_is_refused_not_wrapped() {
    let site = Site::new(None, "");
    site.rebaseline();
    let fox = site.path("baselines/fox");
    common::copy_tree(&fox.join("v0001"), &fox.join("v4294967295"));
    let o = site.run(&["rebaseline", "--case", "fox", "--reason", "again", "--yes"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("v4294967295") && err.contains("highest"),
        "{err}"
    );
    assert_eq!(names(&fox), [".lock", "v0001", "v4294967295"]);
    fault_line(
        "v4294967295 present, rebaseline",
        "exit 2 'the highest possible'",
        "no v0 written",
    );
}

// ---- 6. non-finite outputs ----

#[test]
fn d06_a_non_finite_generation_is_never_a_baseline_and_is_an_error_in_check() {
    let site = Site::with_cases(
        None,
        &[FOX, "{name: blowup, prompt: \"x\", seed: 1, steps: 2, width: 64, height: 64, noise: file, noise_file: huge.npy}"],
        "",
    );
    // Initial latents so large that the UNet overflows: every later value is inf or NaN.
    let mut npy = Vec::new();
    write_npy_f32(&mut npy, &[1, 4, 8, 8], &vec![3.0e38; 256]).unwrap();
    std::fs::write(site.path("huge.npy"), npy).unwrap();
    let o = site.run(&["rebaseline", "--reason", "x", "--yes"]);
    let err = String::from_utf8_lossy(&o.stdout).into_owned() + &stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("NaN/inf"), "{err}");
    assert!(
        site.store().cases().unwrap().is_empty(),
        "something was written"
    );

    site.rebaseline_only("fox");
    // Give blowup a baseline made from finite noise, then check with the overflowing noise.
    let mut npy = Vec::new();
    write_npy_f32(&mut npy, &[1, 4, 8, 8], &vec![0.5; 256]).unwrap();
    std::fs::write(site.path("huge.npy"), &npy).unwrap();
    site.rebaseline_only("blowup");
    let mut npy = Vec::new();
    write_npy_f32(&mut npy, &[1, 4, 8, 8], &vec![3.0e38; 256]).unwrap();
    std::fs::write(site.path("huge.npy"), npy).unwrap();
    let (code, v, err) = site.check();
    assert_eq!(code, 2, "{err}");
    assert_eq!(verdicts(&v), ["identical", "error"]);
    let msg = case(&v, "blowup")["error"].as_str().unwrap();
    assert!(msg.contains("NaN/inf"), "{msg}");
    fault_line(
        "noise overflowing the UNet to inf/NaN",
        "rebaseline exit 2, check: that case error 'NaN/inf'",
        "no baseline written; other case identical",
    );
}

#[test]
fn d06_an_absurd_scheduler_config_is_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    common::copy_tree(&repo_path("onnx/tiny-sd15"), &model);
    let cfg = model.join("scheduler/scheduler_config.json");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let mut v: Value = serde_json::from_str(&text).unwrap();
    v["beta_start"] = serde_json::json!(5.0);
    std::fs::write(&cfg, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    let site = Site::new(Some(&model), "");
    let o = site.run(&["rebaseline", "--reason", "x", "--yes"]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned() + &stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{out}");
    assert!(out.contains("beta_start") && out.contains('5'), "{out}");
    assert!(site.store().cases().unwrap().is_empty());
    fault_line(
        "scheduler_config.json beta_start 5.0",
        "rebaseline exit 2 naming beta_start",
        "nothing written",
    );
}

// ---- 7. an unwritable reports folder ----

#[test]
fn d07_an_unwritable_reports_folder_costs_the_evidence_not_the_check() {
    let site = Site::new(None, TIGHT);
    site.rebaseline_with_old_ort(&[]);
    // The reports folder cannot be created: a file sits at its path.
    std::fs::write(site.path("reports"), b"not a folder").unwrap();
    let o = site.run(&["check"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{out}{}", stderr(&o));
    assert!(out.contains("2 cases: 2 drift"), "{out}");
    assert!(out.contains("outputs not kept"), "{out}");
    let rows = site.history();
    assert_eq!(rows[0]["verdict"], "drift", "{rows:?}");
    assert_eq!(rows[0]["run_exit_code"], 1);
    assert!(rows[0]["run_finished_at"].is_string());
    fault_line(
        "storage.reports is a file, drifting check",
        "exit 1, table printed, warning 'outputs not kept'",
        "run and results in the history",
    );
}

// ---- 8. damaged metadata ----

#[test]
fn d08_damaged_metadata_is_an_error_naming_metadata_json_and_the_field() {
    let site = Site::new(None, "");
    site.rebaseline();
    let meta_path = site
        .store()
        .version_dir("fox", 1)
        .unwrap()
        .join("metadata.json");
    let original = std::fs::read(&meta_path).unwrap();
    type MetaEdit = fn(&mut Value);
    let edits: [(&str, MetaEdit); 3] = [
        ("model.files_sha256", |m| {
            m.as_object_mut().unwrap().remove("model");
        }),
        ("parameters", |m| {
            m.as_object_mut().unwrap().remove("parameters");
        }),
        ("execution_provider", |m| {
            m["execution_provider"] = Value::String("cpu".into());
        }),
    ];
    for (field, edit) in edits {
        let mut m: Value = serde_json::from_slice(&original).unwrap();
        edit(&mut m);
        std::fs::write(&meta_path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
        let (code, v, err) = site.check();
        assert_eq!(code, 2, "{field}: {err}");
        assert_eq!(verdicts(&v), ["error", "identical"], "{field}");
        let msg = case(&v, "fox")["error"].as_str().unwrap();
        assert!(
            msg.contains("metadata.json") && msg.contains(field) && !msg.contains("rebaseline"),
            "{field}: {msg}"
        );
    }
    std::fs::write(&meta_path, &original).unwrap();

    // Another case's baseline copied in as fox's newest version.
    let fox = site.path("baselines/fox");
    common::copy_tree(&site.path("baselines/owl/v0001"), &fox.join("v0002"));
    let (code, v, _) = site.check();
    assert_eq!(code, 2);
    let msg = case(&v, "fox")["error"].as_str().unwrap();
    assert!(
        msg.contains("metadata.json") && msg.contains("\"owl\""),
        "{msg}"
    );
    std::fs::remove_dir_all(fox.join("v0002")).unwrap();

    // Latents of the wrong shape: latents.npy is at fault, not image.png.
    let lat = site
        .store()
        .version_dir("fox", 1)
        .unwrap()
        .join("latents.npy");
    let mut npy = Vec::new();
    write_npy_f32(&mut npy, &[1, 4, 6, 8], &[0.25; 192]).unwrap();
    std::fs::write(&lat, npy).unwrap();
    let (code, v, _) = site.check();
    assert_eq!(code, 2);
    let msg = case(&v, "fox")["error"].as_str().unwrap();
    assert!(
        msg.contains("latents.npy") && !msg.contains("image.png"),
        "{msg}"
    );
    fault_line(
        "metadata without model/parameters, bad execution_provider, owl's baseline as fox v2, latents of the wrong shape",
        "exit 2 naming metadata.json and the field (or latents.npy)",
        "never model_changed or 'rebaseline'",
    );
}

// ---- 9. a dangling symlink as the newest version ----

#[test]
fn d09_a_dangling_symlink_as_newest_version_is_an_error_not_a_fallback() {
    let site = Site::new(None, "");
    site.rebaseline();
    let link = site.path("baselines/fox/v0002");
    std::os::unix::fs::symlink("/nonexistent/v0002", &link).unwrap();
    let (code, v, err) = site.check();
    assert_eq!(code, 2, "{err}");
    let fox = case(&v, "fox");
    assert_eq!(fox["verdict"], "error");
    let msg = fox["error"].as_str().unwrap();
    assert!(
        msg.contains("v0002") && msg.contains("dangling symlink"),
        "{msg}"
    );
    assert!(
        fox["baseline_version"].is_null(),
        "fell back to {}",
        fox["baseline_version"]
    );
    fault_line(
        "dangling symlink as v0002",
        "exit 2 naming v0002 'dangling symlink'",
        "no fallback to v0001",
    );
}

// ---- 10. a case named twice ----

#[test]
fn d10_a_case_named_twice_runs_once() {
    let site = Site::new(None, "");
    site.rebaseline();
    let o = site.run(&["check", "--json", "--case", "fox", "--case", "fox"]);
    let (code, v, err) = parse_check(o);
    assert_eq!(code, 0, "{err}");
    assert_eq!(verdicts(&v), ["identical"]);
    let o = site.run(&[
        "rebaseline",
        "--case",
        "fox",
        "--case",
        "fox",
        "--reason",
        "x",
        "--yes",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(site.store().version_numbers("fox").unwrap(), [1, 2]);
    fault_line(
        "--case fox --case fox",
        "check: 1 result; rebaseline: 1 version",
        "-",
    );
}

// ---- 11. smaller ones ----

fn monitor(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_monitor"))
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap()
}

#[test]
fn d11_zero_counts_and_missing_folders_are_errors() {
    let o = monitor(&["bench", "--runs", "0"]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert!(stderr(&o).contains("--runs"), "{}", stderr(&o));

    let site = Site::new(None, "");
    site.rebaseline();
    let o = site.run(&["history", "--limit", "0"]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert!(stderr(&o).contains("--limit"), "{}", stderr(&o));

    let o = monitor(&["baselines", "list", "--baselines", "/nonexistent/baselines"]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert!(
        stderr(&o).contains("/nonexistent/baselines"),
        "{}",
        stderr(&o)
    );
    fault_line(
        "bench --runs 0, history --limit 0, baselines list of a missing folder",
        "exit 2 each, naming the flag or folder",
        "-",
    );
}

#[test]
fn d11_error_messages_do_not_repeat_their_cause() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope.yaml");
    let out = tmp.path().join("out");
    for args in [
        vec!["check", "--config", missing.to_str().unwrap()],
        vec![
            "generate",
            "--model",
            "/nonexistent/model",
            "--prompt",
            "x",
            "--seed",
            "1",
            "--out",
            out.to_str().unwrap(),
        ],
        vec!["history", "--database", "/nonexistent/monitor.db"],
    ] {
        let o = monitor(&args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        let line = err.trim_end();
        assert_eq!(line.lines().count(), 1, "{err}");
        // No part of the message repeats an earlier one ("loading M: M: missing").
        let parts: Vec<&str> = line.split(": ").collect();
        for (i, p) in parts.iter().enumerate().skip(1) {
            if p.len() >= 8 {
                assert!(
                    !parts[..i].iter().any(|q| q.contains(p)),
                    "repeated cause {p:?} in {line:?}"
                );
            }
        }
    }
    fault_line(
        "missing config, model folder, database",
        "exit 2, one line each, no repeated cause",
        "-",
    );
}

/// `monitor generate` on a copy of the tiny model with one component replaced by a quirk.
fn generate_with(component: &str, quirk: &str) -> std::process::Output {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    common::copy_tree(&repo_path("onnx/tiny-sd15"), &model);
    std::fs::copy(
        repo_path("tests/fixtures/models/quirks").join(quirk),
        model.join(component).join("model.onnx"),
    )
    .unwrap();
    let out = tempfile::tempdir().unwrap();
    Command::new(env!("CARGO_BIN_EXE_monitor"))
        .args(["generate", "--model"])
        .arg(&model)
        .args([
            "--prompt", "x", "--seed", "1", "--steps", "2", "--width", "64", "--height", "64",
            "--out",
        ])
        .arg(out.path())
        .current_dir(repo())
        .output()
        .unwrap()
}

#[test]
fn d11_onnx_runtime_log_lines_do_not_leak_raw_onto_stderr() {
    // A text encoder whose embedding is too small for the prompt's ids: ONNX Runtime fails while
    // running and logs its own coloured error line. Only the monitor's one-line error remains.
    let o = generate_with("text_encoder", "text-encoder-small-vocab.onnx");
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(!err.contains('\u{1b}'), "ANSI escapes on stderr: {err:?}");
    assert!(
        !err.contains(":onnxruntime:"),
        "raw ONNX Runtime log line: {err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.starts_with("monitor: error: ") && err.contains("Gather"),
        "{err}"
    );
    // A warning ONNX Runtime logs while loading (a weight also listed as a graph input) comes
    // through in the monitor's format.
    let o = generate_with("vae_decoder", "vae-initializer-input.onnx");
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        !err.contains('\u{1b}') && !err.contains(":onnxruntime:"),
        "{err:?}"
    );
    let warning = err
        .lines()
        .find(|l| l.contains("appears in graph inputs"))
        .unwrap_or_else(|| panic!("the warning is gone: {err}"));
    assert!(
        warning.starts_with("monitor: onnxruntime warning: "),
        "{warning}"
    );
    fault_line(
        "ONNX Runtime fails while running (Gather out of range), and warns while loading",
        "exit 2 with one 'monitor: error:' line; the warning as 'monitor: onnxruntime warning:'",
        "no ANSI codes, no raw ONNX Runtime line",
    );
}

#[test]
fn d11_a_foreign_sqlite_file_is_refused_before_anything_is_written() {
    let site = Site::new(None, "");
    let db = site.path("monitor.db");
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch(
            "CREATE TABLE invoices (id INTEGER PRIMARY KEY, amount REAL);
             INSERT INTO invoices (amount) VALUES (12.5);",
        )
        .unwrap();
    }
    let before = std::fs::read(&db).unwrap();
    let (code, _, err) = site.check();
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("not a monitor history") && err.contains("invoices"),
        "{err}"
    );
    assert_eq!(std::fs::read(&db).unwrap(), before, "the file was changed");
    let conn = rusqlite::Connection::open(&db).unwrap();
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "delete", "switched to {mode}");
    fault_line(
        "storage.database is another program's SQLite file",
        "exit 2 'not a monitor history' naming its tables",
        "file byte-identical, journal mode unchanged",
    );
}

#[test]
fn d11_an_interrupted_run_shows_in_history_as_interrupted() {
    let site = Site::new(None, "worker: {timeout_s: 60}\n");
    site.rebaseline();
    // Kill a check while its worker runs: the run row is left unfinished.
    let mut child = site
        .command(&["check"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let db = site.path("monitor.db");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let n: i64 = rusqlite::Connection::open(&db)
            .unwrap()
            .query_row("SELECT count(*) FROM runs WHERE kind = 'check'", [], |r| {
                r.get(0)
            })
            .unwrap();
        if n > 0 || std::time::Instant::now() > deadline {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let o = site.run(&["history"]);
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(table.contains("interrupted"), "{table}");
    let rows = site.history();
    let row = rows
        .iter()
        .find(|r| r["run_status"] == "interrupted")
        .unwrap_or_else(|| panic!("{rows:?}"));
    assert!(
        row["run_error"].as_str().unwrap().contains("process"),
        "{row}"
    );
    fault_line(
        "check killed while its worker runs, then monitor history",
        "the run listed as interrupted with the reason",
        "-",
    );
}
