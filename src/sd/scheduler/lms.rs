//! Linear multistep (order 4) in sigma space with integrated coefficients.
//!
//! Karras et al., "Elucidating the Design Space of Diffusion-Based Generative Models" (NeurIPS
//! 2022), <https://arxiv.org/abs/2206.00364>, and k-diffusion's `sample_lms`; mirrors diffusers'
//! `LMSDiscreteScheduler` with its default `order=4`.
//!
//! Step i keeps the last (up to 4) derivatives d = (x − x̂₀)/σ and advances
//! x ← x + Σⱼ cⱼ·d_{i−j}, where cⱼ integrates the Lagrange basis polynomial through
//! σ_i, σ_{i−1}, … from σ_i to σ_{i+1}. The order ramps up 1, 2, 3, 4 over the first steps.
//!
//! Precision: diffusers integrates with `scipy.integrate.quad` (epsrel 1e-4) and evaluates the
//! integrand in torch f32, because the sigmas are f32 tensors. The integrand is a polynomial of
//! degree ≤ 3, so we integrate it exactly with 4-point Gauss–Legendre in f64; our coefficients
//! are therefore more accurate than diffusers' by ~1e-7 relative, which bounds the mismatch.
//! The coefficients are rounded to f32 (torch does so when multiplying f32 tensors) and the step
//! is summed in f32 in diffusers' order. Timesteps and sigmas are those of [`super::euler`],
//! including its Karras option (`use_karras_sigmas`).

use ndarray::Zip;

use super::check_shapes;
use super::euler::{euler_schedule, init_noise_sigma, predict_x0, scale_by_sigma};
use super::{
    FinalSigmas, InterpolationType, Latents, PredictionType, Scheduler, SchedulerConfig,
    SchedulerError, SchedulerKind,
};
use crate::sd::noise::NoiseSource;

/// diffusers' default `order` argument of `LMSDiscreteScheduler.step`.
const ORDER: usize = 4;

/// Gauss–Legendre nodes and weights on [−1, 1], 4 points: exact for polynomials of degree ≤ 7.
const GL4: [(f64, f64); 4] = [
    (-0.861_136_311_594_052_6, 0.347_854_845_137_453_9),
    (-0.339_981_043_584_856_3, 0.652_145_154_862_546_1),
    (0.339_981_043_584_856_3, 0.652_145_154_862_546_1),
    (0.861_136_311_594_052_6, 0.347_854_845_137_453_9),
];

/// ∫ from `a` to `b` of `f`, exact for polynomials of degree ≤ 7.
fn integrate(a: f64, b: f64, f: impl Fn(f64) -> f64) -> f64 {
    let (mid, half) = ((a + b) / 2.0, (b - a) / 2.0);
    half * GL4.iter().map(|&(x, w)| w * f(mid + half * x)).sum::<f64>()
}

/// diffusers `LMSDiscreteScheduler` (order 4), after `set_timesteps(steps)`.
#[derive(Debug, Clone)]
pub struct LmsScheduler {
    prediction_type: PredictionType,
    /// f32 timesteps widened to f64, in call order.
    timesteps: Vec<f64>,
    /// One sigma per call plus the final 0.
    sigmas: Vec<f32>,
    init_noise_sigma: f32,
    /// Last derivatives, oldest first (at most [`ORDER`]).
    derivatives: Vec<Latents>,
    /// Index of the next call.
    next: usize,
}

impl LmsScheduler {
    /// Builds the scheduler and sets its timesteps for `steps` inference steps.
    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<Self, SchedulerError> {
        // LMS has no interpolation or final-sigma options (Karras sigmas it has).
        let plain = SchedulerConfig {
            interpolation_type: InterpolationType::Linear,
            final_sigmas_type: FinalSigmas::Zero,
            ..config.clone()
        };
        let (timesteps, sigmas, spacing) = euler_schedule(&plain, SchedulerKind::Lms, steps)?;
        Ok(LmsScheduler {
            prediction_type: config.prediction_type,
            timesteps: timesteps.iter().map(|&t| f64::from(t)).collect(),
            init_noise_sigma: init_noise_sigma(&sigmas, spacing),
            sigmas,
            derivatives: Vec::with_capacity(ORDER),
            next: 0,
        })
    }

    /// Integral from σ_t to σ_{t+1} of the Lagrange basis polynomial that is 1 at σ_{t−current}
    /// and 0 at the other σ_{t−k}, k < order.
    fn coefficient(&self, order: usize, t: usize, current: usize) -> f64 {
        let s = |k: usize| f64::from(self.sigmas[t - k]);
        integrate(s(0), f64::from(self.sigmas[t + 1]), |tau| {
            (0..order)
                .filter(|&k| k != current)
                .map(|k| (tau - s(k)) / (s(current) - s(k)))
                .product()
        })
    }
}

impl Scheduler for LmsScheduler {
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
        super::math::check_call(i, self.next, self.timesteps.len())?;
        check_shapes(model_output, sample)?;
        let sigma = self.sigmas[i];
        let pred = self.prediction_type;
        let derivative = Zip::from(model_output)
            .and(sample)
            .map_collect(|&m, &x| (x - predict_x0(pred, sigma, m, x)) / sigma);
        self.derivatives.push(derivative);
        if self.derivatives.len() > ORDER {
            self.derivatives.remove(0);
        }
        let order = (i + 1).min(ORDER);
        // Newest derivative pairs with coefficient 0, as diffusers zips with reversed(derivatives).
        let mut sum: Option<Latents> = None;
        for (current, d) in self.derivatives.iter().rev().enumerate().take(order) {
            let c = self.coefficient(order, i, current) as f32;
            let term = d.mapv(|x| c * x);
            sum = Some(match sum {
                None => term,
                Some(acc) => acc + &term,
            });
        }
        self.next += 1;
        let sum = sum.expect("at least one derivative");
        Ok(sample + &sum)
    }
}
