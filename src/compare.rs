//! Comparing a run's output with a stored baseline: latent and image metrics, a diff heatmap,
//! thresholds, the verdict, and the environment differences that may explain a change.
//!
//! Everything here is a pure function of its inputs (no files, no clock) so the `check` command
//! can be tested without running a model. Argument order is always **run first, baseline second**.
//!
//! Non-finite numbers: a metric is never silently "good". Differences are computed with plain
//! IEEE arithmetic and NaN is propagated explicitly (Rust's `f64::max` would drop it), and every
//! threshold test passes only on an ordered comparison, so that a NaN metric fails it. On top of
//! that, any NaN or ±inf in the run's latents makes the verdict `error`, even if the baseline
//! holds the same bits: a run that produced no valid output cannot be judged (and a baseline with
//! NaN in it is never accepted).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize, Serializer};

use crate::generation::Metadata;
use crate::sd::image::RgbImage;

/// Why two outputs could not be compared at all.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CompareError {
    /// One side is an image-only generation (a service's answer): there are no latents to compare.
    #[error("no latents to compare (an image-only generation)")]
    NoLatents,
    /// The latent tensors have different shapes.
    #[error("latent shapes differ: run {run:?} vs baseline {baseline:?}")]
    LatentShape {
        /// The run's shape.
        run: Vec<usize>,
        /// The baseline's shape.
        baseline: Vec<usize>,
    },
    /// A latent buffer's length does not match its declared shape.
    #[error("{which} latents have {len} values but shape {shape:?} needs {expected}")]
    LatentLength {
        /// "run" or "baseline".
        which: &'static str,
        /// The declared shape.
        shape: Vec<usize>,
        /// Values present.
        len: usize,
        /// Product of the shape.
        expected: usize,
    },
    /// The images have different sizes.
    #[error("image sizes differ: run {run_width}x{run_height} vs baseline {baseline_width}x{baseline_height}")]
    ImageSize {
        /// Run width.
        run_width: u32,
        /// Run height.
        run_height: u32,
        /// Baseline width.
        baseline_width: u32,
        /// Baseline height.
        baseline_height: u32,
    },
    /// An image's pixel buffer does not hold `width * height * 3` bytes.
    #[error(
        "{which} image is {width}x{height} but has {len} bytes ({expected} expected for RGB8)"
    )]
    ImageBuffer {
        /// "run" or "baseline".
        which: &'static str,
        /// Declared width.
        width: u32,
        /// Declared height.
        height: u32,
        /// Bytes present.
        len: usize,
        /// Bytes needed.
        expected: usize,
    },
    /// image-compare refused the images.
    #[error("SSIM computation failed: {0}")]
    Ssim(String),
}

// ---------------------------------------------------------------------------------------------
// JSON for non-finite floats

/// serde_json writes NaN and ±inf as `null`, which would hide exactly the values a watchdog must
/// show, so metrics serialize finite values as numbers and the rest as the strings "NaN", "inf",
/// "-inf".
fn float_json<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    if v.is_finite() {
        s.serialize_f64(*v)
    } else if v.is_nan() {
        s.serialize_str("NaN")
    } else if *v > 0.0 {
        s.serialize_str("inf")
    } else {
        s.serialize_str("-inf")
    }
}

// ---------------------------------------------------------------------------------------------
// Latents

/// Metrics between the run's and the baseline's final latents (`run - baseline`, f64 accumulation).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LatentMetrics {
    /// The sha256 of the run's and baseline's little-endian f32 bytes are equal (bit-identical).
    pub identical: bool,
    /// sha256 (hex) of the run's raw little-endian f32 data. Not the `.npy` file's hash: that one
    /// includes the header, so it is not comparable across writers.
    pub run_sha256: String,
    /// sha256 (hex) of the baseline's raw little-endian f32 data.
    pub baseline_sha256: String,
    /// The (common) shape.
    pub shape: Vec<usize>,
    /// max |Δ|; NaN if any Δ is NaN.
    #[serde(serialize_with = "float_json")]
    pub max_abs: f64,
    /// mean |Δ| (0 for empty tensors).
    #[serde(serialize_with = "float_json")]
    pub mean_abs: f64,
    /// sqrt(mean Δ²).
    #[serde(serialize_with = "float_json")]
    pub rmse: f64,
    /// Cosine similarity; see [`cosine_similarity`] for the zero-vector and non-finite rules.
    #[serde(serialize_with = "float_json")]
    pub cosine: f64,
    /// Count of NaN/±inf values in the run's latents (any is drift).
    pub run_non_finite: usize,
    /// Count of NaN/±inf values in the baseline's latents.
    pub baseline_non_finite: usize,
}

/// sha256 (lowercase hex) of `values` as little-endian f32 bytes, the same on every host
/// (the same hash the pipeline records for the initial noise).
pub fn latent_sha256(values: &[f32]) -> String {
    crate::sd::noise::sha256_f32(values)
}

fn check_latent_len(
    which: &'static str,
    values: &[f32],
    shape: &[usize],
) -> Result<(), CompareError> {
    let expected: usize = shape.iter().product();
    if values.len() != expected {
        return Err(CompareError::LatentLength {
            which,
            shape: shape.to_vec(),
            len: values.len(),
            expected,
        });
    }
    Ok(())
}

/// Cosine similarity of `a` and `b` in f64, with the undefined cases pinned down:
/// both all-zero → 1 (the vectors are equal); exactly one all-zero → 0 (no shared direction);
/// any NaN/inf in either → NaN (so it fails every cosine threshold). Clamped to [-1, 1] against
/// rounding.
pub fn cosine_similarity(a: &[f32], b: &[f32]) -> f64 {
    let (mut dot, mut na, mut nb) = (0.0f64, 0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (f64::from(x), f64::from(y));
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if !(dot.is_finite() && na.is_finite() && nb.is_finite()) {
        return f64::NAN;
    }
    match (na == 0.0, nb == 0.0) {
        (true, true) => 1.0,
        (true, false) | (false, true) => 0.0,
        // sqrt of the product (not product of sqrts): exact for parallel vectors like [1,2]·[-1,-2].
        (false, false) => (dot / (na * nb).sqrt()).clamp(-1.0, 1.0),
    }
}

/// Compares the run's latents with the baseline's. Both are flat row-major `f32` with a shape;
/// shapes must match exactly (a `[1,4,64,64]` vs `[4,64,64]` is a mismatch, not a reshape).
pub fn latent_metrics(
    run: &[f32],
    run_shape: &[usize],
    baseline: &[f32],
    baseline_shape: &[usize],
) -> Result<LatentMetrics, CompareError> {
    if run_shape != baseline_shape {
        return Err(CompareError::LatentShape {
            run: run_shape.to_vec(),
            baseline: baseline_shape.to_vec(),
        });
    }
    check_latent_len("run", run, run_shape)?;
    check_latent_len("baseline", baseline, baseline_shape)?;
    let run_sha256 = latent_sha256(run);
    let baseline_sha256 = latent_sha256(baseline);
    let (max_abs, sum_abs, sum_sq) = diff_sums(run, baseline);
    let n = run.len() as f64;
    let (mean_abs, rmse) = if run.is_empty() {
        (0.0, 0.0)
    } else {
        (sum_abs / n, (sum_sq / n).sqrt())
    };
    Ok(LatentMetrics {
        identical: run_sha256 == baseline_sha256,
        run_sha256,
        baseline_sha256,
        shape: run_shape.to_vec(),
        max_abs,
        mean_abs,
        rmse,
        cosine: cosine_similarity(run, baseline),
        run_non_finite: run.iter().filter(|v| !v.is_finite()).count(),
        baseline_non_finite: baseline.iter().filter(|v| !v.is_finite()).count(),
    })
}

/// (max |Δ|, Σ|Δ|, ΣΔ²) in f64; a NaN Δ makes the max NaN (f64::max would skip it).
fn diff_sums(run: &[f32], baseline: &[f32]) -> (f64, f64, f64) {
    let (mut max, mut sum_abs, mut sum_sq) = (0.0f64, 0.0f64, 0.0f64);
    for (&r, &b) in run.iter().zip(baseline) {
        let d = (f64::from(r) - f64::from(b)).abs();
        if d.is_nan() || d > max {
            max = if max.is_nan() { max } else { d };
        }
        sum_abs += d;
        sum_sq += d * d;
    }
    (max, sum_abs, sum_sq)
}

// ---------------------------------------------------------------------------------------------
// Images

/// Metrics between the run's and the baseline's RGB8 images.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ImageMetrics {
    /// Every byte equal.
    pub identical: bool,
    /// Width in pixels (common).
    pub width: u32,
    /// Height in pixels (common).
    pub height: u32,
    /// SSIM from image-compare (see [`ssim`]); exactly 1 when identical.
    #[serde(serialize_with = "float_json")]
    pub ssim: f64,
    /// PSNR in dB over all channel values with peak 255 (as scikit-image's
    /// `peak_signal_noise_ratio(data_range=255)`); +inf when identical.
    #[serde(serialize_with = "float_json")]
    pub psnr_db: f64,
    /// Pixels where any channel differs.
    pub pixels_differing: u64,
    /// Largest |Δ| of any channel, in 8-bit levels.
    pub max_level_diff: u8,
}

fn check_image(which: &'static str, img: &RgbImage) -> Result<(), CompareError> {
    let expected = img.width as usize * img.height as usize * 3;
    if img.pixels.len() != expected {
        return Err(CompareError::ImageBuffer {
            which,
            width: img.width,
            height: img.height,
            len: img.pixels.len(),
            expected,
        });
    }
    Ok(())
}

fn check_images(run: &RgbImage, baseline: &RgbImage) -> Result<(), CompareError> {
    if (run.width, run.height) != (baseline.width, baseline.height) {
        return Err(CompareError::ImageSize {
            run_width: run.width,
            run_height: run.height,
            baseline_width: baseline.width,
            baseline_height: baseline.height,
        });
    }
    check_image("run", run)?;
    check_image("baseline", baseline)
}

/// Compares the run's image with the baseline's. Sizes must match.
pub fn image_metrics(run: &RgbImage, baseline: &RgbImage) -> Result<ImageMetrics, CompareError> {
    check_images(run, baseline)?;
    let identical = run.pixels == baseline.pixels;
    let (pixels_differing, max_level_diff, sum_sq) =
        pixel_diff_stats(&run.pixels, &baseline.pixels);
    let ssim = if identical { 1.0 } else { ssim(run, baseline)? };
    Ok(ImageMetrics {
        identical,
        width: run.width,
        height: run.height,
        ssim,
        psnr_db: psnr_db(sum_sq, run.pixels.len()),
        pixels_differing,
        max_level_diff,
    })
}

/// (pixels with any channel differing, max channel |Δ|, Σ Δ² over all channel values).
fn pixel_diff_stats(run: &[u8], baseline: &[u8]) -> (u64, u8, u64) {
    let (mut differing, mut max, mut sum_sq) = (0u64, 0u8, 0u64);
    for (r, b) in run.chunks_exact(3).zip(baseline.chunks_exact(3)) {
        let d = pixel_max_diff(r, b);
        differing += u64::from(d != 0);
        max = max.max(d);
        sum_sq += r
            .iter()
            .zip(b)
            .map(|(&x, &y)| u64::from(x.abs_diff(y)).pow(2))
            .sum::<u64>();
    }
    (differing, max, sum_sq)
}

fn pixel_max_diff(r: &[u8], b: &[u8]) -> u8 {
    r.iter()
        .zip(b)
        .map(|(&x, &y)| x.abs_diff(y))
        .max()
        .unwrap_or(0)
}

/// PSNR = 10·log10(255² / MSE); +inf for MSE 0 (and for empty images, which are trivially equal).
fn psnr_db(sum_sq: u64, n_values: usize) -> f64 {
    if sum_sq == 0 || n_values == 0 {
        return f64::INFINITY;
    }
    let mse = sum_sq as f64 / n_values as f64;
    10.0 * (255.0f64 * 255.0 / mse).log10()
}

/// SSIM of two same-size RGB8 images: image-compare's
/// `rgb_similarity_structure(&Algorithm::MSSIMSimple, ..)`: each channel on its own, the mean of
/// per-window SSIM over **non-overlapping 8×8 windows** (edge windows smaller, weighted by area),
/// and the **minimum over R, G, B** as the score.
///
/// This is not scikit-image's `structural_similarity` (Gaussian σ=1.5 sliding window, every pixel
/// a window centre, mean over channels), and image-compare also sums (co)variances over the window
/// instead of averaging them, which makes its C2 stabiliser effectively 64× smaller (matters in
/// flat regions, where the variances are small). Thresholds tuned on skimage carry over only
/// roughly. Measured on the repo's reference images (tests/compare.rs `ssim_vs_skimage_table`,
/// skimage 0.26 with `gaussian_weights=True, sigma=1.5, use_sample_covariance=False`):
/// ±1-level changes on 1–50% of values differ by ≤ 6e-5; Gaussian noise σ=2 by ≤ 3.3e-4, σ=5 by
/// ≤ 2.7e-3; +2 brightness by ≤ 1e-4; gross changes (3×3 blur, a replaced 16×16 patch) by up to
/// 0.05, in either direction. Around the default `ssim_min` of 0.99 they agree to ~3e-4. Those
/// images come from a random-weight model and are noise-like (high variance everywhere); on smooth
/// real SD images the C2 difference will widen the gap, which has not been measured yet.
///
/// Speed: image-compare itself takes 16–24 ms for 512×512 on 2 cores (per-pixel bounds-checked
/// access, four passes per window, a similarity map we do not use), over the 10 ms budget. So this
/// function computes the **same algorithm** directly from exact integer window sums (~1 ms), and
/// [`ssim_image_compare`] calls the library; tests check the two agree to 1e-12 on real and
/// perturbed images. (The integer sums are, if anything, more exact: image-compare subtracts a
/// rounded mean in floating point.)
pub fn ssim(run: &RgbImage, baseline: &RgbImage) -> Result<f64, CompareError> {
    check_images(run, baseline)?;
    let score = (0..3)
        .map(|c| channel_mssim(run, baseline, c))
        .fold(1.0, f64::min);
    Ok(score)
}

/// image-compare's constants: K1 = 0.01, K2 = 0.03, L = 255, 8×8 windows.
const SSIM_WINDOW: u32 = 8;
const SSIM_C1: f64 = (0.01 * 255.0) * (0.01 * 255.0);
const SSIM_C2: f64 = (0.03 * 255.0) * (0.03 * 255.0);

/// Area-weighted mean of per-window SSIM for one channel, windows in image-compare's order
/// (column-major), so the final sum rounds the same way.
fn channel_mssim(a: &RgbImage, b: &RgbImage, channel: usize) -> f64 {
    let (mut weighted, mut area_sum) = (0.0f64, 0.0f64);
    for x0 in (0..a.width).step_by(SSIM_WINDOW as usize) {
        for y0 in (0..a.height).step_by(SSIM_WINDOW as usize) {
            let x1 = (x0 + SSIM_WINDOW).min(a.width);
            let y1 = (y0 + SSIM_WINDOW).min(a.height);
            let area = f64::from((x1 - x0) * (y1 - y0));
            weighted += window_ssim(a, b, channel, (x0, x1), (y0, y1)) * area;
            area_sum += area;
        }
    }
    if area_sum == 0.0 {
        1.0
    } else {
        weighted / area_sum
    }
}

/// SSIM of one window as image-compare computes it: means, and (co)variances as **sums** of
/// centred products (not divided by the pixel count). Integer sums make the centring exact:
/// Σ(x−μx)(y−μy) = (n·Σxy − Σx·Σy) / n.
fn window_ssim(
    a: &RgbImage,
    b: &RgbImage,
    channel: usize,
    (x0, x1): (u32, u32),
    (y0, y1): (u32, u32),
) -> f64 {
    let (mut sx, mut sy, mut sxx, mut syy, mut sxy) = (0i64, 0i64, 0i64, 0i64, 0i64);
    let stride = a.width as usize * 3;
    for y in y0 as usize..y1 as usize {
        let row = y * stride + channel;
        for x in x0 as usize..x1 as usize {
            let i = row + x * 3;
            let (p, q) = (i64::from(a.pixels[i]), i64::from(b.pixels[i]));
            sx += p;
            sy += q;
            sxx += p * p;
            syy += q * q;
            sxy += p * q;
        }
    }
    let n = i64::from((x1 - x0) * (y1 - y0));
    let nf = n as f64;
    let (mx, my) = (sx as f64 / nf, sy as f64 / nf);
    let var_x = (n * sxx - sx * sx) as f64 / nf;
    let var_y = (n * syy - sy * sy) as f64 / nf;
    let cov = (n * sxy - sx * sy) as f64 / nf;
    ((2.0 * mx * my + SSIM_C1) * (2.0 * cov + SSIM_C2))
        / ((mx * mx + my * my + SSIM_C1) * (var_x + var_y + SSIM_C2))
}

/// The same SSIM as [`ssim`], computed by image-compare itself
/// (`rgb_similarity_structure(&Algorithm::MSSIMSimple, ..)`); kept as the reference the fast
/// version is tested against.
pub fn ssim_image_compare(run: &RgbImage, baseline: &RgbImage) -> Result<f64, CompareError> {
    check_images(run, baseline)?;
    let a = to_image_crate(run)?;
    let b = to_image_crate(baseline)?;
    image_compare::rgb_similarity_structure(&image_compare::Algorithm::MSSIMSimple, &a, &b)
        .map(|s| s.score)
        .map_err(|e| CompareError::Ssim(e.to_string()))
}

fn to_image_crate(img: &RgbImage) -> Result<image::RgbImage, CompareError> {
    // The buffer length was checked by the caller, so from_raw only fails on a bug; say so anyway.
    image::RgbImage::from_raw(img.width, img.height, img.pixels.clone()).ok_or_else(|| {
        CompareError::Ssim(format!(
            "{}x{} buffer of {} bytes",
            img.width,
            img.height,
            img.pixels.len()
        ))
    })
}

// ---------------------------------------------------------------------------------------------
// Heatmap

/// A difference heatmap and its scale.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiffHeatmap {
    /// The heatmap, same size as the inputs.
    pub image: RgbImage,
    /// The |Δ| (in 8-bit levels) shown as fully hot (white); 0 when the images are equal.
    pub max_level_diff: u8,
}

/// Per-pixel heatmap of the largest channel |Δ| between `run` and `baseline`.
///
/// Scale: t = |Δ| / max|Δ| over the image, so the largest difference is fully hot. Colours follow
/// a black → red → yellow → white "hot" ramp: v = ceil(765·t); R = min(v, 255),
/// G = clamp(v − 255, 0, 255), B = clamp(v − 510, 0, 255). Equal pixels are black (0,0,0), and the
/// ceiling keeps any non-zero difference visibly non-black (R ≥ 1) however small it is relative to
/// the maximum. Encode with [`RgbImage::to_png`].
pub fn diff_heatmap(run: &RgbImage, baseline: &RgbImage) -> Result<DiffHeatmap, CompareError> {
    check_images(run, baseline)?;
    let diffs: Vec<u8> = run
        .pixels
        .chunks_exact(3)
        .zip(baseline.pixels.chunks_exact(3))
        .map(|(r, b)| pixel_max_diff(r, b))
        .collect();
    let max = diffs.iter().copied().max().unwrap_or(0);
    let pixels = diffs.iter().flat_map(|&d| hot_colour(d, max)).collect();
    Ok(DiffHeatmap {
        image: RgbImage {
            width: run.width,
            height: run.height,
            pixels,
        },
        max_level_diff: max,
    })
}

fn hot_colour(d: u8, max: u8) -> [u8; 3] {
    if d == 0 || max == 0 {
        return [0, 0, 0];
    }
    // Integer ceil(765·d/max): exact, no float rounding at the ramp's joints.
    let v = (765 * u32::from(d)).div_ceil(u32::from(max));
    let ch = |lo: u32| v.saturating_sub(lo).min(255) as u8;
    [ch(0), ch(255), ch(510)]
}

// ---------------------------------------------------------------------------------------------
// Thresholds

/// Tolerances for `within_tolerance`. Deserialized from config (unknown keys are an error, so a
/// typo cannot silently leave a default in force).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Thresholds {
    /// Largest allowed latent max |Δ|.
    pub latent_max_abs: f64,
    /// Smallest allowed latent cosine similarity.
    pub latent_cosine_min: f64,
    /// Smallest allowed image SSIM (image-compare's, see [`ssim`]).
    pub ssim_min: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            latent_max_abs: 1.0e-3,
            latent_cosine_min: 0.9999,
            ssim_min: 0.99,
        }
    }
}

/// A per-case override of some thresholds; absent fields keep the base value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartialThresholds {
    /// Overrides [`Thresholds::latent_max_abs`].
    pub latent_max_abs: Option<f64>,
    /// Overrides [`Thresholds::latent_cosine_min`].
    pub latent_cosine_min: Option<f64>,
    /// Overrides [`Thresholds::ssim_min`].
    pub ssim_min: Option<f64>,
}

impl Thresholds {
    /// `self` with every field that `o` sets replaced.
    pub fn with_overrides(&self, o: &PartialThresholds) -> Thresholds {
        Thresholds {
            latent_max_abs: o.latent_max_abs.unwrap_or(self.latent_max_abs),
            latent_cosine_min: o.latent_cosine_min.unwrap_or(self.latent_cosine_min),
            ssim_min: o.ssim_min.unwrap_or(self.ssim_min),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Verdict

/// The outcome of one comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Latent bytes and image bytes identical.
    Identical,
    /// Not identical, but every threshold met.
    WithinTolerance,
    /// A threshold failed (or the run produced NaN/inf).
    Drift,
    /// A model file's hash differs from the baseline's; metrics are not judged.
    ModelChanged,
    /// The run could not be completed or compared.
    Error,
    /// Nothing to compare with: a rebaseline's first baseline of a case (never a check's).
    New,
}

impl Verdict {
    /// The serialized name, e.g. "within_tolerance".
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Identical => "identical",
            Verdict::WithinTolerance => "within_tolerance",
            Verdict::Drift => "drift",
            Verdict::ModelChanged => "model_changed",
            Verdict::Error => "error",
            Verdict::New => "new",
        }
    }
}

impl std::str::FromStr for Verdict {
    type Err = String;

    fn from_str(s: &str) -> Result<Verdict, String> {
        [
            Verdict::Identical,
            Verdict::WithinTolerance,
            Verdict::Drift,
            Verdict::ModelChanged,
            Verdict::Error,
            Verdict::New,
        ]
        .into_iter()
        .find(|v| v.as_str() == s)
        .ok_or_else(|| format!("unknown verdict {s:?}"))
    }
}

impl Verdict {
    /// True for the verdicts that count as a failed check (drift, model change, error).
    pub fn is_bad(self) -> bool {
        matches!(
            self,
            Verdict::Drift | Verdict::ModelChanged | Verdict::Error
        )
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A model file whose hash differs between run and baseline (`None` = file absent on that side).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelFileChange {
    /// The file's key in the hash map (relative path).
    pub file: String,
    /// The baseline's sha256, if the baseline had the file.
    pub baseline: Option<String>,
    /// The run's sha256, if the run had the file.
    pub run: Option<String>,
}

/// One failed threshold, with the numbers and a human-readable line.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ThresholdFailure {
    /// Which check: "latent_max_abs", "latent_cosine_min", "ssim_min" or "latent_non_finite".
    pub check: &'static str,
    /// The measured value.
    #[serde(serialize_with = "float_json")]
    pub value: f64,
    /// The limit it failed.
    #[serde(serialize_with = "float_json")]
    pub limit: f64,
    /// E.g. "latent max|Δ| 3.20e-3 > 1.00e-3 (3.2× the limit)".
    pub message: String,
}

/// A verdict with its reasons.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Classification {
    /// The verdict.
    pub verdict: Verdict,
    /// For `model_changed`: every added, removed or changed model file.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub model_changes: Vec<ModelFileChange>,
    /// For `drift`: every failed threshold.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<ThresholdFailure>,
    /// For `error`: what went wrong.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Classification {
    fn plain(verdict: Verdict) -> Self {
        Self {
            verdict,
            model_changes: Vec::new(),
            failures: Vec::new(),
            error: None,
        }
    }
}

/// The metrics of a completed comparison (no latent metrics for image-only generations), or why
/// there are none.
pub type MetricsOrError<'a> = Result<(Option<&'a LatentMetrics>, &'a ImageMetrics), &'a str>;

/// Decides the verdict. Precedence, first match wins:
/// 1. `metrics` is an error → `error`;
/// 2. NaN or ±inf in the run's latents (when it has some) → `error`: the pipeline did not produce an image to judge
///    (a broken scheduler config, an overflowing fp16 model), which is a fault to fix, not drift;
/// 3. any model file added, removed or changed → `model_changed` (a new model is expected to give
///    new outputs, so it is never reported as drift, whatever the metrics say);
/// 4. latent bytes (when compared) and image pixels identical → `identical`;
/// 5. every threshold met → `within_tolerance`;
/// 6. otherwise `drift`, listing each failed threshold.
pub fn classify(
    run_models: &BTreeMap<String, String>,
    baseline_models: &BTreeMap<String, String>,
    metrics: MetricsOrError<'_>,
    thresholds: &Thresholds,
) -> Classification {
    let (latents, image) = match metrics {
        Ok(m) => m,
        Err(e) => {
            return Classification {
                error: Some(e.to_string()),
                ..Classification::plain(Verdict::Error)
            }
        }
    };
    if let Some(l) = latents.filter(|l| l.run_non_finite > 0) {
        return Classification {
            error: Some(format!(
                "the run's latents contain {} NaN/inf values (of {}): the pipeline produced no valid output",
                l.run_non_finite,
                l.shape.iter().product::<usize>()
            )),
            failures: threshold_failures(latents, image, thresholds),
            ..Classification::plain(Verdict::Error)
        };
    }
    let model_changes = model_changes(run_models, baseline_models);
    if !model_changes.is_empty() {
        return Classification {
            model_changes,
            ..Classification::plain(Verdict::ModelChanged)
        };
    }
    let failures = threshold_failures(latents, image, thresholds);
    if latents.is_none_or(|l| l.identical) && image.identical {
        return Classification::plain(Verdict::Identical);
    }
    if failures.is_empty() {
        return Classification::plain(Verdict::WithinTolerance);
    }
    Classification {
        failures,
        ..Classification::plain(Verdict::Drift)
    }
}

/// Files whose hash differs, was added or was removed, in key order.
pub fn model_changes(
    run: &BTreeMap<String, String>,
    baseline: &BTreeMap<String, String>,
) -> Vec<ModelFileChange> {
    let keys: std::collections::BTreeSet<&String> = run.keys().chain(baseline.keys()).collect();
    keys.into_iter()
        .filter(|k| run.get(*k) != baseline.get(*k))
        .map(|k| ModelFileChange {
            file: k.clone(),
            baseline: baseline.get(k).cloned(),
            run: run.get(k).cloned(),
        })
        .collect()
}

/// Every failed threshold (the latent ones only where latents were compared). A NaN metric is
/// incomparable, so it fails every check.
pub fn threshold_failures(
    latents: Option<&LatentMetrics>,
    image: &ImageMetrics,
    t: &Thresholds,
) -> Vec<ThresholdFailure> {
    let mut out = Vec::new();
    if let Some(latents) = latents {
        latent_failures(latents, t, &mut out);
    }
    if !at_least(image.ssim, t.ssim_min) {
        out.push(below("ssim_min", "image SSIM", image.ssim, t.ssim_min));
    }
    out
}

fn latent_failures(latents: &LatentMetrics, t: &Thresholds, out: &mut Vec<ThresholdFailure>) {
    if latents.run_non_finite > 0 {
        out.push(ThresholdFailure {
            check: "latent_non_finite",
            value: latents.run_non_finite as f64,
            limit: 0.0,
            message: format!(
                "run latents contain {} NaN/inf values",
                latents.run_non_finite
            ),
        });
    }
    if !at_most(latents.max_abs, t.latent_max_abs) {
        out.push(ThresholdFailure {
            check: "latent_max_abs",
            value: latents.max_abs,
            limit: t.latent_max_abs,
            message: format!(
                "latent max|Δ| {:.2e} > {:.2e} ({:.3}× the limit)",
                latents.max_abs,
                t.latent_max_abs,
                latents.max_abs / t.latent_max_abs
            ),
        });
    }
    if !at_least(latents.cosine, t.latent_cosine_min) {
        out.push(below(
            "latent_cosine_min",
            "latent cosine",
            latents.cosine,
            t.latent_cosine_min,
        ));
    }
}

/// `value <= limit`, false when either is NaN.
fn at_most(value: f64, limit: f64) -> bool {
    matches!(
        value.partial_cmp(&limit),
        Some(std::cmp::Ordering::Less | std::cmp::Ordering::Equal)
    )
}

/// `value >= limit`, false when either is NaN.
fn at_least(value: f64, limit: f64) -> bool {
    matches!(
        value.partial_cmp(&limit),
        Some(std::cmp::Ordering::Greater | std::cmp::Ordering::Equal)
    )
}

fn below(check: &'static str, what: &str, value: f64, limit: f64) -> ThresholdFailure {
    ThresholdFailure {
        check,
        value,
        limit,
        message: format!(
            "{what} {value:.6} < {limit} (short by {:.2e})",
            limit - value
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// Environment

/// One metadata field that differs between baseline and run (`None` = absent on that side).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnvDiff {
    /// Dotted key, e.g. "execution_provider.use_tf32".
    pub key: String,
    /// The baseline's value.
    pub baseline: Option<serde_json::Value>,
    /// The run's value.
    pub run: Option<serde_json::Value>,
}

impl EnvDiff {
    /// `key: "baseline" → "run"`, values as JSON, a missing side as `(absent)`.
    pub fn describe(&self) -> String {
        let show = |v: &Option<serde_json::Value>| {
            v.as_ref().map_or("(absent)".to_string(), |v| v.to_string())
        };
        format!(
            "{}: {} → {}",
            self.key,
            show(&self.baseline),
            show(&self.run)
        )
    }

    /// [`describe`](Self::describe) with strings unquoted, for people rather than scripts
    /// (alerts, reports): `onnxruntime.version: 1.24.4 → 1.31.1`.
    pub fn describe_plain(&self) -> String {
        let show = |v: &Option<serde_json::Value>| match v {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(v) => v.to_string(),
            None => "(absent)".into(),
        };
        format!(
            "{}: {} → {}",
            self.key,
            show(&self.baseline),
            show(&self.run)
        )
    }
}

/// Fixed keys compared between `metadata.json` documents (see `monitor generate`).
// The library's path is left out on purpose: it differs on every host (venv locations) while
// the version, provider and settings are what change bits.
pub const ENV_KEYS: [&str; 8] = [
    "onnxruntime.version",
    "environment.cpu_features",
    "environment.gpu_name",
    "environment.driver",
    "environment.cuda",
    "environment.cudnn",
    "environment.os",
    "environment.cpu",
];

/// Environment differences between a run's and the baseline's metadata: the [`ENV_KEYS`] plus
/// every field of `execution_provider` and of `service` (what a generation service reported:
/// its model hash, version, …) (union of both sides, nested objects flattened to dotted keys).
/// A key absent on both sides is not a difference; absent on one side is (and an explicit
/// `null` differs from absent, since it means the field was recorded).
pub fn env_differences(run: &serde_json::Value, baseline: &serde_json::Value) -> Vec<EnvDiff> {
    let mut out: Vec<EnvDiff> = ENV_KEYS
        .iter()
        .filter_map(|key| {
            let (b, r) = (lookup(baseline, key), lookup(run, key));
            (b != r).then(|| EnvDiff {
                key: key.to_string(),
                baseline: b.cloned(),
                run: r.cloned(),
            })
        })
        .collect();
    for block in ["execution_provider", "service"] {
        // Leaves are collected by walking, not looked up by dotted key: a service's own keys
        // may contain dots.
        let (mut b, mut r) = (BTreeMap::new(), BTreeMap::new());
        if let Some(v) = baseline.get(block) {
            leaves(block, v, &mut b);
        }
        if let Some(v) = run.get(block) {
            leaves(block, v, &mut r);
        }
        let keys: std::collections::BTreeSet<&String> = b.keys().chain(r.keys()).collect();
        out.extend(keys.into_iter().filter_map(|key| {
            let (bv, rv) = (b.get(key), r.get(key));
            (bv != rv).then(|| EnvDiff {
                key: key.clone(),
                baseline: bv.map(|v| (*v).clone()),
                run: rv.map(|v| (*v).clone()),
            })
        }));
    }
    out
}

/// [`env_differences`] between two generations' metadata.
pub fn metadata_env_differences(run: &Metadata, baseline: &Metadata) -> Vec<EnvDiff> {
    env_differences(&run.to_value(), &baseline.to_value())
}

fn leaves<'a>(
    prefix: &str,
    v: &'a serde_json::Value,
    out: &mut BTreeMap<String, &'a serde_json::Value>,
) {
    match v.as_object() {
        Some(map) => map
            .iter()
            .for_each(|(k, v)| leaves(&format!("{prefix}.{k}"), v, out)),
        None => {
            out.insert(prefix.to_string(), v);
        }
    }
}

fn lookup<'a>(doc: &'a serde_json::Value, dotted: &str) -> Option<&'a serde_json::Value> {
    dotted.split('.').try_fold(doc, |v, k| v.get(k))
}

// ---------------------------------------------------------------------------------------------
// Whole comparison

/// One side of a comparison: what a run (or the baseline) produced and recorded.
#[derive(Debug, Clone, Copy)]
pub struct Outputs<'a> {
    /// Final latents, flat row-major, and their shape (e.g. `[1, 4, 64, 64]`); `None` for an
    /// image-only generation (a service's answer).
    pub latents: Option<(&'a [f32], &'a [usize])>,
    /// The decoded image.
    pub image: &'a RgbImage,
    /// sha256 of every model file, keyed by relative path (`metadata.model.files_sha256`).
    pub model_files: &'a BTreeMap<String, String>,
    /// The whole `metadata.json`, for [`env_differences`].
    pub metadata: &'a Metadata,
    /// Its stage tensors (`stages.npy`), when kept: magnitudes where the run first differs.
    pub stages: Option<&'a crate::stage_data::StoredStages>,
}

impl CompareReport {
    /// `first differs at: STAGE (max|Δ| …; latents over … from step N of M)`, for a result
    /// that is not identical.
    pub fn diverged_line(&self) -> Option<String> {
        let stage = self.diverged_at.as_ref()?;
        Some(crate::stage_data::diverged_line(
            stage,
            self.divergence.as_ref(),
        ))
    }
}

impl<'a> Outputs<'a> {
    /// One generation's side of a comparison, its model files read from its metadata.
    pub fn of(
        latents: Option<&'a crate::generation::Latents>,
        image: &'a RgbImage,
        metadata: &'a Metadata,
        stages: Option<&'a crate::stage_data::StoredStages>,
    ) -> Outputs<'a> {
        Outputs {
            latents: latents.map(crate::generation::Latents::view),
            image,
            model_files: metadata.model_files(),
            metadata,
            stages,
        }
    }

    fn side(&self) -> crate::stage_data::Side<'a> {
        crate::stage_data::Side {
            stages: self.stages,
            metadata: self.metadata,
            latents: self.latents.map(|l| l.0),
            image: self.image,
        }
    }
}

/// Everything the check command prints and stores for one case.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CompareReport {
    /// Verdict and its reasons.
    #[serde(flatten)]
    pub classification: Classification,
    /// Latent metrics (absent if the comparison failed before them).
    pub latents: Option<LatentMetrics>,
    /// Image metrics (absent if the comparison failed before them).
    pub image: Option<ImageMetrics>,
    /// The thresholds applied (after per-case overrides).
    pub thresholds: Thresholds,
    /// Environment differences from the baseline (reported for every verdict: they explain drift
    /// and show what an `identical` result survived).
    pub env_differences: Vec<EnvDiff>,
    /// File name of the diff heatmap, set by the caller once written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heatmap: Option<String>,
    /// For a result that is not identical: the first pipeline stage whose output differs from
    /// the baseline's (from the per-stage hashes both record), or why that is unknown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diverged_at: Option<String>,
    /// With a known first differing stage: how far apart the two are there, and after which
    /// step the latents exceeded the latent threshold (from the stage tensors both kept).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub divergence: Option<crate::stage_data::Divergence>,
}

/// The first stage at which `run` differs from `baseline`, from their recorded stage hashes.
pub fn diverged_at(run: &Metadata, baseline: &Metadata) -> String {
    match (&run.stages, &baseline.stages) {
        (Some(a), Some(b)) => crate::sd::pipeline::first_difference(a, b)
            .unwrap_or_else(|| "no stage differs (only what is outside the pipeline)".into()),
        (_, None) => "unknown: the baseline has no stage data (made before stage hashes)".into(),
        (None, Some(_)) => "unknown: the run has no stage data".into(),
    }
}

/// Compares a run with its baseline. The heatmap is returned for every non-identical image (the
/// caller writes it and records its name in [`CompareReport::heatmap`]). A shape or size mismatch
/// is verdict `error` unless a model file changed, which takes precedence as it explains it.
pub fn compare(
    run: &Outputs<'_>,
    baseline: &Outputs<'_>,
    thresholds: &Thresholds,
) -> (CompareReport, Option<DiffHeatmap>) {
    let measured = measure(run, baseline);
    let metrics: MetricsOrError<'_> = match &measured {
        Ok((l, i, _)) => Ok((l.as_ref(), i)),
        Err(e) => Err(e.as_str()),
    };
    let mut classification = classify(run.model_files, baseline.model_files, metrics, thresholds);
    if classification.verdict == Verdict::Error {
        // A changed model explains a changed shape; the error stays in the report.
        let changes = model_changes(run.model_files, baseline.model_files);
        if !changes.is_empty() {
            classification.verdict = Verdict::ModelChanged;
            classification.model_changes = changes;
        }
    }
    let (latents, image, heatmap) = match measured {
        Ok((l, i, h)) => (l, Some(i), h),
        Err(_) => (None, None, None),
    };
    let first = (classification.verdict != Verdict::Identical)
        .then(|| {
            Some(crate::sd::pipeline::first_difference(
                run.metadata.stages.as_deref()?,
                baseline.metadata.stages.as_deref()?,
            ))
            .flatten()
        })
        .flatten();
    let divergence = first.map(|stage| {
        crate::stage_data::divergence(
            &stage,
            &run.side(),
            &baseline.side(),
            thresholds.latent_max_abs,
        )
    });
    // A service reports no stages: its image is all there is to say where it differs.
    let staged = !run.metadata.is_image_only() && !baseline.metadata.is_image_only();
    let diverged = (classification.verdict != Verdict::Identical && staged)
        .then(|| diverged_at(run.metadata, baseline.metadata));
    let report = CompareReport {
        classification,
        latents,
        image,
        thresholds: *thresholds,
        env_differences: metadata_env_differences(run.metadata, baseline.metadata),
        heatmap: None,
        diverged_at: diverged,
        divergence,
    };
    (report, heatmap)
}

type Measured = (Option<LatentMetrics>, ImageMetrics, Option<DiffHeatmap>);

fn measure(run: &Outputs<'_>, baseline: &Outputs<'_>) -> Result<Measured, String> {
    let l = match (run.latents, baseline.latents) {
        (Some((r, rs)), Some((b, bs))) => {
            Some(latent_metrics(r, rs, b, bs).map_err(|e| e.to_string())?)
        }
        (None, None) => None,
        (Some(_), None) => {
            return Err(
                "the baseline is a generation service's image and the run is the pipeline's".into(),
            )
        }
        (None, Some(_)) => {
            return Err(
                "the baseline is the pipeline's output and the run is a generation service's image"
                    .into(),
            )
        }
    };
    let i = image_metrics(run.image, baseline.image).map_err(|e| e.to_string())?;
    let h = if i.identical {
        None
    } else {
        Some(diff_heatmap(run.image, baseline.image).map_err(|e| e.to_string())?)
    };
    Ok((l, i, h))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diverged_at_names_the_first_differing_stage_or_why_it_cannot() {
        use crate::generation::StageHash;
        let stages = |s: &[(&str, &str)]| {
            Some(
                s.iter()
                    .map(|(n, h)| StageHash {
                        stage: n.to_string(),
                        sha256: h.to_string(),
                    })
                    .collect(),
            )
        };
        let base = Metadata {
            stages: stages(&[("tokens", "a"), ("text_embeddings", "b"), ("latents", "c")]),
            ..Metadata::default()
        };
        let run = Metadata {
            stages: stages(&[("tokens", "a"), ("text_embeddings", "X"), ("latents", "Y")]),
            ..Metadata::default()
        };
        assert_eq!(diverged_at(&run, &base), "text_embeddings");
        assert!(diverged_at(&run, &Metadata::default()).starts_with("unknown: the baseline"));
        assert!(diverged_at(&Metadata::default(), &base).starts_with("unknown: the run"));
    }

    #[test]
    fn hot_ramp_endpoints_and_small_diffs_visible() {
        assert_eq!(hot_colour(0, 10), [0, 0, 0]);
        assert_eq!(hot_colour(10, 10), [255, 255, 255]);
        assert_eq!(hot_colour(1, 255), [3, 0, 0]);
        // Relative to a large max, a 1-level difference still shows.
        assert_ne!(hot_colour(1, 255), [0, 0, 0]);
    }

    #[test]
    fn nan_max_is_sticky() {
        let (max, _, _) = diff_sums(&[f32::NAN, 5.0], &[0.0, 0.0]);
        assert!(max.is_nan());
        let (max, _, _) = diff_sums(&[5.0, f32::NAN], &[0.0, 0.0]);
        assert!(max.is_nan());
    }

    #[test]
    fn cosine_edge_cases() {
        assert_eq!(cosine_similarity(&[0.0, 0.0], &[0.0, 0.0]), 1.0);
        assert_eq!(cosine_similarity(&[0.0, 0.0], &[1.0, 0.0]), 0.0);
        assert!(cosine_similarity(&[f32::INFINITY], &[1.0]).is_nan());
        assert_eq!(cosine_similarity(&[1.0, 2.0], &[-1.0, -2.0]), -1.0);
    }

    #[test]
    fn image_compare_gives_exactly_one_for_equal_images() {
        // image_metrics short-cuts identical images to 1.0; check the library agrees.
        let px: Vec<u8> = (0..20 * 13 * 3).map(|i| (i * 37 % 256) as u8).collect();
        let img = RgbImage {
            width: 20,
            height: 13,
            pixels: px,
        };
        assert_eq!(ssim(&img, &img), Ok(1.0));
        assert_eq!(ssim_image_compare(&img, &img), Ok(1.0));
    }

    #[test]
    fn non_finite_serializes_as_string() {
        let f = ThresholdFailure {
            check: "x",
            value: f64::NAN,
            limit: f64::INFINITY,
            message: String::new(),
        };
        let s = serde_json::to_string(&f).unwrap();
        assert!(
            s.contains("\"value\":\"NaN\"") && s.contains("\"limit\":\"inf\""),
            "{s}"
        );
    }
}
