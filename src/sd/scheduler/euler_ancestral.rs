//! Ancestral Euler in sigma space (k-diffusion's `sample_euler_ancestral`).
//!
//! Karras et al., "Elucidating the Design Space of Diffusion-Based Generative Models" (NeurIPS
//! 2022), <https://arxiv.org/abs/2206.00364>, with the ancestral split of Ho et al. (DDPM);
//! mirrors diffusers' `EulerAncestralDiscreteScheduler`.
//!
//! Each step goes deterministically down to σ_down and then adds fresh noise of size σ_up, where
//! σ_up² + σ_down² = σ_next². The noise is drawn from the same [`NoiseSource`] as the initial
//! latents, right after them and once per step (the last step included, where σ_up = 0), with the
//! shape of the model output — diffusers draws it from the pipeline's generator in that order, so
//! a seeded run is reproducible only if the stream is shared the same way.
//!
//! Timesteps and sigmas are those of [`super::euler`] (linear interpolation, final sigma 0;
//! this class has no Karras or interpolation options, so those config keys are ignored).
//! Precision: f32 in diffusers' operation order, as in Euler.

use ndarray::{Ix4, Zip};

use super::euler::{euler_schedule, init_noise_sigma, predict_x0, scale_by_sigma};
use super::{check_index, check_shapes};
use super::{
    FinalSigmas, InterpolationType, Latents, PredictionType, Scheduler, SchedulerConfig,
    SchedulerError, SchedulerKind,
};
use crate::sd::noise::{NoiseDtype, NoiseSource};

/// diffusers `EulerAncestralDiscreteScheduler`, after `set_timesteps(steps)`.
#[derive(Debug, Clone)]
pub struct EulerAncestralScheduler {
    prediction_type: PredictionType,
    /// f32 timesteps widened to f64, in call order.
    timesteps: Vec<f64>,
    /// One sigma per call plus the final 0.
    sigmas: Vec<f32>,
    init_noise_sigma: f32,
}

impl EulerAncestralScheduler {
    /// Builds the scheduler and sets its timesteps for `steps` inference steps.
    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<Self, SchedulerError> {
        if config.prediction_type == PredictionType::Sample {
            return Err(SchedulerError::Invalid(
                "euler-a supports prediction_type epsilon or v_prediction, not sample".into(),
            ));
        }
        // The ancestral class has none of Euler's sigma options: use its fixed behaviour.
        let plain = SchedulerConfig {
            use_karras_sigmas: false,
            interpolation_type: InterpolationType::Linear,
            final_sigmas_type: FinalSigmas::Zero,
            ..config.clone()
        };
        let (timesteps, sigmas, spacing) =
            euler_schedule(&plain, SchedulerKind::EulerAncestral, steps)?;
        Ok(EulerAncestralScheduler {
            prediction_type: config.prediction_type,
            timesteps: timesteps.iter().map(|&t| f64::from(t)).collect(),
            init_noise_sigma: init_noise_sigma(&sigmas, spacing),
            sigmas,
        })
    }
}

impl Scheduler for EulerAncestralScheduler {
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
        noise: &mut dyn NoiseSource,
    ) -> Result<Latents, SchedulerError> {
        check_index("euler-a", i, self.timesteps.len())?;
        check_shapes(model_output, sample)?;
        let (from, to) = (self.sigmas[i], self.sigmas[i + 1]);
        let up = (to * to * (from * from - to * to) / (from * from)).sqrt();
        let down = (to * to - up * up).sqrt();
        let dt = down - from;
        let pred = self.prediction_type;
        let deterministic = Zip::from(model_output).and(sample).map_collect(|&m, &x| {
            let x0 = predict_x0(pred, from, m, x);
            let derivative = (x - x0) / from;
            x + derivative * dt
        });
        let drawn = noise
            .randn(model_output.shape(), NoiseDtype::F32)
            .map_err(|e| SchedulerError::Invalid(format!("euler-a: drawing step noise: {e}")))?
            .into_dimensionality::<Ix4>()
            .map_err(|e| SchedulerError::Invalid(format!("euler-a: step noise shape: {e}")))?;
        if drawn.shape() != model_output.shape() {
            return Err(SchedulerError::Invalid(format!(
                "euler-a: noise source returned shape {:?}, expected {:?}",
                drawn.shape(),
                model_output.shape()
            )));
        }
        Ok(Zip::from(&deterministic)
            .and(&drawn)
            .map_collect(|&x, &n| x + n * up))
    }
}
