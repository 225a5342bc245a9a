//! txt2img: prompt → text embeddings → scheduler loop over the UNet → VAE → RGB8, as diffusers'
//! `OnnxStableDiffusionPipeline` does it, step for step and in the same float32 arithmetic.

use std::time::{Duration, Instant};

use ndarray::{s, Array3, Array4, Axis, Ix4};
use serde::Serialize;

use super::image::{latents_to_rgb, RgbImage};
use super::model::{concat0, FloatType, ModelError, SdModel};
use super::noise::{sha256_f32, NoiseDtype, NoiseError, NoiseSource};
use super::scheduler::{self, SchedulerConfig, SchedulerError, SchedulerKind};
use super::tokenizer::{ClipTokenizer, TokenizerError};

/// Errors from one generation.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// Parameters that cannot run (size not a multiple of 8, zero steps, ...).
    #[error("invalid parameter: {0}")]
    Invalid(String),
    /// Tokenizing failed.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    /// The scheduler could not be built or stepped.
    #[error("scheduler: {0}")]
    Scheduler(#[from] SchedulerError),
    /// The noise source failed.
    #[error("noise: {0}")]
    Noise(#[from] NoiseError),
    /// A session run failed.
    #[error(transparent)]
    Model(#[from] ModelError),
}

/// What to generate (the seed lives in the noise source).
#[derive(Debug, Clone)]
pub struct GenerateParams {
    /// The prompt.
    pub prompt: String,
    /// Negative prompt; `None` means `""` under classifier-free guidance, as diffusers does.
    pub negative_prompt: Option<String>,
    /// Inference steps (PNDM makes steps + 1 UNet calls).
    pub steps: usize,
    /// Guidance scale; CFG runs only when it is > 1, as in diffusers.
    pub guidance_scale: f32,
    /// Image width in pixels, a multiple of 8.
    pub width: u32,
    /// Image height in pixels, a multiple of 8.
    pub height: u32,
    /// Scheduler.
    pub scheduler: SchedulerKind,
}

/// Wall time per stage, in seconds (model loading is timed by the caller).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Timings {
    /// Tokenizing prompt and negative prompt.
    pub tokenize_s: f64,
    /// Text encoder calls, including tensor conversion.
    pub text_encoder_s: f64,
    /// UNet calls, including tensor conversion.
    pub unet_s: f64,
    /// Scheduler math, CFG combination and latent batching.
    pub scheduler_s: f64,
    /// VAE decoder call, including tensor conversion.
    pub vae_s: f64,
    /// Latents → RGB8.
    pub postprocess_s: f64,
    /// Sum of the time spent inside ONNX Runtime `run` calls only.
    pub ort_run_s: f64,
    /// Whole generation (excluding session creation).
    pub total_s: f64,
}

/// The result of one generation.
#[derive(Debug, Clone)]
pub struct Generation {
    /// Final latents before VAE scaling, `[1, 4, H/8, W/8]`: what the monitor compares.
    pub latents: Array4<f32>,
    /// The decoded image.
    pub image: RgbImage,
    /// sha256 of the initial noise (f32 little-endian, C order), before `init_noise_sigma`.
    pub initial_noise_sha256: String,
    /// The UNet timesteps in call order.
    pub timesteps: Vec<f64>,
    /// The 77 ids fed for the prompt.
    pub prompt_ids: Vec<u32>,
    /// The 77 ids fed for the negative prompt (`None` without CFG).
    pub negative_ids: Option<Vec<u32>>,
    /// Things the user should know (e.g. truncated prompts).
    pub warnings: Vec<String>,
    /// Stage timings.
    pub timings: Timings,
}

/// Runs one txt2img generation. `on_step(done, total)` is called after each UNet call.
pub fn generate(
    model: &mut SdModel,
    tokenizer: &ClipTokenizer,
    scheduler_config: &SchedulerConfig,
    params: &GenerateParams,
    noise: &mut dyn NoiseSource,
    on_step: &mut dyn FnMut(usize, usize),
) -> Result<Generation, PipelineError> {
    validate(params)?;
    check_step_noise(params.scheduler, noise)?;
    let total_start = Instant::now();
    model.take_run_time();
    let mut timings = Timings::default();
    let mut warnings = Vec::new();
    let cfg = params.guidance_scale > 1.0;

    let t0 = Instant::now();
    let prompt = tokenizer.encode(&params.prompt)?;
    if prompt.truncated {
        warnings.push(truncation_warning("prompt", prompt.untruncated_len));
    }
    let negative = if cfg {
        let enc = tokenizer.encode(params.negative_prompt.as_deref().unwrap_or(""))?;
        if enc.truncated {
            warnings.push(truncation_warning("negative prompt", enc.untruncated_len));
        }
        Some(enc)
    } else {
        None
    };
    timings.tokenize_s = secs(t0.elapsed());

    // diffusers encodes the two prompts in separate runs, then concatenates [negative, positive].
    let t0 = Instant::now();
    let pos_hidden = model.encode_text(&prompt.ids)?;
    let hidden: Array3<f32> = match &negative {
        Some(neg) => concat0(&[&model.encode_text(&neg.ids)?, &pos_hidden]),
        None => pos_hidden,
    };
    timings.text_encoder_s = secs(t0.elapsed());

    let mut sched = scheduler::build(params.scheduler, scheduler_config, params.steps)?;
    let noise_dtype = match model.io().unet_sample {
        FloatType::Float32 => NoiseDtype::F32,
        FloatType::Float16 => NoiseDtype::F16,
    };
    let shape = [
        1,
        4,
        (params.height / 8) as usize,
        (params.width / 8) as usize,
    ];
    let initial = noise
        .randn(&shape, noise_dtype)?
        .into_dimensionality::<Ix4>()
        .map_err(|e| {
            PipelineError::Invalid(format!("noise source returned the wrong shape: {e}"))
        })?;
    let initial_noise_sha256 = sha256_f32(initial.iter());
    let mut latents = initial * sched.init_noise_sigma();

    let timesteps = sched.timesteps().to_vec();
    let mut unet_time = Duration::ZERO;
    let mut sched_time = Duration::ZERO;
    for (i, &t) in timesteps.iter().enumerate() {
        let t0 = Instant::now();
        let input = if cfg {
            concat0(&[&latents, &latents])
        } else {
            latents.clone()
        };
        let input = sched.scale_model_input(input, i);
        sched_time += t0.elapsed();

        let t0 = Instant::now();
        let out = model.unet(&input, t, &hidden)?;
        unet_time += t0.elapsed();

        let t0 = Instant::now();
        let noise_pred = if cfg {
            guide(&out, params.guidance_scale)
        } else {
            out
        };
        latents = sched.step(&noise_pred, i, &latents, noise)?;
        sched_time += t0.elapsed();
        on_step(i + 1, timesteps.len());
    }
    timings.unet_s = secs(unet_time);
    timings.scheduler_s = secs(sched_time);

    let t0 = Instant::now();
    // diffusers multiplies by the Python float 1/0.18215, which numpy applies as a float32 scalar.
    let inv_scale = (1.0 / model.dir().vae_scaling_factor()) as f32;
    let decoded = model.decode(&(&latents * inv_scale))?;
    timings.vae_s = secs(t0.elapsed());

    let t0 = Instant::now();
    let image = latents_to_rgb(&decoded);
    timings.postprocess_s = secs(t0.elapsed());

    timings.ort_run_s = secs(model.take_run_time());
    timings.total_s = secs(total_start.elapsed());
    Ok(Generation {
        latents,
        image,
        initial_noise_sha256,
        timesteps,
        prompt_ids: prompt.ids,
        negative_ids: negative.map(|n| n.ids),
        warnings,
        timings,
    })
}

fn validate(p: &GenerateParams) -> Result<(), PipelineError> {
    for (name, v) in [("width", p.width), ("height", p.height)] {
        if v == 0 || v % 8 != 0 {
            return Err(PipelineError::Invalid(format!(
                "{name} {v} must be a positive multiple of 8"
            )));
        }
    }
    if p.steps == 0 {
        return Err(PipelineError::Invalid("steps must be at least 1".into()));
    }
    if !p.guidance_scale.is_finite() {
        return Err(PipelineError::Invalid(format!(
            "guidance scale {} is not a finite number",
            p.guidance_scale
        )));
    }
    Ok(())
}

/// Refuses an ancestral scheduler with a source that cannot supply diffusers' per-step noise:
/// such a run would produce an image, but one that no reference implementation reproduces.
pub fn check_step_noise(
    scheduler: SchedulerKind,
    noise: &dyn NoiseSource,
) -> Result<(), PipelineError> {
    if !scheduler.needs_step_noise() || noise.supports_step_noise() {
        return Ok(());
    }
    let why = match noise.name() {
        "numpy" => "diffusers' ONNX pipeline draws its per-step noise from torch's global RNG, \
                    not from the numpy generator, so numpy noise matches no reference"
            .to_string(),
        "file" => "a noise file holds only the initial latents, not the per-step noise".to_string(),
        other => format!("noise source {other} cannot continue diffusers' generator stream"),
    };
    Err(PipelineError::Invalid(format!(
        "scheduler {scheduler} needs per-step noise: {why}; use noise torch-cpu or torch-cuda"
    )))
}

/// `uncond + g * (text - uncond)` on a `[2, ...]` batch, in float32 as numpy does it.
fn guide(out: &Array4<f32>, g: f32) -> Array4<f32> {
    let uncond = out.slice(s![0..1, .., .., ..]);
    let text = out.slice(s![1..2, .., .., ..]);
    let mut r = &text - &uncond;
    r.mapv_inplace(|d| g * d);
    r += &uncond;
    debug_assert_eq!(r.len_of(Axis(0)), 1);
    r
}

fn truncation_warning(what: &str, n: usize) -> String {
    format!(
        "{what} is {n} tokens; CLIP keeps only the first 77 (75 + start/end), the rest is ignored"
    )
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// A model ready to generate: sessions, tokenizer and scheduler config, loaded once and reused
/// for every case (session creation dominates short runs).
pub struct LoadedModel {
    /// The ORT sessions.
    pub model: SdModel,
    /// The CLIP tokenizer from the model's `tokenizer/` folder.
    pub tokenizer: ClipTokenizer,
    /// `scheduler/scheduler_config.json`, SD1.5 defaults for missing fields.
    pub scheduler_config: SchedulerConfig,
    /// Seconds spent creating sessions and reading configs.
    pub load_s: f64,
}

impl LoadedModel {
    /// Opens and checks the folder, creates the three sessions, reads tokenizer and scheduler config.
    pub fn load(
        runtime: &super::runtime::Runtime,
        path: &std::path::Path,
    ) -> Result<Self, PipelineError> {
        let start = Instant::now();
        let dir = super::model::ModelDir::open(path)?;
        let tokenizer = ClipTokenizer::from_dir(&dir.tokenizer)?;
        let scheduler_config = SchedulerConfig::from_file(&dir.scheduler_config)?;
        let model = SdModel::load(runtime, dir)?;
        Ok(Self {
            model,
            tokenizer,
            scheduler_config,
            load_s: secs(start.elapsed()),
        })
    }

    /// Runs one generation with this model.
    pub fn generate(
        &mut self,
        params: &GenerateParams,
        noise: &mut dyn NoiseSource,
        on_step: &mut dyn FnMut(usize, usize),
    ) -> Result<Generation, PipelineError> {
        generate(
            &mut self.model,
            &self.tokenizer,
            &self.scheduler_config,
            params,
            noise,
            on_step,
        )
    }
}
