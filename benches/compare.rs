//! Time one full baseline comparison at SD1.5's 512×512 (1×4×64×64 latents): hashes, latent
//! metrics, image metrics with image-compare's SSIM, diff heatmap, verdict and environment diff.
//! Median over ≥ 20 iterations, printed next to the 10 ms target. Run with
//! `cargo bench --bench compare`.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use monitor::compare::{
    compare, image_metrics, latent_metrics, ssim_image_compare, Outputs, Thresholds,
};
use monitor::sd::image::RgbImage;

const SHAPE: [usize; 4] = [1, 4, 64, 64];
const SIDE: u32 = 512;
const TARGET_MS: f64 = 10.0;

fn median_ms(mut f: impl FnMut()) -> (f64, usize) {
    // Warm up (rayon's pool starts on the first SSIM), then ≥ 20 runs or ~1 s.
    for _ in 0..3 {
        f();
    }
    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < 20 || (start.elapsed() < Duration::from_secs(1) && times.len() < 1000) {
        let t = Instant::now();
        f();
        times.push(t.elapsed());
    }
    times.sort();
    (times[times.len() / 2].as_secs_f64() * 1e3, times.len())
}

/// Deterministic pseudo-random bytes (an LCG), so both sides are image-like noise.
fn lcg_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 56) as u8
        })
        .collect()
}

fn main() {
    let n = (SIDE * SIDE * 3) as usize;
    let baseline_img = RgbImage {
        width: SIDE,
        height: SIDE,
        pixels: lcg_bytes(n, 1),
    };
    // The run differs by one level in every 7th value: the non-identical (slowest) path.
    let run_pixels = baseline_img
        .pixels
        .iter()
        .enumerate()
        .map(|(i, &p)| if i % 7 == 0 { p ^ 1 } else { p })
        .collect();
    let run_img = RgbImage {
        pixels: run_pixels,
        ..baseline_img.clone()
    };
    let base_lat: Vec<f32> = lcg_bytes(SHAPE.iter().product(), 2)
        .iter()
        .map(|&b| f32::from(b) / 64.0 - 2.0)
        .collect();
    let run_lat: Vec<f32> = base_lat.iter().map(|v| v + 1e-5).collect();
    let files: BTreeMap<String, String> = [("unet/model.onnx".to_string(), "ab".repeat(32))].into();
    let md = monitor::generation::Metadata::from_value(&serde_json::json!({"onnxruntime": {"version": "1.31.1"}, "execution_provider": {"execution_provider": "cpu"}}))
        .expect("metadata");
    let base = Outputs {
        latents: Some((&base_lat, &SHAPE)),
        image: &baseline_img,
        model_files: &files,
        metadata: &md,
        stages: None,
    };
    let run = Outputs {
        latents: Some((&run_lat, &SHAPE)),
        image: &run_img,
        ..base
    };
    let t = Thresholds::default();

    let (full, iters) = median_ms(|| {
        black_box(compare(black_box(&run), black_box(&base), &t));
    });
    let (lat, _) = median_ms(|| {
        black_box(latent_metrics(&run_lat, &SHAPE, &base_lat, &SHAPE).ok());
    });
    let (img, _) = median_ms(|| {
        black_box(image_metrics(&run_img, &baseline_img).ok());
    });
    let (lib, _) = median_ms(|| {
        black_box(ssim_image_compare(&run_img, &baseline_img).ok());
    });
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!("full comparison 512x512 + 1x4x64x64 (incl. heatmap): median {full:.2} ms over {iters} iterations");
    println!(
        "  target {TARGET_MS} ms → {:.2}× the target ({})",
        full / TARGET_MS,
        if full <= TARGET_MS { "met" } else { "MISSED" }
    );
    println!("  of which latent metrics {lat:.2} ms, image metrics (SSIM, PSNR) {img:.2} ms; {threads} CPU threads");
    println!("  (image-compare's own SSIM, same algorithm, for reference: {lib:.2} ms)");
}
