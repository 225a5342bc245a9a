//! Diffusion schedulers behind one trait, one file per scheduler, matching diffusers' math.
//!
//! # Precision
//! diffusers builds the training tables (betas, `alphas_cumprod`) as torch float32 tensors and
//! does every step in torch float32, with a few intermediate tables (Euler's interpolated sigmas,
//! numpy timestep spacing) in float64 that are rounded to float32 before use. We mirror that:
//! tables and per-step arithmetic are `f32`, evaluated in the same operation order as diffusers,
//! and float64 is used exactly where numpy uses it. Two torch CPU details matter:
//! - `torch.linspace` (f32) is computed with fused multiply-adds, and `torch.cumprod` accumulates
//!   in f64; mirroring both makes our betas and `alphas_cumprod` bit-identical to diffusers'.
//! - torch's f32 `sqrt` (and `log`/`exp`) on CPU is not correctly rounded: on the AVX512 build
//!   that wrote the fixtures ~20% of `sqrt` results are one ulp off IEEE. We use IEEE `sqrt`;
//!   fed torch's `sqrt` values instead, our DDIM reproduces 50 diffusers steps bit for bit, so
//!   the remaining mismatch (≤ 2e-6 of max |latent| after 50 steps, usually ~3e-7) is that
//!   rounding alone, and diffusers itself varies by as much between CPU builds.
//!
//! # Config defaults
//! Missing fields take the SD1.5 values ([`SchedulerConfig::default`]), except
//! `timestep_spacing`: the SD1.5 config file predates that key, and diffusers then falls back to a
//! per-class default (`leading` for PNDM/DDIM, `linspace` for Euler and the other sigma-space
//! schedulers). We keep it `None` when absent and resolve it the way diffusers does.

mod config;
pub mod ddim;
pub mod dpmpp_2m;
pub mod euler;
pub mod euler_ancestral;
pub mod lms;
mod math;
pub mod pndm;

use std::fmt;
use std::str::FromStr;

use ndarray::Array4;

use crate::sd::noise::NoiseSource;

pub use config::{
    BetaSchedule, FinalSigmas, InterpolationType, PredictionType, SchedulerConfig, TimestepSpacing,
};

/// Latents as the pipeline holds them between steps: float32, NCHW.
pub type Latents = Array4<f32>;

/// Errors from building or stepping a scheduler.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// Anything a scheduler could not do, with the reason.
    #[error("{0}")]
    Invalid(String),
    /// A scheduler config file could not be read.
    #[error("cannot read scheduler config {file}: {source}")]
    Read {
        /// The file being read.
        file: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A scheduler config is not valid JSON, or a field has a bad value.
    #[error("scheduler config {file}: {message}")]
    Config {
        /// The file (or other origin) of the config.
        file: String,
        /// What is wrong, naming the field.
        message: String,
    },
}

/// Rejects a model output whose shape differs from the sample's (a caller bug, caught early
/// rather than as an ndarray broadcast panic).
pub(crate) fn check_shapes(model_output: &Latents, sample: &Latents) -> Result<(), SchedulerError> {
    if model_output.shape() == sample.shape() {
        return Ok(());
    }
    Err(SchedulerError::Invalid(format!(
        "model output shape {:?} does not match sample shape {:?}",
        model_output.shape(),
        sample.shape()
    )))
}

/// Rejects a call index past the end of the schedule.
pub(crate) fn check_index(name: &str, i: usize, len: usize) -> Result<(), SchedulerError> {
    if i < len {
        return Ok(());
    }
    Err(SchedulerError::Invalid(format!(
        "{name}: call {i} is past the last of {len} timesteps"
    )))
}

/// A scheduler after `set_timesteps(steps)`: it owns the schedule and any multistep state.
pub trait Scheduler {
    /// Timesteps fed to the UNet, in call order (fractional for sigma-space schedulers).
    fn timesteps(&self) -> &[f64];
    /// Factor the initial noise is multiplied by.
    fn init_noise_sigma(&self) -> f32;
    /// Scales the UNet input for call `i` (identity for PNDM and DDIM).
    fn scale_model_input(&self, sample: Latents, i: usize) -> Latents;
    /// One denoising step for call `i`: returns the new latents.
    fn step(
        &mut self,
        model_output: &Latents,
        i: usize,
        sample: &Latents,
        noise: &mut dyn NoiseSource,
    ) -> Result<Latents, SchedulerError>;
}

/// The schedulers `monitor` knows by name (CLI and config spelling).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SchedulerKind {
    /// `PNDMScheduler` with `skip_prk_steps` (PLMS) — the SD1.5 default.
    Pndm,
    /// `DDIMScheduler`, eta 0.
    Ddim,
    /// `EulerDiscreteScheduler`.
    Euler,
    /// `EulerAncestralDiscreteScheduler`.
    EulerAncestral,
    /// `LMSDiscreteScheduler`.
    Lms,
    /// `DPMSolverMultistepScheduler`, dpmsolver++ order 2.
    DpmPp2m,
}

impl SchedulerKind {
    /// Every kind, in display order.
    pub const ALL: [SchedulerKind; 6] = [
        SchedulerKind::Pndm,
        SchedulerKind::Ddim,
        SchedulerKind::Euler,
        SchedulerKind::EulerAncestral,
        SchedulerKind::Lms,
        SchedulerKind::DpmPp2m,
    ];

    /// The name used on the command line and in config files.
    pub fn name(self) -> &'static str {
        match self {
            SchedulerKind::Pndm => "pndm",
            SchedulerKind::Ddim => "ddim",
            SchedulerKind::Euler => "euler",
            SchedulerKind::EulerAncestral => "euler-a",
            SchedulerKind::Lms => "lms",
            SchedulerKind::DpmPp2m => "dpmpp-2m",
        }
    }

    /// Whether the diffusers class has `use_karras_sigmas` (EulerDiscrete, LMSDiscrete,
    /// DPMSolverMultistep in diffusers 0.42.1); the others ignore that config key, as diffusers'
    /// `from_config` does.
    pub fn supports_karras(self) -> bool {
        matches!(
            self,
            SchedulerKind::Euler | SchedulerKind::Lms | SchedulerKind::DpmPp2m
        )
    }

    /// Whether each step draws fresh noise (ancestral sampling), so the noise source must be able
    /// to continue diffusers' generator stream (see `NoiseKind::supports_step_noise`).
    pub fn needs_step_noise(self) -> bool {
        self == SchedulerKind::EulerAncestral
    }

    /// diffusers' default `timestep_spacing` for this class, used when the config omits it.
    pub fn default_spacing(self) -> TimestepSpacing {
        match self {
            SchedulerKind::Pndm | SchedulerKind::Ddim => TimestepSpacing::Leading,
            _ => TimestepSpacing::Linspace,
        }
    }
}

impl fmt::Display for SchedulerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SchedulerKind {
    type Err = SchedulerError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SchedulerKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = SchedulerKind::ALL.iter().map(|k| k.name()).collect();
                SchedulerError::Invalid(format!(
                    "unknown scheduler '{s}' (expected one of: {})",
                    names.join(", ")
                ))
            })
    }
}

/// Builds scheduler `kind` from `config`, with its timesteps set for `steps` inference steps.
pub fn build(
    kind: SchedulerKind,
    config: &SchedulerConfig,
    steps: usize,
) -> Result<Box<dyn Scheduler>, SchedulerError> {
    // A config built in code gets the same range checks as a parsed one.
    config.validate()?;
    if steps == 0 || steps > config.num_train_timesteps {
        return Err(SchedulerError::Invalid(format!(
            "steps must be between 1 and num_train_timesteps ({}), got {steps}",
            config.num_train_timesteps
        )));
    }
    match kind {
        SchedulerKind::Pndm => Ok(Box::new(pndm::PndmScheduler::new(config, steps)?)),
        SchedulerKind::Ddim => Ok(Box::new(ddim::DdimScheduler::new(config, steps)?)),
        SchedulerKind::Euler => Ok(Box::new(euler::EulerDiscreteScheduler::new(config, steps)?)),
        SchedulerKind::EulerAncestral => Ok(Box::new(
            euler_ancestral::EulerAncestralScheduler::new(config, steps)?,
        )),
        SchedulerKind::Lms => Ok(Box::new(lms::LmsScheduler::new(config, steps)?)),
        SchedulerKind::DpmPp2m => Ok(Box::new(dpmpp_2m::DpmPp2mScheduler::new(config, steps)?)),
    }
}
