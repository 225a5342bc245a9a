//! A case's generation time and memory, and the `slow` flag: the run took more than
//! `performance.max_slowdown` times the baseline's generation time. Slowness is reported beside
//! the verdict and never changes it: a slow host that computes the same bits has not drifted.

use serde::{Deserialize, Serialize};

use crate::generation::Metadata;

/// `performance:` in the config.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PerformanceConfig {
    /// A run slower than this many times the baseline's generation time is `slow` (e.g. 1.5 =
    /// 50% slower); `null` turns the flag off.
    pub max_slowdown: Option<f64>,
}

/// What a result records about speed and memory (the history's `timings_json`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Performance {
    /// The whole generation (text encoder, every step, VAE), seconds.
    pub generation_s: Option<f64>,
    /// Text encoder, seconds.
    pub text_encoder_s: Option<f64>,
    /// All UNet calls, seconds.
    pub unet_s: Option<f64>,
    /// The median UNet call, seconds.
    pub unet_step_median_s: Option<f64>,
    /// VAE decoder, seconds.
    pub vae_s: Option<f64>,
    /// The worker's session creation, seconds.
    pub load_s: Option<f64>,
    /// What ONNX Runtime's optimized-model cache did for those sessions ("3 loaded").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_cache: Option<String>,
    /// Inside ONNX Runtime's `run` calls (the model's own time), seconds.
    #[serde(default)]
    pub model_s: Option<f64>,
    /// Peak resident memory of the worker, bytes.
    pub peak_rss_bytes: Option<u64>,
    /// GPU memory of the worker (CUDA runs), bytes.
    pub gpu_memory_bytes: Option<u64>,
    /// The baseline's generation time, seconds.
    pub baseline_generation_s: Option<f64>,
    /// This run's generation time over the baseline's.
    pub slowdown: Option<f64>,
    /// The limit applied (`performance.max_slowdown`).
    pub max_slowdown: Option<f64>,
    /// `slowdown` above `max_slowdown`.
    pub slow: bool,
}

impl Performance {
    /// The run's figures from its metadata, compared with the baseline's generation time.
    pub fn assess(run: &Metadata, baseline: Option<&Metadata>, max_slowdown: Option<f64>) -> Self {
        let t = run.timings.clone().unwrap_or_default();
        let r = run.resources.clone().unwrap_or_default();
        let baseline_generation_s = baseline
            .and_then(|b| b.timings.as_ref())
            .and_then(|t| t.total_s)
            .filter(|s| *s > 0.0);
        let slowdown = match (t.total_s, baseline_generation_s) {
            (Some(now), Some(then)) => Some(now / then),
            _ => None,
        };
        Performance {
            generation_s: t.total_s,
            text_encoder_s: t.text_encoder_s,
            unet_s: t.unet_s,
            unet_step_median_s: t.unet_step_s.as_deref().and_then(median),
            vae_s: t.vae_s,
            load_s: t.load_s,
            session_cache: t.session_cache.clone(),
            model_s: t.ort_run_s,
            peak_rss_bytes: r.peak_rss_bytes,
            gpu_memory_bytes: r.gpu_memory_bytes,
            baseline_generation_s,
            slowdown,
            max_slowdown,
            slow: matches!((slowdown, max_slowdown), (Some(s), Some(m)) if s > m),
        }
    }

    /// "slow: 2.10× the baseline's generation time (0.30 s vs 0.14 s; limit 1.50×)" when slow.
    pub fn describe_slow(&self) -> Option<String> {
        if !self.slow {
            return None;
        }
        Some(format!(
            "slow: {:.2}× the baseline's generation time ({:.2} s vs {:.2} s; limit {:.2}×)",
            self.slowdown?, self.generation_s?, self.baseline_generation_s?, self.max_slowdown?
        ))
    }
}

/// The median of `v` (the mean of the middle two for an even count); `None` when empty.
pub fn median(v: &[f64]) -> Option<f64> {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return None;
    }
    s.sort_by(f64::total_cmp);
    let m = s.len() / 2;
    Some(if s.len().is_multiple_of(2) {
        (s[m - 1] + s[m]) / 2.0
    } else {
        s[m]
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generation::TimingsRecord;

    fn meta(total_s: f64) -> Metadata {
        Metadata {
            timings: Some(TimingsRecord {
                total_s: Some(total_s),
                unet_step_s: Some(vec![0.3, 0.1, 0.2, 0.9]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn slow_only_above_the_limit_and_only_with_a_limit() {
        let p = Performance::assess(&meta(3.0), Some(&meta(2.0)), Some(1.5));
        assert_eq!(p.slowdown, Some(1.5));
        assert!(!p.slow, "exactly at the limit is not slow");
        let p = Performance::assess(&meta(3.1), Some(&meta(2.0)), Some(1.5));
        assert!(p.slow);
        assert_eq!(
            p.describe_slow().unwrap(),
            "slow: 1.55× the baseline's generation time (3.10 s vs 2.00 s; limit 1.50×)"
        );
        assert!(!Performance::assess(&meta(30.0), Some(&meta(2.0)), None).slow);
        // A baseline without timings (made before they were recorded) gives no ratio.
        let p = Performance::assess(&meta(3.0), Some(&Metadata::default()), Some(1.5));
        assert_eq!((p.slowdown, p.slow), (None, false));
    }

    #[test]
    fn median_of_steps() {
        assert_eq!(median(&[0.3, 0.1, 0.2, 0.9]), Some(0.25));
        assert_eq!(median(&[0.3, 0.1, 0.2]), Some(0.2));
        assert_eq!(median(&[]), None);
        let p = Performance::assess(&meta(1.0), None, None);
        assert_eq!(p.unet_step_median_s, Some(0.25));
    }
}
