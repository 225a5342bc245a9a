//! DDIM, deterministic (eta = 0).
//!
//! Song, Meng & Ermon, "Denoising Diffusion Implicit Models" (ICLR 2021),
//! <https://arxiv.org/abs/2010.02502>, formula (12); mirrors diffusers' `DDIMScheduler` with its
//! default `eta=0`, no thresholding and no zero-SNR rescaling. With eta 0 the variance term is
//! exactly zero, so no noise is drawn.
//!
//! Precision: all arithmetic in f32 in diffusers' operation order (see the module doc of
//! [`super`]); timesteps are integers. The step after the last timestep uses
//! `alphas_cumprod[0]` unless `set_alpha_to_one`.

use ndarray::Zip;

use super::check_shapes;
use super::math::{alpha_at, alphas_cumprod, integer_timesteps};
use super::{Latents, PredictionType, Scheduler, SchedulerConfig, SchedulerError, SchedulerKind};
use crate::sd::noise::NoiseSource;

/// diffusers `DDIMScheduler` (eta 0), after `set_timesteps(steps)`.
#[derive(Debug, Clone)]
pub struct DdimScheduler {
    alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f32,
    prediction_type: PredictionType,
    /// Clamp range for the predicted x₀, when `clip_sample` is set.
    clip: Option<f32>,
    /// `num_train_timesteps // steps`: the previous timestep is always `t - step_ratio`.
    step_ratio: i64,
    /// Descending integer timesteps.
    int_timesteps: Vec<i64>,
    /// The same as f64, for [`Scheduler::timesteps`].
    timesteps: Vec<f64>,
}

impl DdimScheduler {
    /// Builds the scheduler and sets its timesteps for `steps` inference steps.
    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<Self, SchedulerError> {
        let alphas_cumprod = alphas_cumprod(config);
        let final_alpha_cumprod = if config.set_alpha_to_one {
            1.0
        } else {
            alphas_cumprod[0]
        };
        let spacing = config
            .timestep_spacing
            .unwrap_or(SchedulerKind::Ddim.default_spacing());
        let mut int_timesteps = integer_timesteps(config, spacing, steps);
        int_timesteps.reverse();
        Ok(DdimScheduler {
            alphas_cumprod,
            final_alpha_cumprod,
            prediction_type: config.prediction_type,
            clip: config
                .clip_sample
                .then_some(config.clip_sample_range as f32),
            step_ratio: (config.num_train_timesteps / steps) as i64,
            timesteps: int_timesteps.iter().map(|&t| t as f64).collect(),
            int_timesteps,
        })
    }
}

impl Scheduler for DdimScheduler {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f32 {
        1.0
    }

    fn scale_model_input(&self, sample: Latents, _i: usize) -> Latents {
        sample
    }

    fn step(
        &mut self,
        model_output: &Latents,
        i: usize,
        sample: &Latents,
        _noise: &mut dyn NoiseSource,
    ) -> Result<Latents, SchedulerError> {
        let timestep = *self.int_timesteps.get(i).ok_or_else(|| {
            SchedulerError::Invalid(format!(
                "ddim: call {i} is past the last of {} timesteps",
                self.int_timesteps.len()
            ))
        })?;
        check_shapes(model_output, sample)?;
        let prev_timestep = timestep - self.step_ratio;
        let a_t = alpha_at(&self.alphas_cumprod, self.final_alpha_cumprod, timestep)?;
        let a_prev = alpha_at(
            &self.alphas_cumprod,
            self.final_alpha_cumprod,
            prev_timestep,
        )?;
        let b_t = 1.0 - a_t;
        let (sa, sb) = (a_t.sqrt(), b_t.sqrt());
        let pred = self.prediction_type;
        let clip = self.clip;
        // eta = 0: std_dev_t is 0, so the direction coefficient is sqrt(1 - ᾱ_prev - 0).
        let dir_coeff = (1.0 - a_prev - 0.0f32).sqrt();
        let x0_coeff = a_prev.sqrt();
        Ok(Zip::from(model_output).and(sample).map_collect(|&m, &x| {
            let (mut x0, eps) = match pred {
                PredictionType::Epsilon => ((x - sb * m) / sa, m),
                PredictionType::Sample => (m, (x - sa * m) / sb),
                PredictionType::VPrediction => (sa * x - sb * m, sa * m + sb * x),
            };
            if let Some(r) = clip {
                x0 = x0.clamp(-r, r);
            }
            x0_coeff * x0 + dir_coeff * eps
        }))
    }
}
