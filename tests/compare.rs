//! `monitor::compare`: metrics against numpy (scripts/make_compare_fixtures.py), verdict rules and
//! precedence, heatmap, SSIM behaviour, environment differences. No ONNX Runtime needed.

use std::collections::BTreeMap;
use std::path::PathBuf;

use monitor::compare::*;
use monitor::generation::Metadata;
use monitor::sd::image::RgbImage;
use serde_json::{json, Value};

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

fn load_json(rel: &str) -> Value {
    let p = fixture(rel);
    serde_json::from_slice(&std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .expect("json")
}

fn load_png(rel: &str) -> RgbImage {
    let p = fixture(rel);
    RgbImage::from_png(&std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .expect("png")
}

fn f32s(v: &Value) -> Vec<f32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number") as f32)
        .collect()
}

fn usizes(v: &Value) -> Vec<usize> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("int") as usize)
        .collect()
}

fn rgb(v: &Value, w: u32, h: u32) -> RgbImage {
    let pixels = v
        .as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("int") as u8)
        .collect();
    RgbImage {
        width: w,
        height: h,
        pixels,
    }
}

fn assert_rel(what: &str, got: f64, want: f64) {
    let tol = 1e-12 * want.abs().max(1e-300);
    assert!(
        (got - want).abs() <= tol,
        "{what}: got {got:e}, numpy {want:e}"
    );
}

/// A deterministic, non-trivial image.
fn pattern(w: u32, h: u32) -> RgbImage {
    let pixels = (0..w * h * 3)
        .map(|i| ((i * 7919 + i / 3 * 31) % 251) as u8)
        .collect();
    RgbImage {
        width: w,
        height: h,
        pixels,
    }
}

// ---------------------------------------------------------------------------------------------
// Metrics vs numpy

#[test]
fn latent_metrics_match_numpy() {
    let f = load_json("compare/metrics.json");
    let cases = f["latents"].as_array().expect("latents");
    assert!(cases.len() >= 3);
    for c in cases {
        let name = c["name"].as_str().unwrap_or("?");
        let shape = usizes(&c["shape"]);
        let m =
            latent_metrics(&f32s(&c["run"]), &shape, &f32s(&c["baseline"]), &shape).expect(name);
        assert!(!m.identical, "{name}");
        assert_rel(
            &format!("{name} max_abs"),
            m.max_abs,
            c["max_abs"].as_f64().unwrap_or(f64::NAN),
        );
        assert_rel(
            &format!("{name} mean_abs"),
            m.mean_abs,
            c["mean_abs"].as_f64().unwrap_or(f64::NAN),
        );
        assert_rel(
            &format!("{name} rmse"),
            m.rmse,
            c["rmse"].as_f64().unwrap_or(f64::NAN),
        );
        assert_rel(
            &format!("{name} cosine"),
            m.cosine,
            c["cosine"].as_f64().unwrap_or(f64::NAN),
        );
    }
}

#[test]
fn image_metrics_match_numpy() {
    let f = load_json("compare/metrics.json");
    for c in f["images"].as_array().expect("images") {
        let name = c["name"].as_str().unwrap_or("?");
        let (w, h) = (
            c["width"].as_u64().unwrap_or(0) as u32,
            c["height"].as_u64().unwrap_or(0) as u32,
        );
        let m = image_metrics(&rgb(&c["run"], w, h), &rgb(&c["baseline"], w, h)).expect(name);
        assert!(!m.identical, "{name}");
        assert_rel(
            &format!("{name} psnr"),
            m.psnr_db,
            c["psnr_db"].as_f64().unwrap_or(f64::NAN),
        );
        assert_eq!(
            m.pixels_differing,
            c["pixels_differing"].as_u64().unwrap_or(0),
            "{name}"
        );
        assert_eq!(
            u64::from(m.max_level_diff),
            c["max_level_diff"].as_u64().unwrap_or(0),
            "{name}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Latents

fn latents() -> Vec<f32> {
    (0..4 * 8 * 8)
        .map(|i| ((i as f32) * 0.37).sin() * 2.0)
        .collect()
}

const SHAPE: [usize; 4] = [1, 4, 8, 8];

#[test]
fn identical_latents() {
    let a = latents();
    let m = latent_metrics(&a, &SHAPE, &a.clone(), &SHAPE).expect("metrics");
    assert!(m.identical);
    assert_eq!(m.run_sha256, m.baseline_sha256);
    assert_eq!(m.run_sha256.len(), 64);
    assert_eq!(
        (m.max_abs, m.mean_abs, m.rmse, m.cosine),
        (0.0, 0.0, 0.0, 1.0)
    );
}

#[test]
fn latent_hash_is_of_little_endian_f32_bytes() {
    // sha256 of the 8 bytes 00 00 80 3f 00 00 00 40 ([1.0f32, 2.0f32] little-endian), per sha256sum.
    let bytes: Vec<u8> = [1.0f32, 2.0].iter().flat_map(|v| v.to_le_bytes()).collect();
    assert_eq!(bytes, [0, 0, 0x80, 0x3f, 0, 0, 0, 0x40]);
    use sha2::Digest;
    let want: String = sha2::Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(latent_sha256(&[1.0, 2.0]), want);
    // And across the 4096-byte chunk boundary the code uses internally.
    let long: Vec<f32> = (0..3000).map(|i| i as f32 * 0.5).collect();
    let bytes: Vec<u8> = long.iter().flat_map(|v| v.to_le_bytes()).collect();
    let want: String = sha2::Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(latent_sha256(&long), want);
}

#[test]
fn one_perturbed_value_gives_exact_max_abs() {
    let a = latents();
    let mut b = a.clone();
    b[77] += 0.001;
    let m = latent_metrics(&b, &SHAPE, &a, &SHAPE).expect("metrics");
    assert!(!m.identical);
    assert_ne!(m.run_sha256, m.baseline_sha256);
    let exact = (f64::from(b[77]) - f64::from(a[77])).abs();
    assert_eq!(m.max_abs, exact);
    assert_eq!(m.mean_abs, exact / 256.0);
}

#[test]
fn nan_in_run_is_error_with_metrics_reported() {
    let a = latents();
    let mut b = a.clone();
    b[3] = f32::NAN;
    let m = latent_metrics(&b, &SHAPE, &a, &SHAPE).expect("metrics");
    assert!(m.max_abs.is_nan() && m.mean_abs.is_nan() && m.rmse.is_nan() && m.cosine.is_nan());
    assert_eq!(m.run_non_finite, 1);
    let img = pattern(8, 8);
    let im = image_metrics(&img, &img).expect("image");
    // Even with thresholds that accept anything finite.
    let loose = Thresholds {
        latent_max_abs: f64::MAX,
        latent_cosine_min: -1.0,
        ssim_min: -1.0,
    };
    let c = classify(
        &BTreeMap::new(),
        &BTreeMap::new(),
        Ok((Some(&m), &im)),
        &loose,
    );
    assert_eq!(c.verdict, Verdict::Error);
    let msg = c.error.as_deref().unwrap_or_default();
    assert!(msg.contains("1 NaN/inf values (of 256)"), "{msg}");
    // Even a changed model does not hide it: the run produced nothing to judge.
    let changed = BTreeMap::from([("unet/model.onnx".to_string(), "a".repeat(64))]);
    let c2 = classify(&changed, &BTreeMap::new(), Ok((Some(&m), &im)), &loose);
    assert_eq!(c2.verdict, Verdict::Error);
    let checks: Vec<_> = c.failures.iter().map(|f| f.check).collect();
    assert_eq!(
        checks,
        ["latent_non_finite", "latent_max_abs", "latent_cosine_min"]
    );
    // NaN reaches JSON as "NaN", not null.
    let s = serde_json::to_value(&m).expect("json");
    assert_eq!(s["max_abs"], json!("NaN"));
}

#[test]
fn nan_in_both_is_error_not_identical() {
    let mut a = latents();
    a[0] = f32::NAN;
    let m = latent_metrics(&a, &SHAPE, &a.clone(), &SHAPE).expect("metrics");
    assert!(m.identical, "bytes are identical");
    let img = pattern(8, 8);
    let im = image_metrics(&img, &img).expect("image");
    let c = classify(
        &BTreeMap::new(),
        &BTreeMap::new(),
        Ok((Some(&m), &im)),
        &Thresholds::default(),
    );
    assert_eq!(c.verdict, Verdict::Error);
}

#[test]
fn infinity_in_run_fails_max_abs() {
    let a = latents();
    let mut b = a.clone();
    b[5] = f32::INFINITY;
    let m = latent_metrics(&b, &SHAPE, &a, &SHAPE).expect("metrics");
    assert_eq!(m.max_abs, f64::INFINITY);
    assert!(m.cosine.is_nan());
}

#[test]
fn all_zero_latents_have_cosine_one_and_zero_vs_nonzero_cosine_zero() {
    let z = vec![0.0f32; 8];
    assert_eq!(latent_metrics(&z, &[8], &z, &[8]).expect("m").cosine, 1.0);
    let mut nz = z.clone();
    nz[2] = 1.0;
    assert_eq!(latent_metrics(&nz, &[8], &z, &[8]).expect("m").cosine, 0.0);
}

#[test]
fn latent_shape_mismatch_names_both_shapes() {
    let a = latents();
    let e = latent_metrics(&a, &[1, 4, 8, 8], &a, &[4, 8, 8]).expect_err("mismatch");
    assert_eq!(
        e,
        CompareError::LatentShape {
            run: vec![1, 4, 8, 8],
            baseline: vec![4, 8, 8]
        }
    );
    let msg = e.to_string();
    assert!(
        msg.contains("[1, 4, 8, 8]") && msg.contains("[4, 8, 8]"),
        "{msg}"
    );
    let e = latent_metrics(&a[..10], &SHAPE, &a, &SHAPE).expect_err("short");
    assert!(
        matches!(
            e,
            CompareError::LatentLength {
                which: "run",
                len: 10,
                expected: 256,
                ..
            }
        ),
        "{e}"
    );
}

// ---------------------------------------------------------------------------------------------
// Images

#[test]
fn identical_images() {
    let a = pattern(20, 12);
    let m = image_metrics(&a, &a.clone()).expect("metrics");
    assert!(m.identical);
    assert_eq!(m.ssim, 1.0);
    assert_eq!(m.psnr_db, f64::INFINITY);
    assert_eq!((m.pixels_differing, m.max_level_diff), (0, 0));
    assert_eq!(
        serde_json::to_value(&m).expect("json")["psnr_db"],
        json!("inf")
    );
}

#[test]
fn image_size_mismatch_names_both_sizes() {
    let e = image_metrics(&pattern(64, 32), &pattern(32, 64)).expect_err("mismatch");
    assert_eq!(
        e.to_string(),
        "image sizes differ: run 64x32 vs baseline 32x64"
    );
    assert!(diff_heatmap(&pattern(64, 32), &pattern(32, 64)).is_err());
    let mut bad = pattern(4, 4);
    bad.pixels.pop();
    let e = image_metrics(&bad, &pattern(4, 4)).expect_err("short buffer");
    assert!(
        matches!(
            e,
            CompareError::ImageBuffer {
                which: "run",
                len: 47,
                expected: 48,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn ssim_decreases_monotonically_with_noise_on_a_reference_image() {
    let base = load_png("reference/pndm_128x128_s4_g7.5/image.png");
    let mut last = 1.0;
    for amp in [1u32, 2, 4, 8, 16, 32] {
        // Deterministic ±amp noise (an LCG), applied to every channel value.
        let mut state = 12345u64;
        let pixels = base
            .pixels
            .iter()
            .map(|&p| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let sign = if state >> 63 == 1 { 1 } else { -1 };
                (i32::from(p) + sign * amp as i32).clamp(0, 255) as u8
            })
            .collect();
        let noisy = RgbImage {
            pixels,
            ..base.clone()
        };
        let s = image_metrics(&noisy, &base).expect("metrics").ssim;
        assert!(s < last, "amplitude {amp}: SSIM {s} not below {last}");
        last = s;
    }
}

/// image-compare's SSIM next to scikit-image's Gaussian SSIM on the perturbations made by
/// `scripts/make_compare_fixtures.py --ssim`. Prints the table (`--nocapture`); asserts only that
/// both metrics rank "tiny" changes above "gross" ones, since the algorithms differ by design.
#[test]
fn ssim_vs_skimage_table() {
    let f = load_json("compare/ssim.json");
    println!(
        "{:<26} {:<17} {:>9} {:>9} {:>9}",
        "reference", "perturbation", "skimage", "img-cmp", "Δ"
    );
    for c in f["cases"].as_array().expect("cases") {
        let reference = c["reference"].as_str().unwrap_or("?");
        let base = load_png(&format!("reference/{reference}/image.png"));
        let img = load_png(&format!(
            "compare/ssim/{}",
            c["file"].as_str().unwrap_or("?")
        ));
        let ours = image_metrics(&img, &base).expect("metrics").ssim;
        let lib = ssim_image_compare(&img, &base).expect("image-compare");
        assert!(
            (ours - lib).abs() <= 1e-12,
            "{reference} {p}: fast {ours} vs image-compare {lib}",
            p = c["perturbation"]
        );
        let sk = c["skimage_gaussian_ssim"].as_f64().unwrap_or(f64::NAN);
        let p = c["perturbation"].as_str().unwrap_or("?");
        println!(
            "{reference:<26} {p:<17} {sk:>9.5} {ours:>9.5} {:>+9.5}",
            ours - sk
        );
        if p == "lsb_1pct" {
            assert!(ours > 0.999 && sk > 0.999, "{reference} {p}: {ours} / {sk}");
        }
        if p == "box_blur_3x3" {
            assert!(ours < 0.95 && sk < 0.95, "{reference} {p}: {ours} / {sk}");
        }
    }
}

#[test]
fn fast_ssim_equals_image_compare_including_edge_windows_and_flat_images() {
    let sizes = [(37u32, 21u32), (8, 8), (1, 1), (9, 3), (64, 64)];
    for (w, h) in sizes {
        let a = pattern(w, h);
        for shift in [1u8, 3, 17, 128] {
            let pixels = a
                .pixels
                .iter()
                .enumerate()
                .map(|(i, &p)| if i % 5 < 2 { p.wrapping_add(shift) } else { p })
                .collect();
            let b = RgbImage {
                pixels,
                ..a.clone()
            };
            let (fast, lib) = (
                ssim(&b, &a).expect("fast"),
                ssim_image_compare(&b, &a).expect("lib"),
            );
            assert!(
                (fast - lib).abs() <= 1e-12,
                "{w}x{h} shift {shift}: {fast} vs {lib}"
            );
        }
    }
    // Flat images: variances are zero, only the constants keep SSIM defined.
    let flat = RgbImage {
        width: 10,
        height: 10,
        pixels: vec![100; 300],
    };
    let flat2 = RgbImage {
        width: 10,
        height: 10,
        pixels: vec![102; 300],
    };
    let (fast, lib) = (
        ssim(&flat2, &flat).expect("fast"),
        ssim_image_compare(&flat2, &flat).expect("lib"),
    );
    assert!((fast - lib).abs() <= 1e-12 && fast < 1.0, "{fast} vs {lib}");
}

// ---------------------------------------------------------------------------------------------
// Heatmap

#[test]
fn heatmap_of_equal_images_is_black() {
    let a = pattern(16, 9);
    let h = diff_heatmap(&a, &a).expect("heatmap");
    assert_eq!(h.max_level_diff, 0);
    assert_eq!((h.image.width, h.image.height), (16, 9));
    assert!(h.image.pixels.iter().all(|&p| p == 0));
    assert!(h.image.to_png().is_ok());
}

#[test]
fn heatmap_single_changed_pixel_is_the_one_hot_pixel() {
    let a = pattern(16, 9);
    let mut b = a.clone();
    let (x, y) = (5usize, 7usize);
    let i = (y * 16 + x) * 3 + 1;
    b.pixels[i] = b.pixels[i].wrapping_add(9);
    let h = diff_heatmap(&b, &a).expect("heatmap");
    let hot: Vec<usize> = h
        .image
        .pixels
        .chunks(3)
        .enumerate()
        .filter(|(_, p)| p != &[0, 0, 0])
        .map(|(i, _)| i)
        .collect();
    assert_eq!(hot, [y * 16 + x]);
    assert_eq!(&h.image.pixels[(y * 16 + x) * 3..][..3], &[255, 255, 255]);
    assert_eq!(h.max_level_diff, a.pixels[i].abs_diff(b.pixels[i]));
}

#[test]
fn heatmap_scales_to_the_largest_difference() {
    let a = RgbImage {
        width: 3,
        height: 1,
        pixels: vec![10; 9],
    };
    let b = RgbImage {
        width: 3,
        height: 1,
        pixels: vec![10, 10, 10, 13, 10, 10, 40, 10, 10],
    };
    let h = diff_heatmap(&b, &a).expect("heatmap");
    assert_eq!(h.max_level_diff, 30);
    // 3/30 of full scale: v = ceil(765 * 0.1) = 77 → (77, 0, 0).
    assert_eq!(h.image.pixels, [0, 0, 0, 77, 0, 0, 255, 255, 255]);
}

// ---------------------------------------------------------------------------------------------
// Thresholds and verdicts

fn models(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

struct Case {
    latents: LatentMetrics,
    image: ImageMetrics,
}

/// Metrics for a run whose latents differ from the baseline by `delta` at one position and whose
/// image has `noise` levels of ±noise on every channel value.
fn case(delta: f32, noise: u8) -> Case {
    let a = latents();
    let mut b = a.clone();
    b[10] += delta;
    let base = load_png("reference/pndm_64x64_s10_g7.5_neg/image.png");
    let pixels = base
        .pixels
        .iter()
        .enumerate()
        .map(|(i, &p)| {
            if i % 2 == 0 {
                p.saturating_add(noise)
            } else {
                p.saturating_sub(noise)
            }
        })
        .collect();
    let run = RgbImage {
        pixels,
        ..base.clone()
    };
    Case {
        latents: latent_metrics(&b, &SHAPE, &a, &SHAPE).expect("latents"),
        image: image_metrics(&run, &base).expect("image"),
    }
}

fn verdict(
    c: &Case,
    run: &BTreeMap<String, String>,
    base: &BTreeMap<String, String>,
    t: &Thresholds,
) -> Classification {
    classify(run, base, Ok((Some(&c.latents), &c.image)), t)
}

#[test]
fn thresholds_default_deserialize_and_override() {
    assert_eq!(
        Thresholds::default(),
        Thresholds {
            latent_max_abs: 1.0e-3,
            latent_cosine_min: 0.9999,
            ssim_min: 0.99
        }
    );
    let t: Thresholds = serde_json::from_value(json!({"ssim_min": 0.9})).expect("partial config");
    assert_eq!(
        t,
        Thresholds {
            ssim_min: 0.9,
            ..Thresholds::default()
        }
    );
    assert!(
        serde_json::from_value::<Thresholds>(json!({"ssim_mim": 0.9})).is_err(),
        "typo must be an error"
    );
    let o: PartialThresholds =
        serde_json::from_value(json!({"latent_max_abs": 0.01})).expect("override");
    assert!(serde_json::from_value::<PartialThresholds>(json!({"x": 1})).is_err());
    let merged = Thresholds::default().with_overrides(&o);
    assert_eq!(
        merged,
        Thresholds {
            latent_max_abs: 0.01,
            ..Thresholds::default()
        }
    );
    assert_eq!(
        Thresholds::default().with_overrides(&PartialThresholds::default()),
        Thresholds::default()
    );
}

#[test]
fn identical_verdict() {
    let c = case(0.0, 0);
    let m = models(&[("unet/model.onnx", "aa")]);
    assert_eq!(
        verdict(&c, &m, &m, &Thresholds::default()).verdict,
        Verdict::Identical
    );
}

#[test]
fn within_tolerance_verdict() {
    let c = case(1e-4, 1);
    assert!(!c.latents.identical && !c.image.identical);
    let m = BTreeMap::new();
    let v = verdict(&c, &m, &m, &Thresholds::default());
    assert_eq!(v.verdict, Verdict::WithinTolerance, "{v:?}");
    assert!(v.failures.is_empty());
}

#[test]
fn drift_lists_each_failed_threshold_with_numbers() {
    let c = case(3.2e-3, 0);
    let m = BTreeMap::new();
    let v = verdict(&c, &m, &m, &Thresholds::default());
    assert_eq!(v.verdict, Verdict::Drift);
    assert_eq!(v.failures.len(), 1, "{:?}", v.failures);
    let f = &v.failures[0];
    assert_eq!(f.check, "latent_max_abs");
    assert_eq!(f.limit, 1e-3);
    assert!(
        f.message.starts_with("latent max|Δ| 3.20e-3 > 1.00e-3"),
        "{}",
        f.message
    );

    let c = case(0.5, 20);
    let v = verdict(&c, &m, &m, &Thresholds::default());
    let checks: Vec<_> = v.failures.iter().map(|f| f.check).collect();
    assert_eq!(
        checks,
        ["latent_max_abs", "latent_cosine_min", "ssim_min"],
        "{:?}",
        v.failures
    );
    assert!(
        v.failures[2].message.starts_with("image SSIM 0."),
        "{}",
        v.failures[2].message
    );
}

#[test]
fn per_case_override_turns_drift_into_tolerance_and_back() {
    let c = case(3.2e-3, 0);
    let m = BTreeMap::new();
    let loose = Thresholds::default().with_overrides(&PartialThresholds {
        latent_max_abs: Some(5e-3),
        ..Default::default()
    });
    assert_eq!(
        verdict(&c, &m, &m, &loose).verdict,
        Verdict::WithinTolerance
    );
    let c = case(1e-4, 1);
    let strict = Thresholds::default().with_overrides(&PartialThresholds {
        ssim_min: Some(0.99999),
        ..Default::default()
    });
    let v = verdict(&c, &m, &m, &strict);
    assert_eq!(v.verdict, Verdict::Drift);
    assert_eq!(v.failures[0].check, "ssim_min");
}

#[test]
fn model_changed_beats_drift_and_lists_files() {
    let c = case(0.5, 20);
    let base = models(&[
        ("text_encoder/model.onnx", "t1"),
        ("unet/model.onnx", "u1"),
        ("vae_decoder/model.onnx", "v1"),
    ]);
    let run = models(&[
        ("text_encoder/model.onnx", "t1"),
        ("unet/model.onnx", "u2"),
        ("unet/weights.pb", "w"),
    ]);
    let v = verdict(&c, &run, &base, &Thresholds::default());
    assert_eq!(v.verdict, Verdict::ModelChanged);
    assert!(v.failures.is_empty(), "metrics are not judged");
    let files: Vec<_> = v
        .model_changes
        .iter()
        .map(|m| (m.file.as_str(), m.baseline.as_deref(), m.run.as_deref()))
        .collect();
    assert_eq!(
        files,
        [
            ("unet/model.onnx", Some("u1"), Some("u2")),
            ("unet/weights.pb", None, Some("w")),
            ("vae_decoder/model.onnx", Some("v1"), None),
        ]
    );
    // Even when the outputs happen to be identical.
    let same = case(0.0, 0);
    assert_eq!(
        verdict(&same, &run, &base, &Thresholds::default()).verdict,
        Verdict::ModelChanged
    );
}

#[test]
fn error_beats_everything() {
    let run = models(&[("unet/model.onnx", "u2")]);
    let base = models(&[("unet/model.onnx", "u1")]);
    let v = classify(
        &run,
        &base,
        Err("UNet session failed: out of memory"),
        &Thresholds::default(),
    );
    assert_eq!(v.verdict, Verdict::Error);
    assert_eq!(
        v.error.as_deref(),
        Some("UNet session failed: out of memory")
    );
}

#[test]
fn verdict_serializes_snake_case() {
    let all = [
        Verdict::Identical,
        Verdict::WithinTolerance,
        Verdict::Drift,
        Verdict::ModelChanged,
        Verdict::Error,
    ];
    let names: Vec<Value> = all
        .iter()
        .map(|v| serde_json::to_value(v).expect("json"))
        .collect();
    assert_eq!(
        names,
        [
            json!("identical"),
            json!("within_tolerance"),
            json!("drift"),
            json!("model_changed"),
            json!("error")
        ]
    );
    for v in all {
        assert_eq!(json!(v.as_str()), serde_json::to_value(v).expect("json"));
    }
}

// ---------------------------------------------------------------------------------------------
// Environment differences

fn meta(ort: &str, ep: Value, env: Option<Value>) -> Value {
    let mut m = json!({
        "parameters": {"seed": 1},
        "onnxruntime": {"library": "/venv/lib/libonnxruntime.so", "library_source": "venv", "version": ort},
        "execution_provider": ep,
    });
    if let Some(e) = env {
        m["environment"] = e;
    }
    m
}

fn ep() -> Value {
    json!({"execution_provider": "cuda", "device_id": 0, "conv_algo_search": "heuristic", "use_tf32": false,
           "prefer_nhwc": false, "deterministic_compute": true, "intra_op_threads": null})
}

/// [`meta`] read as a generation's metadata is.
fn typed(v: Value) -> Metadata {
    Metadata::from_value(&v).expect("metadata")
}

#[test]
fn env_same_metadata_has_no_differences() {
    let m = meta(
        "1.31.1",
        ep(),
        Some(json!({"gpu_name": "H100", "driver": "580"})),
    );
    assert!(env_differences(&m, &m).is_empty());
}

#[test]
fn env_differences_list_changed_and_missing_keys() {
    let base = meta(
        "1.31.1",
        ep(),
        Some(json!({"gpu_name": "NVIDIA H100", "driver": "580.1", "os": "linux"})),
    );
    let mut run_ep = ep();
    run_ep["use_tf32"] = json!(true);
    run_ep
        .as_object_mut()
        .expect("object")
        .remove("intra_op_threads");
    run_ep["new_flag"] = json!(1);
    let run = meta(
        "1.24.0",
        run_ep,
        Some(json!({"gpu_name": "NVIDIA A100", "driver": "580.1", "cudnn": "9.1"})),
    );
    let d = env_differences(&run, &base);
    let got: Vec<(&str, Option<&Value>, Option<&Value>)> = d
        .iter()
        .map(|e| (e.key.as_str(), e.baseline.as_ref(), e.run.as_ref()))
        .collect();
    assert_eq!(
        got,
        [
            (
                "onnxruntime.version",
                Some(&json!("1.31.1")),
                Some(&json!("1.24.0"))
            ),
            (
                "environment.gpu_name",
                Some(&json!("NVIDIA H100")),
                Some(&json!("NVIDIA A100"))
            ),
            ("environment.cudnn", None, Some(&json!("9.1"))),
            ("environment.os", Some(&json!("linux")), None),
            (
                "execution_provider.intra_op_threads",
                Some(&Value::Null),
                None
            ),
            ("execution_provider.new_flag", None, Some(&json!(1))),
            (
                "execution_provider.use_tf32",
                Some(&json!(false)),
                Some(&json!(true))
            ),
        ]
    );
}

#[test]
fn env_without_environment_section_is_not_a_difference() {
    let a = meta("1.31.1", ep(), None);
    assert!(env_differences(&a, &a.clone()).is_empty());
    let b = meta("1.31.1", ep(), Some(json!({"cpu": "x"})));
    let d = env_differences(&b, &a);
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].key, "environment.cpu");
}

// ---------------------------------------------------------------------------------------------
// The whole comparison

#[test]
fn compare_bundles_everything_and_returns_heatmap_only_when_images_differ() {
    let lat = latents();
    let img = load_png("reference/pndm_64x64_s10_g7.5_neg/image.png");
    let files = models(&[("unet/model.onnx", "u")]);
    let md = typed(meta("1.31.1", ep(), None));
    let side = Outputs {
        latents: Some((&lat, &SHAPE)),
        image: &img,
        model_files: &files,
        metadata: &md,
        stages: None,
    };
    let (r, h) = compare(&side, &side, &Thresholds::default());
    assert_eq!(r.classification.verdict, Verdict::Identical);
    assert!(h.is_none());
    let v = serde_json::to_value(&r).expect("json");
    assert_eq!(v["verdict"], json!("identical"));
    assert_eq!(v["image"]["psnr_db"], json!("inf"));
    assert_eq!(v["thresholds"]["ssim_min"], json!(0.99));

    let mut other = img.clone();
    other.pixels[0] = other.pixels[0].wrapping_add(1);
    let md2 = typed(meta("1.30.0", ep(), None));
    let run = Outputs {
        image: &other,
        metadata: &md2,
        ..side
    };
    let (r, h) = compare(&run, &side, &Thresholds::default());
    assert_eq!(r.classification.verdict, Verdict::WithinTolerance);
    assert_eq!(r.env_differences.len(), 1);
    let h = h.expect("heatmap for a non-identical image");
    assert_eq!(h.max_level_diff, 1);
}

#[test]
fn compare_shape_mismatch_is_error_unless_the_model_changed() {
    let lat = latents();
    let img = pattern(8, 8);
    let files = models(&[("unet/model.onnx", "u")]);
    let md = Metadata::default();
    let base = Outputs {
        latents: Some((&lat, &SHAPE)),
        image: &img,
        model_files: &files,
        metadata: &md,
        stages: None,
    };
    let run = Outputs {
        latents: Some((&lat, &[1, 4, 4, 16])),
        ..base
    };
    let (r, _) = compare(&run, &base, &Thresholds::default());
    assert_eq!(r.classification.verdict, Verdict::Error);
    assert!(r
        .classification
        .error
        .as_deref()
        .unwrap_or("")
        .contains("[1, 4, 4, 16]"));
    assert!(r.latents.is_none());
    let other_files = models(&[("unet/model.onnx", "v")]);
    let run = Outputs {
        model_files: &other_files,
        ..run
    };
    let (r, _) = compare(&run, &base, &Thresholds::default());
    assert_eq!(r.classification.verdict, Verdict::ModelChanged);
    assert!(
        r.classification.error.is_some(),
        "the mismatch stays in the report"
    );
}
