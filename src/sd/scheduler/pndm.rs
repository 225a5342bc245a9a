//! PNDM in its PLMS form (pseudo linear multistep), the SD1.5 default scheduler.
//!
//! Liu et al., "Pseudo Numerical Methods for Diffusion Models on Manifolds" (ICLR 2022),
//! <https://arxiv.org/abs/2202.09778>; mirrors diffusers' `PNDMScheduler` with
//! `skip_prk_steps=true`. The Runge–Kutta warm-up (`skip_prk_steps=false`) is not implemented.
//!
//! With `steps` inference steps the UNet is called `steps + 1` times (once for `steps == 1`): the
//! second-to-last spaced timestep is repeated at the start, because the first PLMS step has no
//! history. Call 0 takes a plain step from t to t−δ and remembers the sample; call 1 evaluates the
//! model at t−δ, averages the two outputs and redoes the step from the remembered sample
//! (a Heun-like second-order start). Later calls use the 2-, 3- and 4-term Adams–Bashforth
//! combinations of the stored outputs (`ets`), exactly in diffusers' order.
//!
//! Precision: all arithmetic in f32 in diffusers' operation order (see the module doc of
//! [`super`]); timesteps are integers.

use ndarray::Zip;

use super::check_shapes;
use super::math::{alpha_at, alphas_cumprod, check_call, integer_timesteps};
use super::{Latents, PredictionType, Scheduler, SchedulerConfig, SchedulerError, SchedulerKind};
use crate::sd::noise::NoiseSource;

/// diffusers `PNDMScheduler` with `skip_prk_steps=true`, after `set_timesteps(steps)`.
#[derive(Debug, Clone)]
pub struct PndmScheduler {
    alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f32,
    prediction_type: PredictionType,
    /// `num_train_timesteps // steps`: diffusers' δ, even where the spacing is not uniform.
    step_ratio: i64,
    /// UNet timesteps in call order, as integers.
    plms_timesteps: Vec<i64>,
    /// The same as f64, for [`Scheduler::timesteps`].
    timesteps: Vec<f64>,
    /// Past model outputs (at most 4 kept), newest last.
    ets: Vec<Latents>,
    /// Sample remembered by call 0 for the averaged redo at call 1.
    cur_sample: Option<Latents>,
    counter: usize,
}

impl PndmScheduler {
    /// Builds the scheduler and sets its timesteps for `steps` inference steps.
    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<Self, SchedulerError> {
        if !config.skip_prk_steps {
            return Err(SchedulerError::Invalid(
                "pndm with skip_prk_steps=false (Runge-Kutta warm-up) is not supported; \
                 set skip_prk_steps to true"
                    .into(),
            ));
        }
        if config.prediction_type == PredictionType::Sample {
            return Err(SchedulerError::Invalid(
                "pndm supports prediction_type epsilon or v_prediction, not sample".into(),
            ));
        }
        let alphas_cumprod = alphas_cumprod(config);
        let final_alpha_cumprod = if config.set_alpha_to_one {
            1.0
        } else {
            alphas_cumprod[0]
        };
        let spacing = config
            .timestep_spacing
            .unwrap_or(SchedulerKind::Pndm.default_spacing());
        let ts = integer_timesteps(config, spacing, steps);
        // diffusers: concat(ts[:-1], ts[-2:-1], ts[-1:])[::-1] — the repeated entry is the
        // second-highest timestep, which becomes call 1.
        let n = ts.len();
        let mut plms_timesteps: Vec<i64> = ts[..n - 1].to_vec();
        plms_timesteps.extend_from_slice(&ts[n.saturating_sub(2)..n - 1]);
        plms_timesteps.push(ts[n - 1]);
        plms_timesteps.reverse();
        Ok(PndmScheduler {
            alphas_cumprod,
            final_alpha_cumprod,
            prediction_type: config.prediction_type,
            step_ratio: (config.num_train_timesteps / steps) as i64,
            timesteps: plms_timesteps.iter().map(|&t| t as f64).collect(),
            plms_timesteps,
            ets: Vec::with_capacity(4),
            cur_sample: None,
            counter: 0,
        })
    }

    /// Formula (9) of the PNDM paper: x_{t−δ} from x_t and the (combined) model output.
    fn prev_sample(
        &self,
        sample: &Latents,
        timestep: i64,
        prev_timestep: i64,
        model_output: &Latents,
    ) -> Result<Latents, SchedulerError> {
        let a_t = alpha_at(&self.alphas_cumprod, self.final_alpha_cumprod, timestep)?;
        let a_prev = alpha_at(
            &self.alphas_cumprod,
            self.final_alpha_cumprod,
            prev_timestep,
        )?;
        let b_t = 1.0 - a_t;
        let b_prev = 1.0 - a_prev;
        let eps = match self.prediction_type {
            PredictionType::VPrediction => {
                let (sa, sb) = (a_t.sqrt(), b_t.sqrt());
                Zip::from(model_output)
                    .and(sample)
                    .map_collect(|&m, &x| sa * m + sb * x)
            }
            _ => model_output.clone(),
        };
        let sample_coeff = (a_prev / a_t).sqrt();
        let denom = a_t * b_prev.sqrt() + (a_t * b_t * a_prev).sqrt();
        let diff = a_prev - a_t;
        Ok(Zip::from(sample)
            .and(&eps)
            .map_collect(|&x, &e| sample_coeff * x - (diff * e) / denom))
    }
}

/// Elementwise `f(a, b)`.
fn zip2(a: &Latents, b: &Latents, f: impl Fn(f32, f32) -> f32) -> Latents {
    Zip::from(a).and(b).map_collect(|&x, &y| f(x, y))
}

impl Scheduler for PndmScheduler {
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
        check_call(i, self.counter, self.plms_timesteps.len())?;
        check_shapes(model_output, sample)?;
        let mut timestep = self.plms_timesteps[i];
        let mut prev_timestep = timestep - self.step_ratio;
        if self.counter != 1 {
            if self.ets.len() > 3 {
                self.ets.remove(0);
            }
            self.ets.push(model_output.clone());
        } else {
            // Call 1 repeats call 0's step from the same start, now with the averaged output.
            prev_timestep = timestep;
            timestep += self.step_ratio;
        }

        let e = &self.ets;
        let n = e.len();
        let mut from = sample;
        let remembered;
        let combined = if n == 1 && self.counter == 0 {
            self.cur_sample = Some(sample.clone());
            model_output.clone()
        } else if n == 1 && self.counter == 1 {
            remembered = self.cur_sample.take().ok_or_else(|| {
                SchedulerError::Invalid("pndm: no remembered sample at call 1".into())
            })?;
            from = &remembered;
            zip2(model_output, &e[0], |m, e1| (m + e1) / 2.0)
        } else if n == 2 {
            zip2(&e[1], &e[0], |e1, e2| (3.0 * e1 - e2) / 2.0)
        } else if n == 3 {
            Zip::from(&e[2])
                .and(&e[1])
                .and(&e[0])
                .map_collect(|&e1, &e2, &e3| (23.0 * e1 - 16.0 * e2 + 5.0 * e3) / 12.0)
        } else {
            // torch turns the Python scalar 1/24 into an f32 before multiplying.
            let k = (1.0f64 / 24.0) as f32;
            Zip::from(&e[3])
                .and(&e[2])
                .and(&e[1])
                .and(&e[0])
                .map_collect(|&e1, &e2, &e3, &e4| {
                    k * (55.0 * e1 - 59.0 * e2 + 37.0 * e3 - 9.0 * e4)
                })
        };
        let prev = self.prev_sample(from, timestep, prev_timestep, &combined)?;
        self.counter += 1;
        Ok(prev)
    }
}
