//! Euler's method in sigma space (the "Euler" sampler of k-diffusion).
//!
//! Karras et al., "Elucidating the Design Space of Diffusion-Based Generative Models" (NeurIPS
//! 2022), <https://arxiv.org/abs/2206.00364>, Algorithm 2 without churn; mirrors diffusers'
//! `EulerDiscreteScheduler` with `s_churn=0` and linear sigma interpolation, optionally with
//! Karras sigmas (`use_karras_sigmas`, eq. 5 of the paper with ρ = 7).
//!
//! The latents live at scale σ (x = x₀ + σ·ε), so the initial noise is multiplied by the largest
//! σ (by sqrt(σ²+1) with `leading` spacing) and the UNet input is divided by sqrt(σ²+1).
//! Timesteps are float32 and may be fractional (`linspace` spacing, the default when the config
//! omits `timestep_spacing`, as the SD1.5 config does): an export that casts the timestep to an
//! integer will not match.
//!
//! Precision: training sigmas `sqrt((1−ᾱ)/ᾱ)` in f32 (torch), interpolated at the timesteps in
//! f64 (`np.interp`) and rounded to f32; each step in f32 in diffusers' operation order.

use ndarray::Zip;

use super::math::{alphas_cumprod, karras_sigmas, log_sigmas, sigma_to_t, spaced_timesteps};
use super::{check_index, check_shapes};
use super::{
    FinalSigmas, InterpolationType, Latents, PredictionType, Scheduler, SchedulerConfig,
    SchedulerError, SchedulerKind, TimestepSpacing,
};
use crate::sd::noise::NoiseSource;

/// Training sigmas `sqrt((1 − ᾱ) / ᾱ)`, indexed by training timestep, in f32 as torch computes them.
pub(crate) fn training_sigmas(alphas_cumprod: &[f32]) -> Vec<f32> {
    alphas_cumprod
        .iter()
        .map(|&a| ((1.0 - a) / a).sqrt())
        .collect()
}

/// `np.interp(x, arange(len(fp)), fp)` in f64 (fp given as f32, as numpy upcasts it).
pub(crate) fn interp(x: f64, fp: &[f32]) -> f64 {
    let last = fp.len() - 1;
    if x <= 0.0 {
        return f64::from(fp[0]);
    }
    if x >= last as f64 {
        return f64::from(fp[last]);
    }
    let j = x.floor() as usize;
    let (y0, y1) = (f64::from(fp[j]), f64::from(fp[j + 1]));
    // numpy: slope / (x1 - x0) with x1 - x0 == 1, then slope * (x - x0) + y0.
    let slope = (y1 - y0) / 1.0;
    slope * (x - j as f64) + y0
}

/// Timesteps (f32) and sigmas (f32, one more than timesteps) of diffusers' Euler-type
/// `set_timesteps`, shared by the sigma-space schedulers.
///
/// With `use_karras_sigmas` the interpolated sigmas only supply σ_min and σ_max (their last and
/// first values, so they depend on the spacing); the sigmas become the Karras ramp and each
/// timestep is derived back from its sigma by [`sigma_to_t`], fractional and cast to f32.
pub(crate) fn euler_schedule(
    config: &SchedulerConfig,
    kind: SchedulerKind,
    steps: usize,
) -> Result<(Vec<f32>, Vec<f32>, TimestepSpacing), SchedulerError> {
    if config.interpolation_type != InterpolationType::Linear {
        return Err(SchedulerError::Invalid(format!(
            "{kind}: interpolation_type log_linear is not supported yet"
        )));
    }
    let spacing = config.timestep_spacing.unwrap_or(kind.default_spacing());
    let mut timesteps: Vec<f32> = spaced_timesteps(config, spacing, steps)
        .into_iter()
        .map(|t| t as f32)
        .collect();
    timesteps.reverse();
    let alphas_cumprod = alphas_cumprod(config);
    let train = training_sigmas(&alphas_cumprod);
    let interpolated: Vec<f64> = timesteps
        .iter()
        .map(|&t| interp(f64::from(t), &train))
        .collect();
    let mut sigmas: Vec<f32> = if config.use_karras_sigmas {
        let karras = karras_sigmas(interpolated[steps - 1], interpolated[0], steps);
        let logs = log_sigmas(&train);
        timesteps = karras
            .iter()
            .map(|&s| sigma_to_t(s, &logs) as f32)
            .collect();
        karras.iter().map(|&s| s as f32).collect()
    } else {
        interpolated.iter().map(|&s| s as f32).collect()
    };
    sigmas.push(match config.final_sigmas_type {
        FinalSigmas::Zero => 0.0,
        FinalSigmas::SigmaMin => train[0],
    });
    Ok((timesteps, sigmas, spacing))
}

/// diffusers' `init_noise_sigma`: the largest sigma, or sqrt(σ_max² + 1) with `leading` spacing.
pub(crate) fn init_noise_sigma(sigmas: &[f32], spacing: TimestepSpacing) -> f32 {
    let max = sigmas.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    match spacing {
        TimestepSpacing::Leading => (max * max + 1.0).sqrt(),
        _ => max,
    }
}

/// `sample / sqrt(σ² + 1)`, the divisor computed in f32 first as torch does.
pub(crate) fn scale_by_sigma(sample: Latents, sigma: f32) -> Latents {
    let d = (sigma * sigma + 1.0).sqrt();
    sample.mapv_into(|x| x / d)
}

/// The predicted x₀ for `prediction_type` at noise level `sigma` (diffusers' operation order).
pub(crate) fn predict_x0(pred: PredictionType, sigma: f32, m: f32, x: f32) -> f32 {
    match pred {
        PredictionType::Epsilon => x - sigma * m,
        PredictionType::VPrediction => {
            let s2 = sigma * sigma + 1.0;
            m * (-sigma / s2.sqrt()) + x / s2
        }
        PredictionType::Sample => m,
    }
}

/// diffusers `EulerDiscreteScheduler` (no churn), after `set_timesteps(steps)`.
#[derive(Debug, Clone)]
pub struct EulerDiscreteScheduler {
    prediction_type: PredictionType,
    /// f32 timesteps widened to f64, in call order.
    timesteps: Vec<f64>,
    /// One sigma per call plus the final one.
    sigmas: Vec<f32>,
    init_noise_sigma: f32,
}

impl EulerDiscreteScheduler {
    /// Builds the scheduler and sets its timesteps for `steps` inference steps.
    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<Self, SchedulerError> {
        let (timesteps, sigmas, spacing) = euler_schedule(config, SchedulerKind::Euler, steps)?;
        Ok(EulerDiscreteScheduler {
            prediction_type: config.prediction_type,
            timesteps: timesteps.iter().map(|&t| f64::from(t)).collect(),
            init_noise_sigma: init_noise_sigma(&sigmas, spacing),
            sigmas,
        })
    }
}

impl Scheduler for EulerDiscreteScheduler {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f32 {
        self.init_noise_sigma
    }

    fn scale_model_input(&self, sample: Latents, i: usize) -> Latents {
        scale_by_sigma(sample, self.sigmas[i.min(self.sigmas.len() - 1)])
    }

    fn step(
        &mut self,
        model_output: &Latents,
        i: usize,
        sample: &Latents,
        _noise: &mut dyn NoiseSource,
    ) -> Result<Latents, SchedulerError> {
        check_index("euler", i, self.timesteps.len())?;
        check_shapes(model_output, sample)?;
        // No churn: gamma = 0, so sigma_hat = sigma * (0 + 1) = sigma.
        let sigma = self.sigmas[i];
        let dt = self.sigmas[i + 1] - sigma;
        let pred = self.prediction_type;
        Ok(Zip::from(model_output).and(sample).map_collect(|&m, &x| {
            let x0 = predict_x0(pred, sigma, m, x);
            let derivative = (x - x0) / sigma;
            x + derivative * dt
        }))
    }
}
