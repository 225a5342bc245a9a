//! Cross-platform workflow end to end, through the binary: verify-determinism, snapshots,
//! compare, check --against, batch invariance. The differences between "hosts" are real: another
//! ONNX Runtime release, another graph optimization level (both change bits on this CPU).

mod common;

use std::path::Path;
use std::process::Output;

use common::site::{parse_check, Site, FOX, OWL, TIGHT};
use common::{old_ort_lib, repo};
use serde_json::Value;

/// Injects graph optimization "disable" into fresh workers only (see `determinism.rs`).
const FRESH_HOOK: &str = "MONITOR_TEST_FRESH_WORKER_GRAPH_OPT";

fn json_of(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    })
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn snapshot(site: &Site, out: &Path, label: &str) {
    let o = site.run(&["snapshot", "--out", out.to_str().unwrap(), "--label", label]);
    assert!(o.status.success(), "snapshot failed: {}", stderr(&o));
}

/// `monitor compare` with the given config (for thresholds) and inputs, `--json`.
fn compare(config: Option<&Path>, inputs: &[&Path]) -> (i32, Value, String) {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_monitor"));
    c.arg("compare").arg("--json").current_dir(repo());
    if let Some(cfg) = config {
        c.arg("--config").arg(cfg);
    }
    c.args(inputs);
    let o = c.output().unwrap();
    let code = o.status.code().unwrap_or(-1);
    let v = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
    (code, v, stderr(&o))
}

fn cell<'a>(v: &'a Value, case: &str, column: usize) -> &'a Value {
    let row = v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["case"] == case)
        .unwrap_or_else(|| panic!("no row {case} in {v:#}"));
    &row["cells"][column]
}

fn differences(v: &Value, column: usize) -> Vec<String> {
    v["explanations"][column - 1]["differences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn verify_determinism_reports_this_host_deterministic_and_records_it() {
    let site = Site::new(None, "");
    let o = site.run(&["verify-determinism", "--runs", "3", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v = json_of(&o);
    for c in v["cases"].as_array().unwrap() {
        assert_eq!(
            c["runs"].as_array().unwrap().len(),
            5,
            "3 in one worker + 2 fresh"
        );
        assert_eq!(c["same_worker"]["identical"], true, "{c:#}");
        assert_eq!(c["fresh_workers"]["identical"], true, "{c:#}");
        let shas: Vec<&Value> = c["runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| &r["latents_sha256"])
            .collect();
        assert!(shas.windows(2).all(|w| w[0] == w[1]));
    }
    let rows = site.history();
    let verify: Vec<&Value> = rows.iter().filter(|r| r["run_kind"] == "verify").collect();
    assert_eq!(verify.len(), 2, "one row per case: {rows:#?}");
    for r in verify {
        assert_eq!(r["verdict"], "identical");
        assert!(r["details"]["determinism"]["runs"].is_array());
    }
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_monitor"))
        .args(["history", "--database"])
        .arg(site.path("monitor.db"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert_eq!(text.matches("deterministic (verify)").count(), 2, "{text}");
    // --runs 1 cannot test anything.
    let o = site.run(&["verify-determinism", "--runs", "1"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--runs 1"), "{}", stderr(&o));
}

#[test]
fn verify_determinism_names_a_setting_that_changes_bits_between_workers() {
    let site = Site::new(None, "");
    let o = site
        .command(&["verify-determinism", "--runs", "2", "--json"])
        .env(FRESH_HOOK, "disable")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let v = json_of(&o);
    for c in v["cases"].as_array().unwrap() {
        assert_eq!(c["same_worker"]["identical"], true, "{c:#}");
        let fresh = &c["fresh_workers"];
        assert_eq!(fresh["identical"], false, "{c:#}");
        assert!(fresh["latent_max_abs"].as_f64().unwrap() > 0.0);
        // The UNet's fused kernels are what the level changes; the text encoder's output is
        // the same, so the first difference is at the first UNet call.
        let stage = fresh["differing"][0][1].as_str().unwrap();
        assert_eq!(stage, "step 1 noise_pred", "{c:#}");
        let cause = c["likely_cause"].as_str().unwrap();
        assert!(cause.contains("graph_optimization"), "{cause}");
    }
    let rows = site.history();
    assert!(rows
        .iter()
        .filter(|r| r["run_kind"] == "verify")
        .all(|r| r["verdict"] == "drift"));
    // The text output says it in one line per case.
    let o = site
        .command(&["verify-determinism", "--runs", "2", "--case", "fox"])
        .env(FRESH_HOOK, "disable")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("NOT deterministic"), "{text}");
    assert!(
        text.contains("first differing stage: step 1 noise_pred"),
        "{text}"
    );
}

#[test]
fn rebaseline_refuses_a_host_that_is_not_deterministic_unless_runs_1() {
    let site = Site::new(None, "");
    let o = site
        .command(&["rebaseline", "--reason", "r", "--yes"])
        .env(FRESH_HOOK, "disable")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("not deterministic"), "{out}");
    assert!(out.contains("graph_optimization"), "{out}");
    assert!(out.contains("--runs 1"), "{out}");
    assert!(
        site.store().cases().unwrap_or_default().is_empty(),
        "nothing may be written"
    );
    let o = site
        .command(&["rebaseline", "--reason", "r", "--yes", "--runs", "1"])
        .env(FRESH_HOOK, "disable")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(site.store().latest_version("fox").unwrap(), Some(1));
}

#[test]
fn snapshots_of_differently_configured_hosts_compare_with_the_difference_named() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a.tar");
    let b = tmp.path().join("b"); // a folder snapshot
    let c = tmp.path().join("c.tar");
    let d = tmp.path().join("d.tar");
    let host_a = Site::new(None, TIGHT);
    snapshot(&host_a, &a, "host-a");
    let host_b = Site::new(None, TIGHT);
    host_b.edit_config("threads: 1}", "threads: 1, graph_optimization: disable}");
    snapshot(&host_b, &b, "host-b");
    let host_c = Site::new(
        None,
        &format!(
            "{TIGHT}onnxruntime: {{library: {}}}\n",
            old_ort_lib().display()
        ),
    );
    snapshot(&host_c, &c, "host-c");
    let host_d = Site::new(None, TIGHT);
    host_d.edit_config("threads: 1}", "threads: 2}");
    snapshot(&host_d, &d, "host-d");

    let cfg = host_a.path("monitor.yaml");
    let (code, v, err) = compare(Some(&cfg), &[&a, &b, &c, &d]);
    assert_eq!(code, 1, "{err}\n{v:#}");
    for case in ["fox", "owl"] {
        assert_eq!(cell(&v, case, 0)["status"], "reference");
        assert_eq!(cell(&v, case, 1)["status"], "drift", "{v:#}");
        assert_eq!(cell(&v, case, 2)["status"], "drift", "{v:#}");
        assert_eq!(cell(&v, case, 3)["status"], "identical", "{v:#}");
        assert!(cell(&v, case, 1)["latent_max_abs"].as_f64().unwrap() > 0.0);
    }
    // Where each host first parts ways: the fused UNet kernels at the first UNet call.
    assert_eq!(
        cell(&v, "fox", 1)["diverged_at"],
        "step 1 noise_pred",
        "{v:#}"
    );
    let older = cell(&v, "fox", 2)["diverged_at"].as_str().unwrap();
    assert!(!older.starts_with("unknown"), "{older}");
    assert!(cell(&v, "fox", 3)["diverged_at"].is_null());
    assert_eq!(
        differences(&v, 1),
        vec!["execution_provider.graph_optimization: (absent) → \"disable\""]
    );
    assert_eq!(
        differences(&v, 2),
        vec!["onnxruntime.version: \"1.31.1\" → \"1.24.4\""]
    );
    // Recorded, but bit-identical on this model: a difference that does not matter here.
    assert_eq!(
        differences(&v, 3),
        vec!["execution_provider.intra_op_threads: 1 → 2"]
    );
    assert_eq!(v["hosts"][2]["name"], "host-c");

    // A snapshot compared with itself, and with the same host's baseline store.
    host_a.rebaseline();
    let (code, v, err) = compare(Some(&cfg), &[&a, &host_a.path("baselines"), &a]);
    assert_eq!(code, 0, "{err}\n{v:#}");
    assert_eq!(cell(&v, "owl", 1)["status"], "identical");
    assert_eq!(cell(&v, "owl", 2)["status"], "identical");

    // The text matrix names the hosts and the differences.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_monitor"))
        .args(["compare", "--config"])
        .arg(&cfg)
        .args([&a, &c])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("A  host-a (reference)"), "{text}");
    assert!(
        text.contains("B vs A: 2 of 2 cases differ (fox, owl)"),
        "{text}"
    );
    assert!(
        text.contains("onnxruntime.version: \"1.31.1\" → \"1.24.4\""),
        "{text}"
    );
}

#[test]
fn a_tampered_snapshot_fails_verify_and_compare_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let site = Site::new(None, "");
    let good = tmp.path().join("good.tar");
    snapshot(&site, &good, "a");
    let verify = |p: &Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_monitor"))
            .args(["snapshot", "verify"])
            .arg(p)
            .output()
            .unwrap()
    };
    let o = verify(&good);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));

    // One byte of fox's latents changed inside the tar.
    let bad = tmp.path().join("bad.tar");
    let mut bytes = std::fs::read(&good).unwrap();
    let data_at = tar::Archive::new(std::fs::File::open(&good).unwrap())
        .entries()
        .unwrap()
        .map(|e| e.unwrap())
        .find(|e| e.path().unwrap().to_str() == Some("cases/fox/latents.npy"))
        .expect("entry in the tar")
        .raw_file_position() as usize;
    bytes[data_at + 300] ^= 0x01;
    std::fs::write(&bad, &bytes).unwrap();
    let o = verify(&bad);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(
        e.contains("cases/fox/latents.npy") && e.contains("sha256"),
        "{e}"
    );
    assert_eq!(e.lines().count(), 1, "one line: {e}");
    let (code, _, e) = compare(None, &[&good, &bad]);
    assert_eq!(code, 2);
    assert!(e.contains("cases/fox/latents.npy"), "{e}");

    // A folder snapshot: a file added, then a file changed with the manifest redone to match:
    // the case's own recorded hashes still catch it.
    let dir = tmp.path().join("folder");
    snapshot(&site, &dir, "a");
    std::fs::write(dir.join("cases/owl/extra.txt"), b"x").unwrap();
    let e = stderr(&verify(&dir));
    assert!(
        e.contains("cases/owl/extra.txt is not in MANIFEST.sha256"),
        "{e}"
    );
    std::fs::remove_file(dir.join("cases/owl/extra.txt")).unwrap();
    let png = dir.join("cases/owl/image.png");
    let img = image::open(&png).unwrap().to_rgb8();
    let mut img = img.clone();
    img.get_pixel_mut(0, 0).0[0] ^= 0x10;
    img.save(&png).unwrap();
    let manifest = std::fs::read_to_string(dir.join("MANIFEST.sha256")).unwrap();
    let new_sha = {
        use sha2::Digest;
        format!("{:x}", sha2::Sha256::digest(std::fs::read(&png).unwrap()))
    };
    let manifest: String = manifest
        .lines()
        .map(|l| {
            if l.ends_with("cases/owl/image.png") {
                format!("{new_sha}  cases/owl/image.png\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(dir.join("MANIFEST.sha256"), manifest).unwrap();
    let o = verify(&dir);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(e.contains("owl") && e.contains("image.png"), "{e}");
}

#[test]
fn mismatched_parameters_and_missing_cases_are_errors_for_that_case() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a.tar");
    let b = tmp.path().join("b.tar");
    let c = tmp.path().join("c.tar");
    snapshot(&Site::new(None, ""), &a, "a");
    let other_seed = Site::new(None, "");
    other_seed.edit_config("seed: 1,", "seed: 5,");
    snapshot(&other_seed, &b, "b");
    snapshot(&Site::with_cases(None, &[FOX], ""), &c, "c");
    let (code, v, err) = compare(None, &[&a, &b, &c]);
    assert_eq!(code, 2, "{err}\n{v:#}");
    let fox_b = cell(&v, "fox", 1);
    assert_eq!(fox_b["status"], "error");
    assert!(
        fox_b["error"].as_str().unwrap().contains("seed 1 → 5"),
        "{fox_b:#}"
    );
    assert_eq!(cell(&v, "owl", 1)["status"], "identical");
    assert_eq!(cell(&v, "fox", 2)["status"], "identical");
    assert_eq!(cell(&v, "owl", 2)["status"], "missing");
}

#[test]
fn check_against_another_hosts_snapshot() {
    let tmp = tempfile::tempdir().unwrap();
    let same = tmp.path().join("same.tar");
    let old = tmp.path().join("old.tar");
    snapshot(&Site::new(None, ""), &same, "twin");
    snapshot(
        &Site::new(
            None,
            &format!("onnxruntime: {{library: {}}}\n", old_ort_lib().display()),
        ),
        &old,
        "old-runtime-host",
    );
    // A host without any baseline checks against the fleet's reference snapshot.
    let site = Site::new(None, TIGHT);
    let (code, v, err) =
        parse_check(site.run(&["check", "--json", "--against", same.to_str().unwrap()]));
    assert_eq!(code, 0, "{err}\n{v:#}");
    for c in v["cases"].as_array().unwrap() {
        assert_eq!(c["verdict"], "identical");
        assert_eq!(c["details"]["against"]["host"], "twin");
    }
    let (code, v, err) =
        parse_check(site.run(&["check", "--json", "--against", old.to_str().unwrap()]));
    assert_eq!(code, 1, "{err}\n{v:#}");
    for c in v["cases"].as_array().unwrap() {
        assert_eq!(c["verdict"], "drift");
        let env = c["report"]["env_differences"].to_string();
        assert!(env.contains("onnxruntime.version"), "{env}");
        let stage = c["report"]["diverged_at"].as_str().unwrap();
        assert!(!stage.starts_with("unknown"), "{stage}");
    }
    let rows = site.history();
    assert!(rows
        .iter()
        .all(|r| r["details"]["against"]["snapshot"].is_string()));
    // A snapshot without the case: that case is an error naming the snapshot.
    let fox_only = tmp.path().join("fox.tar");
    snapshot(&Site::with_cases(None, &[FOX], ""), &fox_only, "f");
    let (code, v, _) =
        parse_check(site.run(&["check", "--json", "--against", fox_only.to_str().unwrap()]));
    assert_eq!(code, 2);
    let owl = common::site::case(&v, "owl");
    assert!(
        owl["error"]
            .as_str()
            .unwrap()
            .contains("is not in snapshot"),
        "{owl:#}"
    );
}

#[test]
fn batch_invariance_is_checked_and_recorded() {
    let fox_batch = FOX.replace('}', ", batch_size: 3}");
    let site = Site::with_cases(None, &[&fox_batch, OWL], "");
    site.rebaseline();
    let (code, v, err) = site.check();
    assert_eq!(code, 0, "{err}");
    let fox = common::site::case(&v, "fox");
    let batch = &fox["details"]["batch"];
    assert_eq!(batch["size"], 3);
    // On this CPU, ONNX Runtime's kernels give element 0 of a UNet batch of 6 the same bits as
    // the batch of 2; a GPU may not (that is what this check is for).
    assert_eq!(batch["identical"], true, "{batch:#}");
    assert_eq!(batch["latent_max_abs"], 0.0);
    assert!(common::site::case(&v, "owl")["details"].is_null());
    let rows = site.history();
    let fox_row = rows
        .iter()
        .find(|r| r["case_name"] == "fox" && r["run_kind"] == "check")
        .unwrap();
    assert_eq!(fox_row["details"]["batch"]["size"], 3);
    let text = String::from_utf8_lossy(&site.run(&["check"]).stdout).into_owned();
    assert!(
        text.contains("batch of 3: element 0 identical to the batch-1 result"),
        "{text}"
    );
    // An ancestral scheduler's per-step noise per element is not reproduced: refused up front.
    let bad = Site::with_cases(
        None,
        &["{name: a, prompt: x, seed: 1, steps: 2, width: 64, height: 64, scheduler: euler-a, noise: torch-cpu, batch_size: 2}"],
        "",
    );
    let o = bad.run(&["config", "validate"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("cases[0].batch_size"), "{}", stderr(&o));
}

#[test]
fn a_unet_with_a_fixed_batch_is_named_and_the_batch_1_result_stands() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    common::copy_tree(&common::repo_path("onnx/tiny-sd15"), &model);
    std::fs::copy(
        common::repo_path("tests/fixtures/models/quirks/unet-fixed-batch.onnx"),
        model.join("unet/model.onnx"),
    )
    .unwrap();
    // fox runs under guidance: batch 1 is a UNet batch of 2, which this export takes.
    let fox_batch = FOX.replace('}', ", batch_size: 3}");
    let site = Site::with_cases(Some(&model), &[&fox_batch], "");
    site.rebaseline();
    let (code, v, err) = site.check();
    assert_eq!(code, 0, "{err}\n{v:#}");
    let fox = common::site::case(&v, "fox");
    assert_eq!(fox["verdict"], "identical");
    let e = fox["details"]["batch"]["error"].as_str().unwrap();
    assert!(
        e.contains("fixed batch of 2") && e.contains("needs 6") && e.contains("dynamic batch axis"),
        "{e}"
    );
    let text = String::from_utf8_lossy(&site.run(&["check"]).stdout).into_owned();
    assert!(text.contains("batch of 3: could not run:"), "{text}");
}
