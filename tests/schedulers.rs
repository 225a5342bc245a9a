//! Schedulers against runs recorded from diffusers 0.42.1 (see
//! `scripts/make_scheduler_fixtures.py`), plus config parsing.
//!
//! Print the measured errors with:
//! `cargo test --test schedulers -- --nocapture --test-threads 1`

mod fixture;

use monitor::sd::scheduler::{build, SchedulerConfig, SchedulerKind};
use ndarray::{concatenate, Axis};

use fixture::{Case, ReplayNoise};

/// Largest |Δt| allowed for Karras timesteps (measured: 6.1e-5, 6 ulps near t = 0).
const KARRAS_TIMESTEP_TOL: f32 = 1e-4;

/// Largest |a − b| and largest |b|.
fn max_err(a: &monitor::sd::scheduler::Latents, b: &monitor::sd::scheduler::Latents) -> (f32, f32) {
    assert_eq!(a.shape(), b.shape());
    let d = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
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
    if config.use_karras_sigmas {
        // Karras timesteps come from numpy's float32 `log`, which is not correctly rounded and
        // varies by CPU (see `log_sigmas` in src/sd/scheduler/math.rs): a few f32 ulps allowed.
        assert_eq!(ours.len(), reference.len(), "{}: timesteps", case.name);
        let worst = ours
            .iter()
            .zip(&reference)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(
            worst <= KARRAS_TIMESTEP_TOL,
            "{}: timesteps {ours:?} vs {reference:?}",
            case.name
        );
    } else {
        assert_eq!(ours, reference, "{}: timesteps", case.name);
    }
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
        let batch = concatenate(
            Axis(0),
            &[reference_latents.view(), reference_latents.view()],
        )
        .unwrap();
        let scaled = sched.scale_model_input(batch, i);
        for half in scaled.axis_chunks_iter(Axis(0), 1) {
            let (d, m) = max_err(&half.to_owned(), &call.scaled_input);
            let rel = f64::from(d) / f64::from(m).max(f64::MIN_POSITIVE);
            worst_scale = worst_scale.max(rel);
        }
        // step: chained on our own latents, so errors accumulate as they would in a pipeline.
        latents = sched
            .step(&call.model_output, i, &latents, &mut noise)
            .unwrap();
        reference_latents = call.latents.clone();
        let (d, m) = max_err(&latents, &call.latents);
        let rel = f64::from(d) / f64::from(m).max(f64::MIN_POSITIVE);
        worst_step = worst_step.max(rel);
    }
    assert_eq!(
        noise.next,
        noise.draws.len(),
        "{}: ancestral draws",
        case.name
    );
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
        assert!(
            scale <= 1e-6,
            "{}: scale_model_input error {scale:e}",
            case.name
        );
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

#[test]
fn euler_ancestral_matches_diffusers() {
    check_scheduler("euler-a");
}

#[test]
fn lms_matches_diffusers() {
    check_scheduler("lms");
}

#[test]
fn dpmpp_2m_matches_diffusers() {
    check_scheduler("dpmpp-2m");
}

fn write_config(dir: &tempfile::TempDir, text: &str) -> std::path::PathBuf {
    let path = dir.path().join("scheduler_config.json");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn missing_fields_take_sd15_defaults_and_unknown_keys_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        &dir,
        r#"{"_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0",
            "trained_betas": null, "some_future_key": [1, 2, 3]}"#,
    );
    let config = SchedulerConfig::from_file(&path).unwrap();
    assert_eq!(config, SchedulerConfig::default());
    assert_eq!(config.num_train_timesteps, 1000);
    assert_eq!(config.beta_start, 0.00085);
    assert_eq!(config.beta_end, 0.012);
    assert_eq!(config.steps_offset, 1);
    assert!(config.skip_prk_steps && !config.set_alpha_to_one && !config.clip_sample);
    assert_eq!(config.timestep_spacing, None);
}

#[test]
fn bad_values_name_the_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    for (text, field, value) in [
        (
            r#"{"beta_schedule": "cosine-ish"}"#,
            "beta_schedule",
            "cosine-ish",
        ),
        (r#"{"steps_offset": "one"}"#, "steps_offset", "one"),
        (r#"{"steps_offset": -1}"#, "steps_offset", "-1"),
        (r#"{"prediction_type": "flow"}"#, "prediction_type", "flow"),
        (r#"{"timestep_spacing": 3}"#, "timestep_spacing", "3"),
        (r#"{"set_alpha_to_one": "yes"}"#, "set_alpha_to_one", "yes"),
        (r#"{"beta_start": "small"}"#, "beta_start", "small"),
        (r#"{"trained_betas": [0.1, 0.2]}"#, "trained_betas", ""),
    ] {
        let path = write_config(&dir, text);
        let message = SchedulerConfig::from_file(&path).unwrap_err().to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains(&format!("`{field}`")), "{message}");
        assert!(message.contains(value), "{message}");
    }
}

#[test]
fn unreadable_or_invalid_files_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.json");
    let message = SchedulerConfig::from_file(&missing)
        .unwrap_err()
        .to_string();
    assert!(message.contains("nope.json"), "{message}");
    let path = write_config(&dir, "{not json");
    let message = SchedulerConfig::from_file(&path).unwrap_err().to_string();
    assert!(message.contains("invalid JSON"), "{message}");
}

#[test]
fn kinds_round_trip_and_all_build() {
    for kind in SchedulerKind::ALL {
        assert_eq!(kind.to_string().parse::<SchedulerKind>().unwrap(), kind);
    }
    let names: Vec<String> = SchedulerKind::ALL.iter().map(|k| k.to_string()).collect();
    assert_eq!(
        names,
        ["pndm", "ddim", "euler", "euler-a", "lms", "dpmpp-2m"]
    );
    let message = "heun".parse::<SchedulerKind>().unwrap_err().to_string();
    assert!(message.contains("unknown scheduler 'heun'"), "{message}");
    let config = SchedulerConfig::default();
    for kind in SchedulerKind::ALL {
        assert!(build(kind, &config, 20).is_ok(), "{kind}");
    }
}

#[test]
fn step_counts_out_of_range_are_rejected() {
    let config = SchedulerConfig::default();
    for kind in [
        SchedulerKind::Pndm,
        SchedulerKind::Ddim,
        SchedulerKind::Euler,
    ] {
        for steps in [0, 1001] {
            let message = build(kind, &config, steps).err().unwrap().to_string();
            assert!(message.contains("steps must be between 1 and"), "{message}");
        }
        assert!(build(kind, &config, 1000).is_ok());
    }
}

#[test]
fn pndm_without_skip_prk_steps_is_refused() {
    let config = SchedulerConfig {
        skip_prk_steps: false,
        ..SchedulerConfig::default()
    };
    let message = build(SchedulerKind::Pndm, &config, 20)
        .err()
        .unwrap()
        .to_string();
    assert!(message.contains("skip_prk_steps"), "{message}");
}

#[test]
fn out_of_order_pndm_steps_are_refused() {
    let config = SchedulerConfig::default();
    let mut sched = build(SchedulerKind::Pndm, &config, 10).unwrap();
    let x = monitor::sd::scheduler::Latents::zeros((1, 4, 2, 2));
    let mut noise = ReplayNoise {
        draws: vec![],
        next: 0,
    };
    assert!(sched.step(&x, 1, &x, &mut noise).is_err());
    assert!(sched.step(&x, 0, &x, &mut noise).is_ok());
}
