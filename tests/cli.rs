//! The `monitor` binary as scripts use it: flags, files written, exit codes, one-line errors.

mod common;

use std::process::{Command, Output};

use common::{max_abs_diff, pixel_diff, repo, repo_path};
use monitor::sd::image::RgbImage;
use monitor::sd::npy::read_npy;

fn monitor(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_monitor"))
        .args(args)
        .current_dir(repo())
        .output()
        .expect("run monitor")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn generate_writes_what_diffusers_wrote() {
    let case = repo_path("tests/fixtures/reference/pndm_64x64_s10_g7.5_neg");
    let c: serde_json::Value =
        serde_json::from_slice(&std::fs::read(case.join("case.json")).unwrap()).unwrap();
    let out = tempfile::tempdir().unwrap();
    let out_s = out.path().to_str().unwrap();
    let o = monitor(&[
        "generate",
        "--model",
        "onnx/tiny-sd15",
        "--prompt",
        c["prompt"].as_str().unwrap(),
        "--negative-prompt",
        c["negative_prompt"].as_str().unwrap(),
        "--seed",
        "0",
        "--steps",
        "10",
        "--guidance",
        "7.5",
        "--width",
        "64",
        "--height",
        "64",
        "--scheduler",
        "pndm",
        "--noise",
        "numpy",
        "--ep",
        "cpu",
        "--out",
        out_s,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));

    let ours = read_npy(&out.path().join("latents.npy")).unwrap();
    let theirs = read_npy(&case.join("latents.npy")).unwrap();
    assert_eq!(ours.shape, vec![1, 4, 8, 8]);
    let (d, m) = max_abs_diff(&ours.data, &theirs.data);
    assert!(d <= 1e-4 * m, "latents differ by {d:e}");
    let img = RgbImage::from_png(&std::fs::read(out.path().join("image.png")).unwrap()).unwrap();
    let reference = RgbImage::from_png(&std::fs::read(case.join("image.png")).unwrap()).unwrap();
    let (_, worst, _) = pixel_diff(&img.pixels, &reference.pixels);
    assert!(worst <= 1);

    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("metadata.json")).unwrap()).unwrap();
    for key in [
        "load_s",
        "text_encoder_s",
        "unet_s",
        "scheduler_s",
        "vae_s",
        "total_s",
    ] {
        assert!(
            meta["timings"][key].as_f64().is_some_and(|v| v >= 0.0),
            "timings.{key} missing: {}",
            meta["timings"]
        );
    }
    assert_eq!(meta["parameters"]["seed"], 0);
    assert_eq!(meta["parameters"]["scheduler"], "pndm");
    assert_eq!(meta["noise"]["initial_sha256"], c["init_noise_sha256"]);
    assert_eq!(meta["execution_provider"]["execution_provider"], "cpu");
    assert_eq!(meta["execution_provider"]["conv_algo_search"], "heuristic");
    assert!(
        meta["onnxruntime"]["version"]
            .as_str()
            .unwrap()
            .starts_with("1."),
        "{}",
        meta["onnxruntime"]
    );
    let files = meta["model"]["files_sha256"].as_object().unwrap();
    assert_eq!(files["unet/weights.pb"].as_str().unwrap().len(), 64);
    assert!(files.contains_key("tokenizer/vocab.json"));
    assert_eq!(meta["model"]["io"]["input_ids"], "int32");
}

#[test]
fn tokenize_prints_clip_ids() {
    let o = monitor(&["tokenize", "--model", "onnx/tiny-sd15", "a photo of a cat"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "49406 320 1125 539 320 2368 49407"
    );

    let o = monitor(&[
        "tokenize",
        "--model",
        "onnx/tiny-sd15-int64",
        "--json",
        "a photo of a cat",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["ids"].as_array().unwrap().len(), 77);
    assert_eq!(v["truncated"], false);

    let long = "cat ".repeat(100);
    let o = monitor(&["tokenize", "--model", "onnx/tiny-sd15", &long]);
    assert!(o.status.success());
    assert!(stderr(&o).contains("102 tokens"), "{}", stderr(&o));
}

#[test]
fn missing_onnxruntime_is_one_line_with_the_install_command() {
    let o = Command::new(env!("CARGO_BIN_EXE_monitor"))
        .args([
            "generate",
            "--model",
            "onnx/tiny-sd15",
            "--prompt",
            "x",
            "--seed",
            "1",
            "--out",
            "/tmp/never",
        ])
        .current_dir(repo())
        .env("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so.1.31.1")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains("/nonexistent/libonnxruntime.so.1.31.1")
            && err.contains("pip install onnxruntime==1.31.1"),
        "{err}"
    );
}

#[test]
fn a_file_that_is_not_onnxruntime_is_rejected_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("libonnxruntime.so.1.31.1");
    std::fs::write(&fake, b"not a shared library").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_monitor"))
        .args([
            "generate",
            "--model",
            "onnx/tiny-sd15",
            "--prompt",
            "x",
            "--seed",
            "1",
            "--out",
            "/tmp/never",
        ])
        .arg("--ort-lib")
        .arg(&fake)
        .current_dir(repo())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains("cannot use ONNX Runtime at") && err.contains("pip install"),
        "{err}"
    );
}

#[test]
fn cuda_without_the_gpu_package_is_an_error_not_a_cpu_fallback() {
    let out = tempfile::tempdir().unwrap();
    let o = monitor(&[
        "generate",
        "--model",
        "onnx/tiny-sd15",
        "--prompt",
        "x",
        "--seed",
        "1",
        "--steps",
        "2",
        "--width",
        "64",
        "--height",
        "64",
        "--ep",
        "cuda",
        "--out",
        out.path().to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(err.contains("onnxruntime-gpu"), "{err}");
    assert!(
        !out.path().join("latents.npy").exists(),
        "nothing may be written on failure"
    );
}

#[test]
fn bad_parameters_exit_2_with_the_value_named() {
    let o = monitor(&[
        "generate",
        "--model",
        "onnx/tiny-sd15",
        "--prompt",
        "x",
        "--seed",
        "1",
        "--width",
        "60",
        "--out",
        "/tmp/never",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("width 60"), "{}", stderr(&o));

    let o = monitor(&[
        "generate",
        "--model",
        "onnx/tiny-sd15",
        "--prompt",
        "x",
        "--seed",
        "1",
        "--scheduler",
        "heun",
        "--out",
        "/tmp/never",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("heun"), "{}", stderr(&o));

    let o = monitor(&[
        "generate",
        "--model",
        "no/such/dir",
        "--prompt",
        "x",
        "--seed",
        "1",
        "--out",
        "/tmp/never",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("no/such/dir"), "{}", stderr(&o));
}
