//! DPM-Solver++(2M): second-order multistep solver in data-prediction (x₀) form.
//!
//! Lu et al., "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic Models"
//! (2022), <https://arxiv.org/abs/2211.01095>, Algorithm 2; mirrors diffusers'
//! `DPMSolverMultistepScheduler` with `algorithm_type="dpmsolver++"`, `solver_order=2`,
//! `solver_type="midpoint"`, `lower_order_final=true` and no thresholding, optionally with Karras
//! sigmas (`use_karras_sigmas`: the sigmas are the Karras ramp over the whole training range and
//! the timesteps are derived back from them and rounded, possibly repeating near t = 0).
//! The kind fixes the algorithm, so `algorithm_type`, `solver_order` and `solver_type` keys in a
//! config are not consulted; `lambda_min_clipped` is assumed to be −∞ (diffusers' default).
//!
//! Each call converts the model output to x̂₀, then takes a first-order step (the first call, and
//! the last one, which goes to σ = 0) or a second-order step using the previous x̂₀, in
//! λ = log(α/σ) time. Timesteps are integers spaced over `steps + 1` points with the last dropped
//! (a spacing of its own, unlike the other schedulers); `init_noise_sigma` is 1 and the UNet
//! input is not scaled.
//!
//! Precision: f32 in diffusers' operation order, including `log`/`exp` of the f32 scalars.
//! torch's vectorised f32 `log`/`exp`/`sqrt` may differ from Rust's by an ulp, and the step size
//! h is a difference of logs, so the residual mismatch is larger here than for Euler (~1e-6).

use ndarray::Zip;

use super::check_shapes;
use super::euler::{interp, training_sigmas};
use super::math::{
    alphas_cumprod, check_call, karras_sigmas, log_sigmas, numpy_linspace, sigma_to_t,
    spaced_timesteps,
};
use super::{
    BetaSchedule, FinalSigmas, Latents, PredictionType, Scheduler, SchedulerConfig, SchedulerError,
    SchedulerKind, TimestepSpacing,
};
use crate::sd::noise::NoiseSource;

/// diffusers' switch: below this many steps the final steps drop to lower order.
const LOWER_ORDER_FINAL_BELOW: usize = 15;

/// (α, σ) of the VP process for sigma-space `sigma`, in torch's operation order.
fn alpha_sigma(sigma: f32) -> (f32, f32) {
    let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
    (alpha, sigma * alpha)
}

/// λ = log α − log σ (+∞ at σ = 0, which makes the final step return x̂₀ exactly).
fn lambda(alpha: f32, sigma: f32) -> f32 {
    alpha.ln() - sigma.ln()
}

/// Descending integer timesteps of diffusers' `DPMSolverMultistepScheduler.set_timesteps`:
/// `linspace` and `leading` lay out `steps + 1` points and drop the lowest (0); `trailing` is the
/// shared spacing.
fn dpm_timesteps(config: &SchedulerConfig, spacing: TimestepSpacing, steps: usize) -> Vec<i64> {
    let t = config.num_train_timesteps;
    let mut ts: Vec<i64> = match spacing {
        TimestepSpacing::Linspace => numpy_linspace((t - 1) as f64, steps + 1)
            .into_iter()
            .skip(1)
            .map(|x| x.round_ties_even() as i64)
            .collect(),
        TimestepSpacing::Leading => {
            let ratio = t / (steps + 1);
            (1..=steps)
                .map(|i| (i * ratio + config.steps_offset) as i64)
                .collect()
        }
        TimestepSpacing::Trailing => spaced_timesteps(config, spacing, steps)
            .into_iter()
            .map(|x| x as i64)
            .collect(),
    };
    ts.reverse();
    ts
}

/// diffusers `DPMSolverMultistepScheduler` (dpmsolver++, order 2, midpoint), after
/// `set_timesteps(steps)`.
#[derive(Debug, Clone)]
pub struct DpmPp2mScheduler {
    prediction_type: PredictionType,
    final_sigmas_type: FinalSigmas,
    /// Integer timesteps widened to f64, in call order.
    timesteps: Vec<f64>,
    /// One sigma per call plus the final one.
    sigmas: Vec<f32>,
    /// x̂₀ of the previous call.
    previous_x0: Option<Latents>,
    /// Index of the next call.
    next: usize,
}

impl DpmPp2mScheduler {
    /// Builds the scheduler and sets its timesteps for `steps` inference steps.
    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<Self, SchedulerError> {
        let spacing = config
            .timestep_spacing
            .unwrap_or(SchedulerKind::DpmPp2m.default_spacing());
        let train = training_sigmas(&alphas_cumprod(config));
        let (ts, mut sigmas): (Vec<i64>, Vec<f32>) = if config.use_karras_sigmas {
            // The Karras ramp spans the whole training range regardless of spacing; timesteps
            // come back from the sigmas, rounded half-to-even (np.round) — except for the cosine
            // schedule, which diffusers leaves fractional and torch's int64 cast truncates.
            let cosine = config.beta_schedule == BetaSchedule::SquaredcosCapV2;
            let karras = karras_sigmas(
                f64::from(train[0]),
                f64::from(train[train.len() - 1]),
                steps,
            );
            let logs = log_sigmas(&train);
            (
                karras
                    .iter()
                    .map(|&s| {
                        let t = sigma_to_t(s, &logs);
                        if cosine {
                            t as i64
                        } else {
                            t.round_ties_even() as i64
                        }
                    })
                    .collect(),
                karras.iter().map(|&s| s as f32).collect(),
            )
        } else {
            let ts = dpm_timesteps(config, spacing, steps);
            let sigmas = ts
                .iter()
                .map(|&t| interp(t as f64, &train) as f32)
                .collect();
            (ts, sigmas)
        };
        sigmas.push(match config.final_sigmas_type {
            FinalSigmas::Zero => 0.0,
            FinalSigmas::SigmaMin => train[0],
        });
        Ok(DpmPp2mScheduler {
            prediction_type: config.prediction_type,
            final_sigmas_type: config.final_sigmas_type,
            timesteps: ts.iter().map(|&t| t as f64).collect(),
            sigmas,
            previous_x0: None,
            next: 0,
        })
    }

    /// diffusers `convert_model_output` for dpmsolver++: the predicted x₀.
    fn predicted_x0(&self, model_output: &Latents, sample: &Latents, i: usize) -> Latents {
        let (alpha, sigma) = alpha_sigma(self.sigmas[i]);
        let pred = self.prediction_type;
        Zip::from(model_output)
            .and(sample)
            .map_collect(|&m, &x| match pred {
                PredictionType::Epsilon => (x - sigma * m) / alpha,
                PredictionType::VPrediction => alpha * x - sigma * m,
                PredictionType::Sample => m,
            })
    }
}

impl Scheduler for DpmPp2mScheduler {
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
        let n = self.timesteps.len();
        check_call(i, self.next, n)?;
        check_shapes(model_output, sample)?;
        let lower_order_final = i == n - 1
            && (n < LOWER_ORDER_FINAL_BELOW || self.final_sigmas_type == FinalSigmas::Zero);
        let x0 = self.predicted_x0(model_output, sample, i);

        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[i + 1]);
        let (alpha_s0, sigma_s0) = alpha_sigma(self.sigmas[i]);
        let h = lambda(alpha_t, sigma_t) - lambda(alpha_s0, sigma_s0);
        let ratio = sigma_t / sigma_s0;
        let coeff = alpha_t * ((-h).exp() - 1.0);
        let prev = match (&self.previous_x0, lower_order_final) {
            (Some(m1), false) => {
                // Second order (midpoint): D1 = (m0 − m1) / r0 with r0 = h₀ / h.
                let (alpha_s1, sigma_s1) = alpha_sigma(self.sigmas[i - 1]);
                let h0 = lambda(alpha_s0, sigma_s0) - lambda(alpha_s1, sigma_s1);
                let inv_r0 = 1.0 / (h0 / h);
                let half = 0.5 * coeff;
                Zip::from(sample)
                    .and(&x0)
                    .and(m1)
                    .map_collect(|&x, &m0, &m1| {
                        let d1 = inv_r0 * (m0 - m1);
                        ratio * x - coeff * m0 - half * d1
                    })
            }
            _ => Zip::from(sample)
                .and(&x0)
                .map_collect(|&x, &m0| ratio * x - coeff * m0),
        };
        self.previous_x0 = Some(x0);
        self.next += 1;
        Ok(prev)
    }
}
