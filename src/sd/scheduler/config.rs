//! `scheduler/scheduler_config.json` as diffusers writes it, parsed field by field so that a bad
//! value is reported with the file and the field name. Unknown keys (`_class_name`,
//! `_diffusers_version`, keys of other scheduler classes) are ignored, as diffusers' `from_config`
//! ignores them; `null` counts as missing.

use std::path::Path;

use serde_json::{Map, Value};

use super::SchedulerError;

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
        if num_train_timesteps < 2 {
            return Err(format!(
                "field `num_train_timesteps`: must be at least 2, got {num_train_timesteps}"
            ));
        }
        let trained_betas = match f.get("trained_betas") {
            None => None,
            Some(Value::Array(items)) => Some(
                items
                    .iter()
                    .map(Value::as_f64)
                    .collect::<Option<Vec<f64>>>()
                    .filter(|b| b.len() == num_train_timesteps)
                    .ok_or_else(|| {
                        format!("field `trained_betas`: expected {num_train_timesteps} numbers")
                    })?,
            ),
            Some(v) => return Err(format!("field `trained_betas`: expected an array, got {v}")),
        };
        Ok(SchedulerConfig {
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
        })
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
