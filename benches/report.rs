//! The HTML report of a 3-case drifting round at 512² (the write-up's case size): the median
//! time of `report::write_round` (three case sections with baseline, current and diff images,
//! metrics, trends read from a history of 200 earlier rounds), beside the median time of one
//! SSIM/PSNR comparison of a 512² image pair measured in the same run (work every check does
//! anyway). Target: ≤ 100 ms per report. Run with `cargo bench --bench report`.

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use monitor::compare::Verdict;
use monitor::history::{CaseResult, History, NewRun};
use monitor::report::{write_round, ReportSettings};
use monitor::sd::image::RgbImage;
use serde_json::json;

const SIZE: u32 = 512;
const CASES: [&str; 3] = ["landscape", "portrait", "architecture"];

fn median_ms(mut f: impl FnMut()) -> (f64, usize) {
    f();
    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < 20 || (start.elapsed() < Duration::from_secs(3) && times.len() < 1000) {
        let t = Instant::now();
        f();
        times.push(t.elapsed());
    }
    times.sort();
    (times[times.len() / 2].as_secs_f64() * 1e3, times.len())
}

/// A noisy image (PNG-incompressible, like a generated one) that differs from `seed`'s
/// neighbour in a few pixels.
fn image(seed: u64) -> RgbImage {
    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ seed;
    let pixels = (0..SIZE * SIZE * 3)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 56) as u8
        })
        .collect();
    RgbImage {
        width: SIZE,
        height: SIZE,
        pixels,
    }
}

fn result(case: &str, verdict: Verdict, k: usize) -> CaseResult {
    CaseResult {
        latent_max_abs: Some(1e-4 * (k % 7) as f64),
        latent_mean_abs: Some(1e-5),
        latent_rmse: Some(2e-5),
        latent_cosine: Some(0.999_999),
        ssim: Some(0.9995),
        psnr_db: Some(52.5),
        pixels_differing: Some(12),
        reasons: Some(
            json!({"failures": [{"check": "latent_max_abs", "value": 3e-3, "limit": 1e-3, "message": "latent max|Δ| 3.00e-3 > 1.00e-3 (3.0× the limit)"}], "diverged_at": "step 1 noise_pred"}),
        ),
        env_diff: Some(
            json!([{"key": "onnxruntime.version", "baseline": "1.24.4", "run": "1.31.1"}]),
        ),
        duration_s: Some(14.2),
        timings: Some(
            json!({"generation_s": 14.0, "text_encoder_s": 0.1, "unet_s": 13.0, "vae_s": 0.9}),
        ),
        ..CaseResult::new(case, verdict)
    }
}

fn write_case(round: &Path, case: &str, seed: u64) {
    let dir = round.join(case);
    std::fs::create_dir_all(&dir).unwrap();
    let base = image(seed);
    let mut cur = base.clone();
    cur.pixels[..64]
        .iter_mut()
        .for_each(|p| *p = p.wrapping_add(3));
    for (name, img) in [
        ("baseline.png", &base),
        ("image.png", &cur),
        ("diff.png", &base),
    ] {
        std::fs::write(dir.join(name), img.to_png().unwrap()).unwrap();
    }
    std::fs::write(
        dir.join("compare.json"),
        json!({"thresholds": {"latent_max_abs": 1e-3, "latent_cosine_min": 0.9999, "ssim_min": 0.99}}).to_string(),
    )
    .unwrap();
    std::fs::write(
        dir.join("metadata.json"),
        json!({"parameters": {"prompt": "a mountain lake at sunrise, photorealistic", "seed": 42, "steps": 25, "width": 512, "height": 512, "scheduler": "pndm"}}).to_string(),
    )
    .unwrap();
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let reports = dir.path().join("reports");
    let mut history = History::open(dir.path().join("m.db")).unwrap();
    let mut last = 0;
    for k in 0..200 {
        let id = history.begin_run(&NewRun::now("check")).unwrap();
        let verdict = if k == 199 {
            Verdict::Drift
        } else {
            Verdict::Identical
        };
        let rows: Vec<CaseResult> = CASES.iter().map(|c| result(c, verdict, k)).collect();
        history.record_results(id, &rows).unwrap();
        history.finish_run(id, 1, 15.0).unwrap();
        last = id;
    }
    let round = reports.join(format!("run-{last:06}"));
    for (i, c) in CASES.iter().enumerate() {
        write_case(&round, c, i as u64);
    }
    let settings = ReportSettings {
        base_url: None,
        trend: 20,
    };
    let (report_ms, n) = median_ms(|| {
        black_box(write_round(&reports, &history, last, &settings).unwrap());
    });
    let (a, b) = (image(1), image(2));
    let (ssim_ms, m) = median_ms(|| {
        black_box(monitor::compare::image_metrics(&a, &b).unwrap());
    });
    let html = std::fs::metadata(round.join("index.html")).unwrap().len();
    println!(
        "report of 3 cases at {SIZE}²: median {report_ms:.2} ms ({n} runs, index.html {html} bytes); \
         one {SIZE}² SSIM+PSNR comparison: median {ssim_ms:.2} ms ({m} runs); ratio {:.2}x; target ≤ 100 ms: {}",
        report_ms / ssim_ms,
        if report_ms <= 100.0 { "met" } else { "MISSED" }
    );
}
