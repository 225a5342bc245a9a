//! Schedulers against runs recorded from diffusers 0.42.1 (see
//! `scripts/make_scheduler_fixtures.py`), plus config parsing.
//!
//! Print the measured errors with:
//! `cargo test --test schedulers -- --nocapture --test-threads 1`

mod fixture;

use monitor::sd::scheduler::{build, SchedulerConfig, SchedulerKind};
use ndarray::{concatenate, Axis};

use fixture::{Case, ReplayNoise};

/// Largest |a − b| and largest |b|.
fn max_err(a: &monitor::sd::scheduler::Latents, b: &monitor::sd::scheduler::Latents) -> (f32, f32) {
    assert_eq!(a.shape(), b.shape());
    let d = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    let m = b.iter().map(|y| y.abs()).fold(0.0f32, f32::max);
    (d, m)
}

/// Replays one case; returns (worst relative scale_model_input error, worst relative latents error).
fn replay(case: &Case) -> (f64, f64) {
    let config = SchedulerConfig::from_json_str(&case.config_json, &case.name).unwrap();
    let kind: SchedulerKind = case.scheduler.parse().unwrap();
    let mut sched = build(kind, &config, case.steps).unwrap();
    // Timesteps are integers or f32 in diffusers; compare at f32 (serde_json's default float
    // parser may be one f64 ulp off, which never changes the f32 value).
    let ours: Vec<f32> = sched.timesteps().iter().map(|&t| t as f32).collect();
    let reference: Vec<f32> = case.timesteps.iter().map(|&t| t as f32).collect();
    assert_eq!(ours, reference, "{}: timesteps", case.name);
    let ins = sched.init_noise_sigma();
    assert!(
        (ins - case.init_noise_sigma).abs() <= f32::EPSILON * case.init_noise_sigma,
        "{}: init_noise_sigma {ins} vs {}",
        case.name,
        case.init_noise_sigma
    );
    let mut noise = ReplayNoise {
        draws: case.calls.iter().filter_map(|c| c.noise.clone()).collect(),
        next: 0,
    };
    let mut latents = case.initial_noise.mapv(|x| x * ins);
    let (mut worst_scale, mut worst_step) = (0.0f64, 0.0f64);
    let mut reference_latents = latents.clone();
    for (i, call) in case.calls.iter().enumerate() {
        // scale_model_input alone: applied to diffusers' own latents of this call.
        let batch = concatenate(Axis(0), &[reference_latents.view(), reference_latents.view()])
            .unwrap();
        let scaled = sched.scale_model_input(batch, i);
        for half in scaled.axis_chunks_iter(Axis(0), 1) {
            let (d, m) = max_err(&half.to_owned(), &call.scaled_input);
            let rel = f64::from(d) / f64::from(m).max(f64::MIN_POSITIVE);
            worst_scale = worst_scale.max(rel);
        }
        // step: chained on our own latents, so errors accumulate as they would in a pipeline.
        latents = sched.step(&call.model_output, i, &latents, &mut noise).unwrap();
        reference_latents = call.latents.clone();
        let (d, m) = max_err(&latents, &call.latents);
        let rel = f64::from(d) / f64::from(m).max(f64::MIN_POSITIVE);
        worst_step = worst_step.max(rel);
    }
    assert_eq!(noise.next, noise.draws.len(), "{}: ancestral draws", case.name);
    (worst_scale, worst_step)
}

fn check_scheduler(name: &str) {
    for case in fixture::cases(name) {
        let (scale, step) = replay(&case);
        println!(
            "{:<24} calls {:>3}  scale_model_input max rel err {:.3e}  latents max|Δ|/max|ref| {:.3e}",
            case.name,
            case.calls.len(),
            scale,
            step
        );
        assert!(scale <= 1e-6, "{}: scale_model_input error {scale:e}", case.name);
        assert!(step <= 1e-5, "{}: latents error {step:e}", case.name);
    }
}

#[test]
fn pndm_matches_diffusers() {
    check_scheduler("pndm");
}

#[test]
fn ddim_matches_diffusers() {
    check_scheduler("ddim");
}

#[test]
fn euler_matches_diffusers() {
    check_scheduler("euler");
}
