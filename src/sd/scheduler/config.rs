//! `scheduler/scheduler_config.json` as diffusers writes it, parsed field by field so that a bad
//! value is reported with the file and the field name. Unknown keys (`_class_name`,
//! `_diffusers_version`, keys of other scheduler classes) are ignored, as diffusers' `from_config`
//! ignores them; `null` counts as missing.

use std::path::Path;

use serde_json::{Map, Value};

use super::math::alphas_cumprod;
use super::SchedulerError;

/// Largest `num_train_timesteps` accepted (SD1.5 trains with 1000).
pub(crate) const MAX_TRAIN_TIMESTEPS: usize = 100_000;

/// How betas are laid out over the training timesteps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BetaSchedule {
    /// `linspace(beta_start, beta_end)`.
    Linear,
    /// `linspace(sqrt(beta_start), sqrt(beta_end))²` — SD1.5.
    ScaledLinear,
    /// Glide cosine schedule (`betas_for_alpha_bar`, max beta 0.999).
    SquaredcosCapV2,
}

/// What the UNet predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PredictionType {
    /// The added noise — SD1.5.
    Epsilon,
    /// The velocity `sqrt(ᾱ)·ε − sqrt(1−ᾱ)·x₀` (SD2 768-v models).
    VPrediction,
    /// The denoised sample x₀ directly.
    Sample,
}

/// How inference timesteps are picked from the training range (Table 2 of "Common Diffusion
/// Noise Schedules and Sample Steps are Flawed").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestepSpacing {
    /// `arange(steps) * (T // steps) + steps_offset`.
    Leading,
    /// `round(arange(T, 0, -T/steps)) - 1`.
    Trailing,
    /// `linspace(0, T-1, steps)` (rounded for integer-timestep schedulers).
    Linspace,
}

/// How Euler-type schedulers interpolate sigmas at fractional timesteps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterpolationType {
    /// `np.interp` over the training sigmas — the default.
    Linear,
    /// Log-linear between the extreme sigmas (not implemented by any scheduler here yet).
    LogLinear,
}

/// The sigma appended after the last step of Euler-type schedulers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinalSigmas {
    /// 0 — the default.
    Zero,
    /// The smallest training sigma.
    SigmaMin,
}

/// Scheduler settings from a model's `scheduler/scheduler_config.json`.
///
/// `Default` is the SD1.5 file (runwayml/stable-diffusion-v1-5) plus diffusers' class defaults for
/// keys that file does not carry.
#[derive(Debug, Clone, PartialEq)]
pub struct SchedulerConfig {
    /// Number of diffusion steps the model was trained with. SD1.5: 1000.
    pub num_train_timesteps: usize,
    /// First beta of the schedule. SD1.5: 0.00085.
    pub beta_start: f64,
    /// Last beta of the schedule. SD1.5: 0.012.
    pub beta_end: f64,
    /// Layout of betas between `beta_start` and `beta_end`. SD1.5: scaled_linear.
    pub beta_schedule: BetaSchedule,
    /// Explicit betas, overriding the schedule when present. SD1.5: none.
    pub trained_betas: Option<Vec<f64>>,
    /// Offset added to `leading` timesteps. SD1.5: 1.
    pub steps_offset: usize,
    /// Whether the step after t=0 uses ᾱ=1 (else `alphas_cumprod[0]`). SD1.5: false.
    pub set_alpha_to_one: bool,
    /// PNDM: skip the Runge–Kutta warm-up (i.e. run PLMS). SD1.5: true.
    pub skip_prk_steps: bool,
    /// What the UNet predicts. SD1.5: epsilon.
    pub prediction_type: PredictionType,
    /// Timestep spacing; `None` when the file omits it (SD1.5 does), resolved per scheduler class
    /// like diffusers does (see [`super::SchedulerKind::default_spacing`]).
    pub timestep_spacing: Option<TimestepSpacing>,
    /// DDIM: clamp the predicted x₀ to ±`clip_sample_range`. SD1.5: false.
    pub clip_sample: bool,
    /// DDIM: clamp range for `clip_sample`. diffusers default: 1.0.
    pub clip_sample_range: f64,
    /// Euler: sigma interpolation. diffusers default: linear.
    pub interpolation_type: InterpolationType,
    /// Euler: Karras sigmas (parsed so configs load; building with it set is refused).
    pub use_karras_sigmas: bool,
    /// Euler: sigma after the last step. diffusers default: zero.
    pub final_sigmas_type: FinalSigmas,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            num_train_timesteps: 1000,
            beta_start: 0.00085,
            beta_end: 0.012,
            beta_schedule: BetaSchedule::ScaledLinear,
            trained_betas: None,
            steps_offset: 1,
            set_alpha_to_one: false,
            skip_prk_steps: true,
            prediction_type: PredictionType::Epsilon,
            timestep_spacing: None,
            clip_sample: false,
            clip_sample_range: 1.0,
            interpolation_type: InterpolationType::Linear,
            use_karras_sigmas: false,
            final_sigmas_type: FinalSigmas::Zero,
        }
    }
}

impl SchedulerConfig {
    /// The SD1.5 scheduler config (same as `Default`).
    pub fn v1_5() -> Self {
        Self::default()
    }

    /// Reads and parses a `scheduler_config.json`; errors name the file and the bad field.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, SchedulerError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| SchedulerError::Read {
            file: path.display().to_string(),
            source,
        })?;
        Self::from_json_str(&text, &path.display().to_string())
    }

    /// Parses config JSON text; `origin` names the source in error messages.
    pub fn from_json_str(text: &str, origin: &str) -> Result<Self, SchedulerError> {
        let err = |message: String| SchedulerError::Config {
            file: origin.to_string(),
            message,
        };
        let value: Value =
            serde_json::from_str(text).map_err(|e| err(format!("invalid JSON: {e}")))?;
        let Value::Object(map) = value else {
            return Err(err("expected a JSON object".into()));
        };
        Self::from_map(&map).map_err(err)
    }

    fn from_map(map: &Map<String, Value>) -> Result<Self, String> {
        let d = SchedulerConfig::default();
        let f = Fields(map);
        let num_train_timesteps = f
            .uint("num_train_timesteps")?
            .unwrap_or(d.num_train_timesteps);
        let trained_betas = match f.get("trained_betas") {
            None => None,
            Some(Value::Array(items)) => Some(
                items
                    .iter()
                    .map(Value::as_f64)
                    .collect::<Option<Vec<f64>>>()
                    .ok_or_else(|| {
                        "field `trained_betas`: expected an array of numbers".to_string()
                    })?,
            ),
            Some(v) => return Err(format!("field `trained_betas`: expected an array, got {v}")),
        };
        let config = SchedulerConfig {
            num_train_timesteps,
            beta_start: f.float("beta_start")?.unwrap_or(d.beta_start),
            beta_end: f.float("beta_end")?.unwrap_or(d.beta_end),
            beta_schedule: f
                .choice(
                    "beta_schedule",
                    &[
                        ("linear", BetaSchedule::Linear),
                        ("scaled_linear", BetaSchedule::ScaledLinear),
                        ("squaredcos_cap_v2", BetaSchedule::SquaredcosCapV2),
                    ],
                )?
                .unwrap_or(d.beta_schedule),
            trained_betas,
            steps_offset: f.uint("steps_offset")?.unwrap_or(d.steps_offset),
            set_alpha_to_one: f.boolean("set_alpha_to_one")?.unwrap_or(d.set_alpha_to_one),
            skip_prk_steps: f.boolean("skip_prk_steps")?.unwrap_or(d.skip_prk_steps),
            prediction_type: f
                .choice(
                    "prediction_type",
                    &[
                        ("epsilon", PredictionType::Epsilon),
                        ("v_prediction", PredictionType::VPrediction),
                        ("sample", PredictionType::Sample),
                    ],
                )?
                .unwrap_or(d.prediction_type),
            timestep_spacing: f.choice(
                "timestep_spacing",
                &[
                    ("leading", TimestepSpacing::Leading),
                    ("trailing", TimestepSpacing::Trailing),
                    ("linspace", TimestepSpacing::Linspace),
                ],
            )?,
            clip_sample: f.boolean("clip_sample")?.unwrap_or(d.clip_sample),
            clip_sample_range: f.float("clip_sample_range")?.unwrap_or(d.clip_sample_range),
            interpolation_type: f
                .choice(
                    "interpolation_type",
                    &[
                        ("linear", InterpolationType::Linear),
                        ("log_linear", InterpolationType::LogLinear),
                    ],
                )?
                .unwrap_or(d.interpolation_type),
            use_karras_sigmas: f
                .boolean("use_karras_sigmas")?
                .unwrap_or(d.use_karras_sigmas),
            final_sigmas_type: f
                .choice(
                    "final_sigmas_type",
                    &[
                        ("zero", FinalSigmas::Zero),
                        ("sigma_min", FinalSigmas::SigmaMin),
                    ],
                )?
                .unwrap_or(d.final_sigmas_type),
        };
        config.check_ranges()?;
        Ok(config)
    }

    /// Checks that a schedule can be built from these values without NaN or infinite sigmas.
    ///
    /// Parsing runs this already; a config built in code should pass it before use.
    pub fn validate(&self) -> Result<(), SchedulerError> {
        self.check_ranges().map_err(SchedulerError::Invalid)
    }

    fn check_ranges(&self) -> Result<(), String> {
        let t = self.num_train_timesteps;
        // Fewer than 2 leaves nothing to interpolate sigmas between; the upper bound keeps the
        // per-build tables (one entry per training timestep) small, far above any real model.
        if !(2..=MAX_TRAIN_TIMESTEPS).contains(&t) {
            return Err(format!(
                "field `num_train_timesteps`: must be between 2 and {MAX_TRAIN_TIMESTEPS}, got {t}"
            ));
        }
        // A beta of 0 or 1 makes a sigma 0 or infinite, and anything outside (0, 1) a negative
        // alpha: every generation would be NaN. The tables are f32, so the bounds must hold after
        // rounding to f32 too.
        let is_beta = |b: f64| b.is_finite() && (b as f32) > 0.0 && (b as f32) < 1.0;
        match &self.trained_betas {
            Some(betas) => {
                if betas.is_empty() {
                    return Err("field `trained_betas`: must not be empty".to_string());
                }
                if let Some((i, b)) = betas.iter().enumerate().find(|(_, &b)| !is_beta(b)) {
                    return Err(format!(
                        "field `trained_betas`: value {i} must be in (0, 1), got {b:?}"
                    ));
                }
                if betas.len() != t {
                    return Err(format!(
                        "field `trained_betas`: expected {t} numbers (num_train_timesteps), got {}",
                        betas.len()
                    ));
                }
            }
            // diffusers reads beta_start/beta_end only for these schedules and only without
            // trained_betas; elsewhere they are inert, so a config it loads loads here too.
            None if self.beta_schedule != BetaSchedule::SquaredcosCapV2 => {
                for (key, b) in [("beta_start", self.beta_start), ("beta_end", self.beta_end)] {
                    if !is_beta(b) {
                        return Err(format!("field `{key}`: must be in (0, 1), got {b:?}"));
                    }
                }
                if self.beta_start >= self.beta_end {
                    return Err(format!(
                        "field `beta_start`: must be less than beta_end ({:?}), got {:?}",
                        self.beta_end, self.beta_start
                    ));
                }
            }
            None => {}
        }
        // `leading` timesteps start at steps_offset: from num_train_timesteps on they index past
        // the training tables.
        if self.steps_offset >= t {
            return Err(format!(
                "field `steps_offset`: must be less than num_train_timesteps ({t}), got {}",
                self.steps_offset
            ));
        }
        let r = self.clip_sample_range;
        if !(r.is_finite() && r > 0.0) {
            return Err(format!(
                "field `clip_sample_range`: must be a positive number, got {r:?}"
            ));
        }
        // Betas each in range can still multiply out to ᾱ = 0 in f32 over many timesteps; the
        // largest sigma sqrt((1 − ᾱ)/ᾱ) is then infinite and so is every latent.
        let last = alphas_cumprod(self).last().copied().unwrap_or(1.0);
        if !((1.0 - last) / last).sqrt().is_finite() {
            let key = match (&self.trained_betas, self.beta_schedule) {
                (Some(_), _) => "trained_betas",
                (None, BetaSchedule::SquaredcosCapV2) => "num_train_timesteps",
                (None, _) => "beta_end",
            };
            return Err(format!(
                "field `{key}`: over {t} timesteps these betas drive alphas_cumprod to {last:e}, \
                 an infinite sigma; use smaller betas or fewer num_train_timesteps"
            ));
        }
        Ok(())
    }
}

/// Typed access to the JSON object; `null` is treated as absent.
struct Fields<'a>(&'a Map<String, Value>);

impl Fields<'_> {
    fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key).filter(|v| !v.is_null())
    }

    fn float(&self, key: &str) -> Result<Option<f64>, String> {
        self.get(key)
            .map(|v| {
                v.as_f64()
                    .filter(|x| x.is_finite())
                    .ok_or_else(|| format!("field `{key}`: expected a number, got {v}"))
            })
            .transpose()
    }

    fn uint(&self, key: &str) -> Result<Option<usize>, String> {
        self.get(key)
            .map(|v| {
                v.as_u64()
                    .and_then(|x| usize::try_from(x).ok())
                    .ok_or_else(|| {
                        format!("field `{key}`: expected a non-negative integer, got {v}")
                    })
            })
            .transpose()
    }

    fn boolean(&self, key: &str) -> Result<Option<bool>, String> {
        self.get(key)
            .map(|v| {
                v.as_bool()
                    .ok_or_else(|| format!("field `{key}`: expected true or false, got {v}"))
            })
            .transpose()
    }

    fn choice<T: Copy>(&self, key: &str, options: &[(&str, T)]) -> Result<Option<T>, String> {
        self.get(key)
            .map(|v| {
                v.as_str()
                    .and_then(|s| options.iter().find(|(name, _)| *name == s))
                    .map(|(_, t)| *t)
                    .ok_or_else(|| {
                        let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
                        format!(
                            "field `{key}`: expected one of {}, got {v}",
                            names.join(", ")
                        )
                    })
            })
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<SchedulerConfig, String> {
        SchedulerConfig::from_json_str(text, "test.json").map_err(|e| e.to_string())
    }

    #[test]
    fn the_sd15_export_config_loads() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/onnx/tiny-sd15/scheduler/scheduler_config.json"
        );
        let config = SchedulerConfig::from_file(path).unwrap();
        assert_eq!(
            config,
            SchedulerConfig {
                timestep_spacing: Some(TimestepSpacing::Leading),
                ..SchedulerConfig::v1_5()
            }
        );
        assert!(SchedulerConfig::v1_5().validate().is_ok());
    }

    #[test]
    fn out_of_range_values_are_rejected_naming_key_and_value() {
        for (text, key, value) in [
            (
                r#"{"num_train_timesteps": 0}"#,
                "num_train_timesteps",
                "got 0",
            ),
            (
                r#"{"num_train_timesteps": 1}"#,
                "num_train_timesteps",
                "got 1",
            ),
            (
                r#"{"num_train_timesteps": 100001}"#,
                "num_train_timesteps",
                "got 100001",
            ),
            (r#"{"beta_start": 5.0}"#, "beta_start", "got 5"),
            (r#"{"beta_start": 0}"#, "beta_start", "got 0"),
            (r#"{"beta_start": -0.001}"#, "beta_start", "got -0.001"),
            (r#"{"beta_start": 1e-50}"#, "beta_start", "e-5"),
            (r#"{"beta_end": 1.0}"#, "beta_end", "got 1"),
            (r#"{"beta_end": 1.5}"#, "beta_end", "got 1.5"),
            (
                r#"{"beta_schedule": "linear", "beta_end": 0.0}"#,
                "beta_end",
                "got 0",
            ),
            (
                r#"{"beta_start": 0.02, "beta_end": 0.01}"#,
                "beta_start",
                "got 0.02",
            ),
            (
                r#"{"beta_start": 0.01, "beta_end": 0.01}"#,
                "beta_start",
                "got 0.01",
            ),
            (r#"{"trained_betas": []}"#, "trained_betas", "empty"),
            (
                r#"{"trained_betas": [0.1, "x"]}"#,
                "trained_betas",
                "numbers",
            ),
            (r#"{"trained_betas": {"a": 1}}"#, "trained_betas", "{"),
            (
                r#"{"num_train_timesteps": 3, "trained_betas": [0.1, 0.0, 0.2]}"#,
                "trained_betas",
                "value 1 must be in (0, 1), got 0",
            ),
            (
                r#"{"num_train_timesteps": 3, "trained_betas": [0.1, 0.2, 1.0]}"#,
                "trained_betas",
                "value 2 must be in (0, 1), got 1",
            ),
            (
                r#"{"num_train_timesteps": 3, "trained_betas": [-0.5, 0.2, 0.3]}"#,
                "trained_betas",
                "got -0.5",
            ),
            (
                r#"{"num_train_timesteps": 3, "trained_betas": [0.1, 0.2]}"#,
                "trained_betas",
                "expected 3 numbers (num_train_timesteps), got 2",
            ),
            (r#"{"steps_offset": 1000}"#, "steps_offset", "got 1000"),
            (
                r#"{"num_train_timesteps": 10, "steps_offset": 10}"#,
                "steps_offset",
                "(10), got 10",
            ),
            (
                r#"{"steps_offset": 18446744073709551615}"#,
                "steps_offset",
                "got 18446744073709551615",
            ),
            (r#"{"clip_sample_range": 0}"#, "clip_sample_range", "got 0"),
            (
                r#"{"clip_sample_range": -1.0}"#,
                "clip_sample_range",
                "got -1",
            ),
            // Each beta is in range, but 1000 of them multiply ᾱ down to 0 in f32.
            (
                r#"{"beta_schedule": "linear", "beta_start": 0.5, "beta_end": 0.9}"#,
                "beta_end",
                "alphas_cumprod to 0e0",
            ),
            (
                r#"{"num_train_timesteps": 2, "trained_betas": [0.9999999999, 0.5]}"#,
                "trained_betas",
                "value 0",
            ),
        ] {
            let message = parse(text).unwrap_err();
            assert!(
                message.starts_with("scheduler config test.json: "),
                "{message}"
            );
            assert!(
                message.contains(&format!("field `{key}`")),
                "{text}: {message}"
            );
            assert!(message.contains(value), "{text}: {message}");
            assert!(!message.contains('\n'), "{message}");
        }
    }

    #[test]
    fn betas_that_are_not_used_are_not_checked() {
        // diffusers ignores beta_start/beta_end for the cosine schedule and under trained_betas.
        let cosine =
            parse(r#"{"beta_schedule": "squaredcos_cap_v2", "beta_start": 5.0, "beta_end": 0.0}"#)
                .unwrap();
        assert_eq!(cosine.beta_schedule, BetaSchedule::SquaredcosCapV2);
        let trained =
            parse(r#"{"num_train_timesteps": 2, "trained_betas": [0.1, 0.2], "beta_start": 5.0}"#)
                .unwrap();
        assert_eq!(trained.trained_betas, Some(vec![0.1, 0.2]));
    }

    #[test]
    fn range_limits_themselves_are_accepted() {
        let tiny = parse(r#"{"num_train_timesteps": 2, "steps_offset": 1}"#).unwrap();
        assert_eq!(tiny.num_train_timesteps, 2);
        let huge = parse(
            r#"{"num_train_timesteps": 100000, "beta_schedule": "linear",
                "beta_start": 1e-6, "beta_end": 1e-5, "steps_offset": 99999}"#,
        )
        .unwrap();
        assert_eq!(huge.num_train_timesteps, MAX_TRAIN_TIMESTEPS);
        let clip = parse(r#"{"clip_sample": true, "clip_sample_range": 1e-9}"#).unwrap();
        assert_eq!(clip.clip_sample_range, 1e-9);
    }

    #[test]
    fn validate_catches_configs_built_in_code() {
        for bad in [
            SchedulerConfig {
                beta_start: f64::NAN,
                ..SchedulerConfig::v1_5()
            },
            SchedulerConfig {
                beta_end: f64::INFINITY,
                ..SchedulerConfig::v1_5()
            },
            SchedulerConfig {
                clip_sample_range: f64::NAN,
                ..SchedulerConfig::v1_5()
            },
            SchedulerConfig {
                trained_betas: Some(vec![f64::NAN; 1000]),
                ..SchedulerConfig::v1_5()
            },
            SchedulerConfig {
                trained_betas: Some(vec![]),
                ..SchedulerConfig::v1_5()
            },
            SchedulerConfig {
                num_train_timesteps: usize::MAX,
                ..SchedulerConfig::v1_5()
            },
        ] {
            let err = bad.validate().unwrap_err().to_string();
            assert!(err.starts_with("field `"), "{err}");
        }
    }
}
