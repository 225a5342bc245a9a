//! Diffusion schedulers behind one trait, one file per scheduler, matching diffusers' math.

use ndarray::Array4;

use crate::sd::noise::NoiseSource;

/// Latents as the pipeline holds them between steps: float32, NCHW.
pub type Latents = Array4<f32>;

/// Errors from building or stepping a scheduler.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// Anything a scheduler could not do, with the reason.
    #[error("{0}")]
    Invalid(String),
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
