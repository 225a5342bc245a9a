//! `monitor noise` end to end: the built binary against the ground-truth draws in
//! tests/fixtures/noise/ (written from numpy and torch by scripts/extract_noise_fixtures.py).

mod common;

use std::process::{Command, Output};

use common::repo_path;
use monitor::sd::noise::round_f64_to_f16;
use monitor::sd::npy::{read_npy, NpyDtype};

fn monitor(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_monitor"))
        .args(args)
        .output()
        .expect("run monitor")
}

#[test]
fn torch_cpu_first_draw_is_bit_exact() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("noise.npy");
    let run = monitor(&[
        "noise",
        "--source",
        "torch-cpu",
        "--seed",
        "42",
        "--shape",
        "1,4,8,8",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let ours = read_npy(&out).unwrap();
    let reference = read_npy(&repo_path(
        "tests/fixtures/noise/torch-cpu_f32_s42_1x4x8x8_c0.npy",
    ))
    .unwrap();
    assert_eq!(ours.dtype, NpyDtype::F32);
    assert_eq!(ours.shape, [1, 4, 8, 8]);
    assert_eq!(ours.shape, reference.shape);
    let same = ours
        .data
        .iter()
        .zip(&reference.data)
        .all(|(a, b)| a.to_bits() == b.to_bits());
    assert!(same, "torch-cpu seed 42 differs from torch");
}

/// numpy's float64 draw rounded once to float16, as diffusers' ONNX pipeline does for an fp16 model.
#[test]
fn numpy_f16_is_numpy_f64_rounded_once() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("noise16.npy");
    let run = monitor(&[
        "noise",
        "--source",
        "numpy",
        "--seed",
        "123",
        "--shape",
        "17",
        "--dtype",
        "f16",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let ours = read_npy(&out).unwrap();
    let reference = read_npy(&repo_path("tests/fixtures/noise/numpy_f64_s123_17_c0.npy")).unwrap();
    assert_eq!(ours.dtype, NpyDtype::F16);
    assert_eq!(ours.shape, [17]);
    let want: Vec<f32> = reference
        .data_f64
        .unwrap()
        .into_iter()
        .map(round_f64_to_f16)
        .collect();
    assert_eq!(ours.data, want);
}

#[test]
fn bad_shape_is_a_one_line_error_naming_the_value() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("never.npy");
    let run = monitor(&[
        "noise",
        "--source",
        "numpy",
        "--seed",
        "1",
        "--shape",
        "1,four,8",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(run.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("--shape") && stderr.contains("1,four,8"),
        "{stderr}"
    );
    assert!(!out.exists());
}
