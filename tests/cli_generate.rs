//! `monitor generate --karras` end to end: the built binary against a diffusers reference case.

mod common;

use std::process::{Command, Output};

use common::{max_abs_diff, repo_path};
use monitor::sd::npy::read_npy;

fn monitor(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_monitor"))
        .args(args)
        .output()
        .expect("run monitor")
}

/// `--karras` on the model's (PNDM, no Karras) config must give what diffusers gives for
/// `DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, use_karras_sigmas=True)`.
#[test]
fn karras_flag_matches_the_diffusers_karras_case() {
    let case = repo_path("tests/fixtures/reference/dpmpp-2m-karras_64x64_s20_g7.5_neg");
    let j: serde_json::Value =
        serde_json::from_slice(&std::fs::read(case.join("case.json")).unwrap()).unwrap();
    assert_eq!(j["use_karras_sigmas"], true);
    let dir = tempfile::tempdir().unwrap();
    let (seed, steps) = (j["seed"].to_string(), j["steps"].to_string());
    let run = monitor(&[
        "generate",
        "--model",
        repo_path("onnx/tiny-sd15").to_str().unwrap(),
        "--prompt",
        j["prompt"].as_str().unwrap(),
        "--negative-prompt",
        j["negative_prompt"].as_str().unwrap(),
        "--seed",
        &seed,
        "--steps",
        &steps,
        "--guidance",
        "7.5",
        "--width",
        "64",
        "--height",
        "64",
        "--scheduler",
        "dpmpp-2m",
        "--karras",
        "--noise",
        "numpy",
        "--threads",
        "1",
        "--out",
        dir.path().to_str().unwrap(),
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let ours = read_npy(&dir.path().join("latents.npy")).unwrap();
    let reference = read_npy(&case.join("latents.npy")).unwrap();
    let (d, m) = max_abs_diff(&ours.data, &reference.data);
    assert!(d <= 1e-4 * m, "latents max|Δ| {d:e} vs max|ref| {m}");
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("metadata.json")).unwrap()).unwrap();
    assert_eq!(meta["parameters"]["karras_sigmas"], true);
    assert_eq!(meta["timesteps"], j["unet_timesteps_fed"]);
}

#[test]
fn karras_flag_is_refused_for_schedulers_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let run = monitor(&[
        "generate",
        "--model",
        repo_path("onnx/tiny-sd15").to_str().unwrap(),
        "--prompt",
        "x",
        "--seed",
        "1",
        "--scheduler",
        "pndm",
        "--karras",
        "--out",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(run.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("--karras") && stderr.contains("pndm"),
        "{stderr}"
    );
}
