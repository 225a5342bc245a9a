//! What a report page shows of one case, prepared for the template: numbers formatted, failing
//! thresholds marked, image sizes read, trends drawn as SVG polylines.

use std::path::Path;

use serde::Serialize;
use serde_json::Value as Json;

use crate::compare::{EnvDiff, Verdict};
use crate::history::{CaseResult, HistoryEntry};
use crate::performance::Performance;

/// One case of a round, as the page shows it.
#[derive(Debug, Clone, Serialize)]
pub struct CaseView {
    /// Case name (user text: escaped by the template).
    pub name: String,
    /// True for a case the generation service made (an image, no latents).
    pub service: bool,
    /// How far a service case's image is from the pipeline's (`parity: true`), as a sentence.
    pub parity: Option<String>,
    /// The summary table's latent max |Δ| ("-" when none) and SSIM.
    pub summary: (String, String),
    /// Verdict name.
    pub verdict: String,
    /// Baseline version compared with.
    pub baseline_version: Option<i64>,
    /// Why the case is `error`.
    pub error: Option<String>,
    /// First pipeline stage that differs.
    pub diverged_at: Option<String>,
    /// How far apart there, and from which step the latents exceeded the threshold.
    pub divergence: Option<String>,
    /// The latents' max |Δ| after each step (log scale), in `max_abs_*`; `n` steps.
    pub steps: Trend,
    /// Metrics against their thresholds.
    pub metrics: Vec<MetricRow>,
    /// Threshold failures and model-file changes, as sentences.
    pub reasons: Vec<String>,
    /// Environment differences from the baseline.
    pub env_differences: Vec<String>,
    /// The run's parameters (prompt, seed, …).
    pub parameters: Vec<(String, String)>,
    /// Baseline, current and diff images, when the outputs were kept.
    pub images: Option<Images>,
    /// Recent results of the case.
    pub trend: Trend,
    /// Time the case took in the worker ("1.23 s").
    pub duration: Option<String>,
    /// Stage times and memory, as (what, how much).
    pub performance: Vec<(String, String)>,
    /// "slow: 2.10× the baseline's generation time (…)" when the run was slow.
    pub slow: Option<String>,
}

/// A metric and its limit.
#[derive(Debug, Clone, Serialize)]
pub struct MetricRow {
    /// E.g. "latent max |Δ|".
    pub label: &'static str,
    /// Formatted value, "-" when not measured.
    pub value: String,
    /// Formatted limit with its direction ("≤ 1.00e-3"), empty when the metric has none.
    pub limit: String,
    /// Whether this metric failed its threshold.
    pub failed: bool,
}

/// The case's images, relative to the round's folder.
#[derive(Debug, Clone, Serialize)]
pub struct Images {
    /// The baseline's image.
    pub baseline: Option<String>,
    /// This run's image.
    pub current: String,
    /// The diff heatmap.
    pub diff: Option<String>,
    /// Width shown, in CSS pixels: the native width, times a whole factor for small images.
    pub width: u32,
    /// Height shown, in CSS pixels.
    pub height: u32,
    /// The whole factor small images are enlarged by (1 at 256 px and above).
    pub zoom: u32,
}

/// Sparklines of the last results of a case, oldest left.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Trend {
    /// Results drawn.
    pub n: usize,
    /// SVG polyline points of latent max |Δ|.
    pub max_abs_points: String,
    /// The same points, each drawn as a dot (a single result has no line).
    pub max_abs_dots: Vec<(f64, f64)>,
    /// "0 … 3.20e-3".
    pub max_abs_range: String,
    /// SVG polyline points of SSIM.
    pub ssim_points: String,
    /// The same points, as dots.
    pub ssim_dots: Vec<(f64, f64)>,
    /// "0.9811 … 1.0000".
    pub ssim_range: String,
    /// Verdicts, oldest first.
    pub verdicts: Vec<String>,
}

/// Sparkline box, in SVG user units.
const SPARK_W: f64 = 200.0;
const SPARK_H: f64 = 36.0;

/// The page's view of `result`, whose kept outputs (if any) are in `round_dir/<case>/`;
/// `trend` is the case's recent check results, newest first.
pub fn case_view(round_dir: &Path, result: &CaseResult, trend: &[HistoryEntry]) -> CaseView {
    let case_dir = round_dir.join(&result.case_name);
    let compare = read_json(&case_dir.join("compare.json"));
    let metadata = read_json(&case_dir.join(crate::generation::METADATA_FILE));
    let failed: Vec<String> = result
        .reasons
        .as_ref()
        .and_then(|r| r.get("failures"))
        .and_then(|f| f.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|f| f.get("check").and_then(|c| c.as_str()).map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let limit = |key: &str| {
        compare
            .as_ref()
            .and_then(|c| c.pointer(&format!("/thresholds/{key}")))
            .and_then(|v| v.as_f64())
    };
    let is_failed = |checks: &[&str]| checks.iter().any(|c| failed.iter().any(|f| f == c));
    let service = crate::check::is_service_result(result.details.as_ref());
    let mut metrics = vec![
        MetricRow {
            label: "latent max |Δ|",
            value: sci(result.latent_max_abs),
            limit: limit("latent_max_abs").map_or(String::new(), |l| format!("≤ {l:.2e}")),
            failed: is_failed(&["latent_max_abs", "latent_non_finite"]),
        },
        MetricRow {
            label: "latent mean |Δ|",
            value: sci(result.latent_mean_abs),
            limit: String::new(),
            failed: false,
        },
        MetricRow {
            label: "latent RMSE",
            value: sci(result.latent_rmse),
            limit: String::new(),
            failed: false,
        },
        MetricRow {
            label: "latent cosine",
            value: fixed(result.latent_cosine, 6),
            limit: limit("latent_cosine_min").map_or(String::new(), |l| format!("≥ {l}")),
            failed: is_failed(&["latent_cosine_min"]),
        },
        MetricRow {
            label: "SSIM",
            value: fixed(result.ssim, 6),
            limit: limit("ssim_min").map_or(String::new(), |l| format!("≥ {l}")),
            failed: is_failed(&["ssim_min"]),
        },
        MetricRow {
            label: "PSNR",
            value: match result.psnr_db {
                Some(p) if p.is_infinite() => "∞ dB".into(),
                Some(p) => format!("{p:.1} dB"),
                None => "-".into(),
            },
            limit: String::new(),
            failed: false,
        },
        MetricRow {
            label: "pixels differing",
            value: result
                .pixels_differing
                .map_or("-".into(), |p| p.to_string()),
            limit: String::new(),
            failed: false,
        },
    ];
    if service {
        // A service returns no latents: rows that could only say "-".
        metrics.retain(|m| !m.label.starts_with("latent"));
    }
    let reasons = result
        .reasons
        .as_ref()
        .map(|r| {
            let messages = r
                .get("failures")
                .and_then(|f| f.as_array())
                .into_iter()
                .flatten()
                .filter_map(|f| f.get("message").and_then(|m| m.as_str()).map(String::from));
            let models = r
                .get("model_changes")
                .and_then(|f| f.as_array())
                .into_iter()
                .flatten()
                .filter_map(|m| m.get("file").and_then(|f| f.as_str()))
                .map(|f| format!("model file changed: {f}"));
            messages.chain(models).collect()
        })
        .unwrap_or_default();
    let diverged_at = result
        .reasons
        .as_ref()
        .and_then(|r| r.get("diverged_at"))
        .and_then(|d| d.as_str())
        .map(String::from);
    let divergence: Option<crate::stage_data::Divergence> = result
        .reasons
        .as_ref()
        .and_then(|r| r.get("divergence"))
        .and_then(|d| serde_json::from_value(d.clone()).ok());
    let steps = divergence.as_ref().map_or_else(Trend::default, |d| {
        // Zero cannot go on a log scale: it is drawn at the bottom, as "equal".
        let logs: Vec<Option<f64>> = d
            .step_max_abs
            .iter()
            .map(|&v| Some(if v > 0.0 { v.log10() } else { -12.0 }))
            .collect();
        let (dots, _) = spark(&logs, |v| format!("{v}"));
        let lo = d.step_max_abs.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = d.step_max_abs.iter().copied().fold(0.0, f64::max);
        Trend {
            n: d.step_max_abs.len(),
            max_abs_points: polyline(&dots),
            max_abs_dots: dots,
            max_abs_range: format!("{} … {}", sci(Some(lo)), sci(Some(hi))),
            ..Trend::default()
        }
    });
    let divergence_text = divergence.as_ref().map(|d| d.describe());
    let env_differences = result
        .env_diff
        .as_ref()
        .and_then(|d| serde_json::from_value::<Vec<EnvDiff>>(d.clone()).ok())
        .unwrap_or_default()
        .iter()
        .map(EnvDiff::describe_plain)
        .collect();
    let parameters = metadata
        .as_ref()
        .and_then(|m| m.get("parameters"))
        .and_then(|p| p.as_object())
        .map(|o| {
            o.iter()
                .map(|(k, v)| {
                    let shown = match v {
                        Json::String(s) => s.clone(),
                        Json::Null => "(none)".into(),
                        other => other.to_string(),
                    };
                    (k.clone(), shown)
                })
                .collect()
        })
        .unwrap_or_default();
    let perf: Option<Performance> = result
        .timings
        .as_ref()
        .and_then(|t| serde_json::from_value(t.clone()).ok());
    CaseView {
        parity: result
            .details
            .as_ref()
            .and_then(|d| d.get("parity"))
            .map(crate::check::describe_parity),
        service,
        summary: (sci(result.latent_max_abs), fixed(result.ssim, 6)),
        name: result.case_name.clone(),
        verdict: result.verdict.to_string(),
        baseline_version: result.baseline_version,
        error: result.error.clone(),
        diverged_at,
        divergence: divergence_text,
        steps,
        metrics,
        reasons,
        env_differences,
        parameters,
        images: images(&case_dir, &result.case_name),
        trend: trend_of(trend),
        duration: result.duration_s.map(|d| format!("{d:.2} s")),
        performance: performance_rows(perf.as_ref()),
        slow: perf.as_ref().and_then(|p| p.describe_slow()),
    }
}

fn performance_rows(p: Option<&Performance>) -> Vec<(String, String)> {
    let Some(p) = p else {
        return Vec::new();
    };
    let secs = |v: Option<f64>| v.map(|v| format!("{v:.3} s"));
    let memory = |v: Option<u64>| v.map(crate::resources::human_bytes);
    [
        ("generation", secs(p.generation_s)),
        ("baseline's generation", secs(p.baseline_generation_s)),
        (
            "slowdown",
            p.slowdown.map(|r| match p.max_slowdown {
                Some(m) => format!("{r:.2}× (limit {m:.2}×)"),
                None => format!("{r:.2}×"),
            }),
        ),
        ("text encoder", secs(p.text_encoder_s)),
        ("UNet, all steps", secs(p.unet_s)),
        ("UNet, median step", secs(p.unet_step_median_s)),
        ("VAE decoder", secs(p.vae_s)),
        ("session creation", secs(p.load_s)),
        ("worker peak RSS", memory(p.peak_rss_bytes)),
        ("worker GPU memory", memory(p.gpu_memory_bytes)),
    ]
    .into_iter()
    .filter_map(|(k, v)| Some((k.to_string(), v?)))
    .collect()
}

/// The verdict that matters most in a round (error, then model change, then drift, …).
pub fn worst(verdicts: &[Verdict]) -> Verdict {
    let rank = |v: &Verdict| match v {
        Verdict::Error => 5,
        Verdict::ModelChanged => 4,
        Verdict::Drift => 3,
        Verdict::WithinTolerance => 2,
        Verdict::New => 1,
        Verdict::Identical => 0,
    };
    verdicts
        .iter()
        .copied()
        .max_by_key(rank)
        .unwrap_or(Verdict::Identical)
}

fn read_json(path: &Path) -> Option<Json> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

fn images(case_dir: &Path, case: &str) -> Option<Images> {
    let current = case_dir.join(crate::generation::IMAGE_FILE);
    let (w, h) = image::image_dimensions(&current).ok()?;
    // A 64-pixel test image is unreadable at native size; whole factors keep every pixel a
    // crisp square (the page renders them pixelated), so nothing is interpolated away.
    let zoom = (256 / w.max(h).max(1)).max(1);
    let (width, height) = (w * zoom, h * zoom);
    let rel = |f: &str| case_dir.join(f).exists().then(|| format!("{case}/{f}"));
    Some(Images {
        baseline: rel(BASELINE_IMAGE),
        current: format!("{case}/{}", crate::generation::IMAGE_FILE),
        diff: rel("diff.png"),
        width,
        height,
        zoom,
    })
}

/// The baseline's image, copied beside the run's outputs so the report needs nothing else.
pub const BASELINE_IMAGE: &str = "baseline.png";

fn trend_of(newest_first: &[HistoryEntry]) -> Trend {
    let oldest_first: Vec<&CaseResult> = newest_first.iter().rev().map(|e| &e.result).collect();
    let max_abs: Vec<Option<f64>> = oldest_first.iter().map(|r| r.latent_max_abs).collect();
    let ssim: Vec<Option<f64>> = oldest_first.iter().map(|r| r.ssim).collect();
    let (max_abs_dots, max_abs_range) = spark(&max_abs, |v| format!("{v:.2e}"));
    let (ssim_dots, ssim_range) = spark(&ssim, |v| format!("{v:.6}"));
    Trend {
        n: oldest_first.len(),
        max_abs_points: polyline(&max_abs_dots),
        max_abs_dots,
        max_abs_range,
        ssim_points: polyline(&ssim_dots),
        ssim_dots,
        ssim_range,
        verdicts: oldest_first.iter().map(|r| r.verdict.to_string()).collect(),
    }
}

/// SVG `points` of `dots`.
fn polyline(dots: &[(f64, f64)]) -> String {
    let p: Vec<String> = dots.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
    p.join(" ")
}

/// Points of `values` in the sparkline box (missing and non-finite values are gaps in the
/// data, not zeros), and the range as text.
fn spark(values: &[Option<f64>], fmt: impl Fn(f64) -> String) -> (Vec<(f64, f64)>, String) {
    let finite: Vec<f64> = values
        .iter()
        .flatten()
        .copied()
        .filter(|v| v.is_finite())
        .collect();
    let (Some(lo), Some(hi)) = (
        finite.iter().copied().reduce(f64::min),
        finite.iter().copied().reduce(f64::max),
    ) else {
        return (Vec::new(), "no data".into());
    };
    let span = if hi > lo { hi - lo } else { 1.0 };
    let step = if values.len() > 1 {
        SPARK_W / (values.len() - 1) as f64
    } else {
        0.0
    };
    let points = values
        .iter()
        .enumerate()
        .filter_map(|(i, v)| {
            let v = v.filter(|v| v.is_finite())?;
            let y = SPARK_H - 2.0 - (v - lo) / span * (SPARK_H - 4.0);
            Some((i as f64 * step, y))
        })
        .collect();
    (points, format!("{} … {}", fmt(lo), fmt(hi)))
}

fn sci(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(0.0) => "0".into(),
        Some(v) => format!("{v:.2e}"),
    }
}

fn fixed(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.digits$}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparkline_skips_missing_values_and_spans_the_box() {
        let (points, range) = spark(&[Some(0.0), None, Some(2.0)], |v| format!("{v}"));
        assert_eq!(polyline(&points), "0.0,34.0 200.0,2.0");
        assert_eq!(range, "0 … 2");
        assert_eq!(
            spark(&[None, Some(f64::NAN)], |v| v.to_string()).1,
            "no data"
        );
    }

    #[test]
    fn worst_verdict_ranks_error_above_drift() {
        assert_eq!(
            worst(&[Verdict::Identical, Verdict::Drift, Verdict::Error]),
            Verdict::Error
        );
        assert_eq!(worst(&[]), Verdict::Identical);
        assert_eq!(
            crate::check::verdict_counts(&[Verdict::Identical, Verdict::Drift, Verdict::Identical]),
            "3 cases: 2 identical, 1 drift"
        );
    }
}
