//! Helpers shared by all schedulers: the training tables and timestep spacing, written once, each
//! reproducing the torch/numpy routine diffusers calls (including where it rounds to f32).

use super::{BetaSchedule, SchedulerConfig, SchedulerError, TimestepSpacing};

/// torch.linspace(start, end, n, dtype=float32): the step is computed in f32 and the second half is
/// counted back from `end`, which is why this is not `start + i * step` throughout. torch's CPU
/// kernel (AVX2/AVX512 builds) compiles `start + step * i` to a fused multiply-add, so we use
/// `mul_add`; a plain multiply-then-add differs in the last bit for ~20% of the betas.
fn torch_linspace_f32(start: f64, end: f64, n: usize) -> Vec<f32> {
    let (start, end) = (start as f32, end as f32);
    if n == 1 {
        return vec![start];
    }
    let step = (end - start) / (n - 1) as f32;
    let halfway = n / 2;
    (0..n)
        .map(|i| {
            if i < halfway {
                step.mul_add(i as f32, start)
            } else {
                (-step).mul_add((n - i - 1) as f32, end)
            }
        })
        .collect()
}

/// Glide's cosine schedule (diffusers `betas_for_alpha_bar`, cosine, max beta 0.999), in f64.
fn squaredcos_betas(n: usize) -> Vec<f32> {
    let alpha_bar = |t: f64| {
        ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0)
            .cos()
            .powi(2)
    };
    (0..n)
        .map(|i| {
            let (t1, t2) = (i as f64 / n as f64, (i + 1) as f64 / n as f64);
            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999) as f32
        })
        .collect()
}

/// Training betas as the float32 tensor diffusers builds.
pub(crate) fn betas(config: &SchedulerConfig) -> Vec<f32> {
    let n = config.num_train_timesteps;
    if let Some(trained) = &config.trained_betas {
        return trained.iter().map(|&b| b as f32).collect();
    }
    match config.beta_schedule {
        BetaSchedule::Linear => torch_linspace_f32(config.beta_start, config.beta_end, n),
        BetaSchedule::ScaledLinear => {
            torch_linspace_f32(config.beta_start.sqrt(), config.beta_end.sqrt(), n)
                .into_iter()
                .map(|b| b * b)
                .collect()
        }
        BetaSchedule::SquaredcosCapV2 => squaredcos_betas(n),
    }
}

/// `torch.cumprod(1 - betas)` in float32. torch's CPU cumprod accumulates in double and rounds
/// each partial product to f32, so we do the same.
pub(crate) fn alphas_cumprod(config: &SchedulerConfig) -> Vec<f32> {
    let mut acc = 1.0f64;
    betas(config)
        .into_iter()
        .map(|b| {
            acc *= f64::from(1.0f32 - b);
            acc as f32
        })
        .collect()
}

/// numpy.linspace(0, stop, n) in f64: `i * step` with the last value pinned to `stop`.
pub(crate) fn numpy_linspace(stop: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![0.0];
    }
    let step = stop / (n - 1) as f64;
    let mut v: Vec<f64> = (0..n).map(|i| i as f64 * step).collect();
    v[n - 1] = stop;
    v
}

/// numpy.arange(start, 0, -step) for float `step`: numpy stores `start` and `start - step`, then
/// fills the rest as `start + i * delta` with delta re-derived from those two values.
fn numpy_arange_down(start: f64, step: f64) -> Vec<f64> {
    let len = ((0.0 - start) / -step).ceil().max(0.0) as usize;
    let second = start - step;
    let delta = second - start;
    (0..len)
        .map(|i| match i {
            0 => start,
            1 => second,
            _ => start + i as f64 * delta,
        })
        .collect()
}

/// Inference timesteps in ascending order, before any per-scheduler rounding or cast: `leading`
/// and `trailing` give integers, `linspace` gives the raw numpy f64 values (integer schedulers
/// round them half-to-even, as numpy's `round` does; Euler casts them to f32 unrounded).
pub(crate) fn spaced_timesteps(
    config: &SchedulerConfig,
    spacing: TimestepSpacing,
    steps: usize,
) -> Vec<f64> {
    let t = config.num_train_timesteps;
    match spacing {
        TimestepSpacing::Linspace => numpy_linspace((t - 1) as f64, steps),
        TimestepSpacing::Leading => {
            let ratio = t / steps;
            (0..steps)
                .map(|i| (i * ratio + config.steps_offset) as f64)
                .collect()
        }
        TimestepSpacing::Trailing => {
            let mut v: Vec<f64> = numpy_arange_down(t as f64, t as f64 / steps as f64)
                .into_iter()
                .map(|x| x.round_ties_even() - 1.0)
                .collect();
            v.reverse();
            v
        }
    }
}

/// Integer timesteps (PNDM, DDIM) in ascending order.
pub(crate) fn integer_timesteps(
    config: &SchedulerConfig,
    spacing: TimestepSpacing,
    steps: usize,
) -> Vec<i64> {
    spaced_timesteps(config, spacing, steps)
        .into_iter()
        .map(|x| x.round_ties_even() as i64)
        .collect()
}

/// `alphas_cumprod[t]`, or the final alpha for negative `t` (the step past t=0); an error for a
/// timestep beyond the table, where torch would raise an IndexError.
pub(crate) fn alpha_at(table: &[f32], final_alpha: f32, t: i64) -> Result<f32, SchedulerError> {
    if t < 0 {
        return Ok(final_alpha);
    }
    usize::try_from(t)
        .ok()
        .and_then(|i| table.get(i).copied())
        .ok_or_else(|| {
            SchedulerError::Invalid(format!(
                "timestep {t} is outside the training range 0..{}",
                table.len()
            ))
        })
}

/// Karras et al. (2022) eq. 5 with ρ = 7, as diffusers' `_convert_to_karras` (k-diffusion's
/// `get_sigmas_karras`): `(σ_max^(1/ρ) + ramp·(σ_min^(1/ρ) − σ_max^(1/ρ)))^ρ` over
/// `ramp = np.linspace(0, 1, steps)`, descending, all in f64 as numpy computes it.
pub(crate) fn karras_sigmas(sigma_min: f64, sigma_max: f64, steps: usize) -> Vec<f64> {
    const RHO: f64 = 7.0;
    let min_inv_rho = sigma_min.powf(1.0 / RHO);
    let max_inv_rho = sigma_max.powf(1.0 / RHO);
    numpy_linspace(1.0, steps)
        .into_iter()
        .map(|r| (max_inv_rho + r * (min_inv_rho - max_inv_rho)).powf(RHO))
        .collect()
}

/// `np.log` of the f32 training sigmas, kept in f32 as numpy does.
///
/// numpy's SIMD float32 `log` is not correctly rounded (on the AVX-512 host that wrote the
/// fixtures ~20% of these values are an ulp or more off), and which kernel runs depends on the
/// CPU, so diffusers' own Karras timesteps vary between machines. We round the f64 logarithm,
/// which is within an ulp of numpy's; through [`sigma_to_t`] that moves a fractional timestep
/// by at most a few f32 ulps (≤ 1e-4 at SD1.5 scale). Integer timesteps (DPM-Solver) are rounded
/// afterwards and come out identical.
pub(crate) fn log_sigmas(training_sigmas: &[f32]) -> Vec<f32> {
    training_sigmas
        .iter()
        .map(|&s| f64::from(s).ln() as f32)
        .collect()
}

/// diffusers' `_sigma_to_t`: the fractional training timestep whose sigma is `sigma`, by linear
/// interpolation in log-sigma between the two bracketing training timesteps (f64, with the f32
/// differences numpy takes between f32 table entries).
pub(crate) fn sigma_to_t(sigma: f64, log_sigmas: &[f32]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    // np.cumsum(dists >= 0).argmax(): the first index at which the running count is largest.
    let (mut count, mut best, mut low_idx) = (0usize, 0usize, 0usize);
    for (i, &l) in log_sigmas.iter().enumerate() {
        if log_sigma - f64::from(l) >= 0.0 {
            count += 1;
        }
        if count > best {
            best = count;
            low_idx = i;
        }
    }
    let low_idx = low_idx.min(log_sigmas.len() - 2);
    let high_idx = low_idx + 1;
    let (low, high) = (log_sigmas[low_idx], log_sigmas[high_idx]);
    let w = ((f64::from(low) - log_sigma) / f64::from(low - high)).clamp(0.0, 1.0);
    (1.0 - w) * low_idx as f64 + w * high_idx as f64
}

/// Checks that step `i` is the next call of a stateful scheduler.
pub(crate) fn check_call(i: usize, expected: usize, calls: usize) -> Result<(), SchedulerError> {
    if i != expected || i >= calls {
        return Err(SchedulerError::Invalid(format!(
            "step called with index {i}, expected {expected} (of {calls} calls); \
             schedulers must be stepped in order"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sd::scheduler::SchedulerConfig;

    /// betas and alphas_cumprod bit-exact against the float32 tensors diffusers builds.
    #[test]
    fn tables_match_diffusers_bit_exact() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/schedulers/alphas_cumprod.json"
        );
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        for (name, table) in v.as_object().unwrap() {
            let config =
                SchedulerConfig::from_json_str(&table["config"].to_string(), name).unwrap();
            for (key, ours) in [
                ("betas", betas(&config)),
                ("alphas_cumprod", alphas_cumprod(&config)),
            ] {
                let reference: Vec<f32> = table[key]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap() as f32)
                    .collect();
                let mismatches: Vec<usize> = (0..ours.len())
                    .filter(|&i| ours[i] != reference[i])
                    .collect();
                assert!(
                    mismatches.is_empty(),
                    "{name} {key}: {} mismatches, first at {:?}: {:?} vs {:?}",
                    mismatches.len(),
                    mismatches.first(),
                    mismatches.first().map(|&i| ours[i]),
                    mismatches.first().map(|&i| reference[i])
                );
            }
        }
    }
}
