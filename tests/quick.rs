//! `monitor check --quick` on an unchanged host: every scheduler's replay gives the baseline's
//! stage hashes, the run is recorded as kind `quick`, and a baseline without stage data is
//! handed to a full check. (What it detects is in `drift_matrix.rs`.)

mod common;

use common::site::{Site, TIGHT};
use serde_json::Value;

const CASES: [&str; 6] = [
    "{name: pndm, prompt: \"a red fox\", negative_prompt: \"blurry\", seed: 1, steps: 5, width: 64, height: 64, scheduler: pndm, noise: numpy}",
    "{name: ddim, prompt: \"an owl\", seed: 2, steps: 4, width: 64, height: 48, scheduler: ddim, noise: torch-cpu}",
    "{name: euler-a, prompt: \"a boat\", seed: 3, steps: 4, width: 48, height: 64, scheduler: euler-a, noise: torch-cpu}",
    "{name: lms-karras, prompt: \"a tree\", seed: 4, steps: 4, width: 64, height: 64, scheduler: lms, karras: true, noise: torch-cpu}",
    "{name: dpmpp, prompt: \"a house\", seed: 5, steps: 4, width: 64, height: 64, scheduler: dpmpp-2m, noise: numpy, guidance_scale: 1.0}",
    "{name: euler, prompt: \"a cat\", seed: 6, steps: 3, width: 64, height: 64, scheduler: euler, noise: numpy, batch_size: 2}",
];

fn quick_json(site: &Site, extra: &[&str]) -> (i32, Value) {
    let mut args = vec!["check", "--quick", "--json"];
    args.extend_from_slice(extra);
    let o = site.run(&args);
    let v = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stderr)));
    (o.status.code().unwrap(), v)
}

#[test]
fn an_unchanged_host_replays_every_scheduler_to_the_same_bits() {
    let site = Site::with_cases(None, &CASES, "");
    site.rebaseline();
    let (code, v) = quick_json(&site, &[]);
    assert_eq!(code, 0, "{v}");
    assert!(v.get("check").is_none(), "nothing to follow up: {v}");
    for c in v["quick"]["cases"].as_array().unwrap() {
        assert_eq!(c["outcome"], "same", "{c}");
        // tokens, text_embeddings, initial_noise, timesteps, step 1 noise_pred and latents,
        // decoded_tile (the VAE decodes only the latent tile).
        assert_eq!(c["stages_compared"], 7, "{c}");
        assert!(c["model_s"].as_f64().unwrap() > 0.0);
    }
    // Recorded as a quick run, which `monitor history` tells apart from a check.
    let rows = site.history();
    assert_eq!(rows[0]["run_kind"], "quick");
    assert_eq!(rows[0]["verdict"], "identical");
    let h = site.run(&["history", "--limit", "1"]);
    assert!(String::from_utf8_lossy(&h.stdout).contains("same bits (quick)"));
}

#[test]
fn a_difference_sends_the_case_to_a_full_check_whose_verdict_counts() {
    let site = Site::with_cases(None, &[CASES[0], CASES[1]], TIGHT);
    site.rebaseline_with_old_ort(&[]);
    let (code, v) = quick_json(&site, &[]);
    assert_eq!(code, 1, "the full check's drift: {v}");
    for c in v["quick"]["cases"].as_array().unwrap() {
        assert_eq!(c["outcome"], "differs", "{c}");
        assert_eq!(c["stage"], "text_embeddings");
        assert!(c["env_differences"]
            .to_string()
            .contains("onnxruntime.version"));
    }
    let full = &v["check"];
    assert_eq!(full["status"], "drift", "{full}");
    assert_eq!(full["cases"].as_array().unwrap().len(), 2);
    // The quick run never counts as a check; the full check it triggered does.
    let kinds: Vec<_> = site
        .history()
        .iter()
        .map(|r| r["run_kind"].clone())
        .collect();
    assert_eq!(
        kinds,
        [
            "check",
            "check",
            "quick",
            "quick",
            "rebaseline",
            "rebaseline"
        ],
        "newest first, a row per case: {kinds:?}"
    );
    // --no-follow-up only reports (exit 1: something to look at).
    let (code, v) = quick_json(&site, &["--no-follow-up"]);
    assert_eq!(code, 1);
    assert!(v.get("check").is_none());
}

#[test]
fn a_baseline_without_stage_data_gets_a_full_check() {
    // The committed baselines of configs/tiny.yaml predate stage hashes.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_monitor"))
        .args(["check", "--quick", "--config", "configs/tiny.yaml"])
        .current_dir(common::repo())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.contains("no stage data in baseline v0001"), "{out}");
    assert!(
        out.contains("full check of the cases the quick check could not clear"),
        "{out}"
    );
    assert!(out.contains("3 cases: 3 identical"), "{out}");
}
