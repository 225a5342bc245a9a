//! txt2img: prompt → text embeddings → scheduler loop over the UNet → VAE → RGB8, as diffusers'
//! `OnnxStableDiffusionPipeline` does it, step for step and in the same float32 arithmetic.

use std::time::{Duration, Instant};

use ndarray::{s, Array3, Array4, Axis, Ix4};
use serde::Serialize;

use super::image::{latents_to_rgb, RgbImage};
use super::model::{concat0, sha256_hex, FloatType, ModelError, SdModel};
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
    /// Each UNet call, in step order (a slow first call is warm-up, a slow tail is throttling).
    pub unet_step_s: Vec<f64>,
    /// Scheduler math, CFG combination and latent batching.
    pub scheduler_s: f64,
    /// VAE decoder call, including tensor conversion.
    pub vae_s: f64,
    /// VAE decoder on the latent tile ([`TILE`]), when it is not the whole latents (else 0, not
    /// written).
    #[serde(skip_serializing_if = "is_zero")]
    pub vae_tile_s: f64,
    /// Latents → RGB8.
    pub postprocess_s: f64,
    /// Sum of the time spent inside ONNX Runtime `run` calls only.
    pub ort_run_s: f64,
    /// Whole generation (excluding session creation).
    pub total_s: f64,
}

/// sha256 of one stage's output, in pipeline order: where two runs first part ways.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct StageHash {
    /// `tokens`, `text_embeddings`, `initial_noise`, `timesteps`, `step N noise_pred`, `step N latents`,
    /// `latents`, `decoded`, `image`.
    pub stage: String,
    /// sha256 of the stage's values (f32 little-endian, ids as u32 little-endian, RGB8 bytes).
    pub sha256: String,
}

/// The first stage at which two stage lists differ: its name, or `None` when they agree.
pub fn first_difference(a: &[StageHash], b: &[StageHash]) -> Option<String> {
    compare_stages(a, b).1
}

/// Compares the stages `a` and `b` both recorded, by name in `a`'s order: how many were
/// compared, and the first whose hash differs. A stage only one side has is not compared (a
/// replay records a subset of a generation's stages; a stage added to the pipeline is absent
/// from older records).
pub fn compare_stages(a: &[StageHash], b: &[StageHash]) -> (usize, Option<String>) {
    let (compared, differing) = differing_stages(a, b);
    (compared, differing.into_iter().next())
}

/// Like [`compare_stages`], but every differing stage, in `a`'s order. After the first, they
/// only mean something of their own where each network was fed the same inputs (a replay).
pub fn differing_stages(a: &[StageHash], b: &[StageHash]) -> (usize, Vec<String>) {
    let by_name: std::collections::HashMap<&str, &str> = b
        .iter()
        .map(|s| (s.stage.as_str(), s.sha256.as_str()))
        .collect();
    let mut compared = 0;
    let mut differing = Vec::new();
    for x in a {
        if let Some(y) = by_name.get(x.stage.as_str()) {
            compared += 1;
            if x.sha256 != *y {
                differing.push(x.stage.clone());
            }
        }
    }
    (compared, differing)
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
    /// sha256 of every stage's output (of batch element 0).
    pub stages: Vec<StageHash>,
    /// The stage outputs themselves (of batch element 0), for measuring how far two runs are
    /// apart where they first differ.
    pub tensors: StageTensors,
}

/// Stage outputs of batch element 0 that are small enough to keep (about 2.2 MB at 512² and 25
/// steps): everything [`replay`] needs to feed each network the exact inputs of a reference run,
/// and the latents after every step, to say when two runs moved apart.
#[derive(Debug, Clone, Default)]
pub struct StageTensors {
    /// Text-encoder output, `[2, 77, D]` (negative, prompt) under guidance, else `[1, 77, D]`.
    pub text_embeddings: Array3<f32>,
    /// The initial noise, `[1, 4, h, w]`, before `init_noise_sigma`.
    pub initial_noise: Array4<f32>,
    /// The guided UNet output of the first call, `[1, 4, h, w]` (absent in a run of 0 calls).
    pub first_noise_pred: Option<Array4<f32>>,
    /// The latents after each scheduler step, `[1, 4, h, w]` each.
    pub step_latents: Vec<Array4<f32>>,
}

/// A reference run's recorded inputs for [`replay`]: each network is fed these instead of what
/// the steps before it computed, so a difference is that network's alone.
#[derive(Debug, Clone, Copy)]
pub struct ReplayInputs<'a> {
    /// Final latents for the VAE decoder, `[1, 4, h, w]`.
    pub final_latents: &'a Array4<f32>,
    /// The prompt's 77 ids for the text encoder (else the tokenizer's).
    pub prompt_ids: Option<&'a [u32]>,
    /// The negative prompt's 77 ids (else the tokenizer's).
    pub negative_ids: Option<&'a [u32]>,
    /// Text embeddings for the UNet, shaped as [`StageTensors::text_embeddings`].
    pub text_embeddings: Option<&'a Array3<f32>>,
    /// Initial noise for the UNet, `[1, 4, h, w]`.
    pub initial_noise: Option<&'a Array4<f32>>,
    /// Decode only the latent tile (stage `decoded_tile`), not the whole latents: the reference
    /// recorded `decoded_tile`, and a full-size decode would cost more than the UNet call.
    pub decode_tile_only: bool,
}

impl<'a> ReplayInputs<'a> {
    /// Only the final latents: every other network input is recomputed.
    pub fn latents_only(final_latents: &'a Array4<f32>) -> Self {
        ReplayInputs {
            final_latents,
            prompt_ids: None,
            negative_ids: None,
            text_embeddings: None,
            initial_noise: None,
            decode_tile_only: false,
        }
    }
}

/// Side of the latent tile every generation also decodes (stage `decoded_tile`): the top-left
/// 32×32 latents, 256×256 pixels, or the whole latents when smaller. A quick check decodes only
/// the tile: at 512² a whole decode costs about two UNet calls on a CPU, the tile a quarter of
/// that. The VAE's kernels are then exercised at one size only; a change that shows only at other
/// sizes is left to the full check.
pub const TILE: usize = 32;

fn tile_of(latents: &Array4<f32>) -> Array4<f32> {
    let (h, w) = (latents.shape()[2], latents.shape()[3]);
    latents
        .slice(s![.., .., 0..h.min(TILE), 0..w.min(TILE)])
        .to_owned()
}

fn is_whole_tile(latents: &Array4<f32>) -> bool {
    latents.shape()[2] <= TILE && latents.shape()[3] <= TILE
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
    generate_batch(
        model,
        tokenizer,
        scheduler_config,
        params,
        &mut [noise],
        on_step,
    )
}

/// Runs a batch of `noises.len()` images of the same prompt, element `k` drawn from
/// `noises[k]` (diffusers with a list of generators), and returns element 0: what a service
/// batching requests would produce for the first one. The UNet runs on the whole batch (`2N`
/// under guidance); the text encoder runs once per prompt and the VAE decodes element 0 alone,
/// as diffusers' ONNX pipeline decodes one latent at a time.
pub fn generate_batch(
    model: &mut SdModel,
    tokenizer: &ClipTokenizer,
    scheduler_config: &SchedulerConfig,
    params: &GenerateParams,
    noises: &mut [&mut dyn NoiseSource],
    on_step: &mut dyn FnMut(usize, usize),
) -> Result<Generation, PipelineError> {
    run(
        model,
        tokenizer,
        scheduler_config,
        params,
        noises,
        on_step,
        None,
    )
}

/// Each network once, the cheap way to see whether any of them changes bits: the tokenizer on
/// the prompts, the text encoder on the reference's ids, the noise source, the first UNet call
/// (and scheduler step) on the reference's embeddings and initial noise, and the VAE decoder on
/// the reference's final latents. Inputs the reference did not record are recomputed (the
/// tokenizer's ids, the text encoder's embeddings, the drawn noise). The arithmetic is
/// [`generate`]'s, cut short: its stage hashes equal the same-named hashes of a full generation
/// whenever the inputs and kernels are the same. The returned generation's `latents` are the
/// given final latents; `stages` has no `latents` entry.
pub fn replay(
    model: &mut SdModel,
    tokenizer: &ClipTokenizer,
    scheduler_config: &SchedulerConfig,
    params: &GenerateParams,
    noise: &mut dyn NoiseSource,
    inputs: &ReplayInputs<'_>,
) -> Result<Generation, PipelineError> {
    run(
        model,
        tokenizer,
        scheduler_config,
        params,
        &mut [noise],
        &mut |_, _| {},
        Some(inputs),
    )
}

/// [`generate_batch`], or with `replay_inputs` [`replay`].
fn run(
    model: &mut SdModel,
    tokenizer: &ClipTokenizer,
    scheduler_config: &SchedulerConfig,
    params: &GenerateParams,
    noises: &mut [&mut dyn NoiseSource],
    on_step: &mut dyn FnMut(usize, usize),
    replay_inputs: Option<&ReplayInputs<'_>>,
) -> Result<Generation, PipelineError> {
    validate(params)?;
    let n = noises.len();
    if n == 0 {
        return Err(PipelineError::Invalid(
            "a batch needs at least one noise source".into(),
        ));
    }
    for noise in noises.iter() {
        check_step_noise(params.scheduler, &**noise)?;
    }
    if n > 1 && params.scheduler.needs_step_noise() {
        return Err(PipelineError::Invalid(format!(
            "scheduler {} draws per-step noise, which diffusers takes from each element's own \
             generator; batches of it are not reproduced here (use batch_size 1)",
            params.scheduler
        )));
    }
    let cfg = params.guidance_scale > 1.0;
    let unet_batch = if cfg { 2 * n } else { n };
    if let Some(fixed) = model.io().unet_batch {
        if fixed != unet_batch {
            return Err(PipelineError::Invalid(format!(
                "this UNet export has a fixed batch of {fixed} (input 'sample'), and a batch of \
                 {n}{} needs {unet_batch}; export the UNet with a dynamic batch axis",
                if cfg { " under guidance" } else { "" }
            )));
        }
    }
    let total_start = Instant::now();
    model.take_run_time();
    let mut timings = Timings::default();
    let mut warnings = Vec::new();
    let mut stages = Vec::new();
    let mut stage = |name: String, sha256: String| {
        stages.push(StageHash {
            stage: name,
            sha256,
        })
    };

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
    let ids: Vec<u32> = negative
        .iter()
        .flat_map(|n| n.ids.iter())
        .chain(prompt.ids.iter())
        .copied()
        .collect();
    stage("tokens".into(), sha256_u32(&ids));

    // diffusers encodes the two prompts in separate runs, then concatenates [negative, positive].
    let t0 = Instant::now();
    let replay = replay_inputs.copied();
    let pos_ids = replay_ids(replay.and_then(|r| r.prompt_ids), &prompt.ids, "prompt")?;
    let pos_hidden = model.encode_text(pos_ids)?;
    let hidden: Array3<f32> = match &negative {
        Some(neg) => {
            let neg_ids = replay_ids(replay.and_then(|r| r.negative_ids), &neg.ids, "negative")?;
            concat0(&[&model.encode_text(neg_ids)?, &pos_hidden])
        }
        None => pos_hidden,
    };
    timings.text_encoder_s = secs(t0.elapsed());
    stage("text_embeddings".into(), sha256_f32(hidden.iter()));
    // A replay keeps what its text encoder computed, and feeds the UNet the reference's.
    let mut tensors = StageTensors {
        text_embeddings: hidden.clone(),
        ..StageTensors::default()
    };
    let hidden = match replay.and_then(|r| r.text_embeddings) {
        Some(given) if given.shape() != hidden.shape() => {
            return Err(PipelineError::Invalid(format!(
                "replay text embeddings have shape {:?}, this case's {:?}",
                given.shape(),
                hidden.shape()
            )))
        }
        Some(given) => given.clone(),
        None => hidden,
    };
    // Each prompt's embedding repeated per element: [negative × N, positive × N].
    let hidden = if n == 1 {
        hidden
    } else {
        let rows: Vec<Array3<f32>> = hidden
            .outer_iter()
            .map(|row| row.insert_axis(Axis(0)).to_owned())
            .collect();
        let repeated: Vec<&Array3<f32>> = rows
            .iter()
            .flat_map(|r| std::iter::repeat_n(r, n))
            .collect();
        concat0(&repeated)
    };

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
    let mut drawn = Vec::with_capacity(n);
    for noise in noises.iter_mut() {
        drawn.push(
            noise
                .randn(&shape, noise_dtype)?
                .into_dimensionality::<Ix4>()
                .map_err(|e| {
                    PipelineError::Invalid(format!("noise source returned the wrong shape: {e}"))
                })?,
        );
    }
    let initial_noise_sha256 = sha256_f32(drawn[0].iter());
    stage("initial_noise".into(), initial_noise_sha256.clone());
    tensors.initial_noise = drawn[0].clone();
    if let Some(given) = replay.and_then(|r| r.initial_noise) {
        if given.shape() != drawn[0].shape() {
            return Err(PipelineError::Invalid(format!(
                "replay initial noise has shape {:?}, this case's {:?}",
                given.shape(),
                drawn[0].shape()
            )));
        }
        drawn[0] = given.clone();
    }
    let initial = if n == 1 {
        drawn.pop().expect("one element")
    } else {
        concat0(&drawn.iter().collect::<Vec<_>>())
    };
    let mut latents = initial * sched.init_noise_sigma();

    let timesteps = sched.timesteps().to_vec();
    // The schedule is the scheduler config's (and code's) output: a changed `steps_offset` or
    // `timestep_spacing` shows here, before any UNet call.
    stage(
        "timesteps".into(),
        sha256_hex(
            &timesteps
                .iter()
                .flat_map(|t| t.to_le_bytes())
                .collect::<Vec<u8>>(),
        ),
    );
    let mut unet_time = Duration::ZERO;
    let mut sched_time = Duration::ZERO;
    // A replay runs the first call only: enough to exercise the UNet and the scheduler's step.
    let calls = if replay.is_some() {
        timesteps.len().min(1)
    } else {
        timesteps.len()
    };
    for (i, &t) in timesteps.iter().enumerate().take(calls) {
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
        let took = t0.elapsed();
        unet_time += took;
        timings.unet_step_s.push(secs(took));

        let t0 = Instant::now();
        let noise_pred = if cfg {
            guide(&out, params.guidance_scale)
        } else {
            out
        };
        latents = sched.step(&noise_pred, i, &latents, &mut *noises[0])?;
        sched_time += t0.elapsed();
        let pred0 = noise_pred.slice(s![0..1, .., .., ..]);
        stage(
            format!("step {} noise_pred", i + 1),
            sha256_f32(pred0.iter()),
        );
        if i == 0 {
            tensors.first_noise_pred = Some(pred0.to_owned());
        }
        let latents0 = latents.slice(s![0..1, .., .., ..]);
        stage(
            format!("step {} latents", i + 1),
            sha256_f32(latents0.iter()),
        );
        tensors.step_latents.push(latents0.to_owned());
        on_step(i + 1, timesteps.len());
    }
    timings.unet_s = secs(unet_time);
    timings.scheduler_s = secs(sched_time);
    let latents: Array4<f32> = match replay.map(|r| r.final_latents) {
        Some(given) => {
            if given.shape() != latents.slice(s![0..1, .., .., ..]).shape() {
                return Err(PipelineError::Invalid(format!(
                    "replay latents have shape {:?}, this case's latents {:?}",
                    given.shape(),
                    latents.shape()
                )));
            }
            given.clone()
        }
        None => {
            let own = latents.slice(s![0..1, .., .., ..]).to_owned();
            stage("latents".into(), sha256_f32(own.iter()));
            own
        }
    };

    // diffusers multiplies by the Python float 1/0.18215, which numpy applies as a float32 scalar.
    let inv_scale = (1.0 / model.dir().vae_scaling_factor()) as f32;
    let tile_only = replay.is_some_and(|r| r.decode_tile_only);
    let latents = if tile_only {
        tile_of(&latents)
    } else {
        latents
    };
    let t0 = Instant::now();
    let decoded = model.decode(&(&latents * inv_scale))?;
    timings.vae_s = secs(t0.elapsed());
    let decoded_sha = sha256_f32(decoded.iter());
    if !tile_only {
        stage("decoded".into(), decoded_sha.clone());
    }

    let t0 = Instant::now();
    let image = latents_to_rgb(&decoded);
    timings.postprocess_s = secs(t0.elapsed());
    if !tile_only {
        stage("image".into(), sha256_hex(&image.pixels));
    }
    // The tile's decode, for a quick check to compare with. Latents no larger than the tile are
    // their own tile: the same call, the same bits.
    if tile_only || is_whole_tile(&latents) {
        stage("decoded_tile".into(), decoded_sha);
    } else {
        let t0 = Instant::now();
        let tile = model.decode(&(&tile_of(&latents) * inv_scale))?;
        timings.vae_tile_s = secs(t0.elapsed());
        stage("decoded_tile".into(), sha256_f32(tile.iter()));
    }

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
        stages,
        tensors,
    })
}

/// The ids the text encoder gets: a replay's recorded ones (77, as the tokenizer makes) or the
/// tokenizer's own.
fn replay_ids<'a>(
    given: Option<&'a [u32]>,
    own: &'a [u32],
    what: &str,
) -> Result<&'a [u32], PipelineError> {
    match given {
        Some(ids) if ids.len() != own.len() => Err(PipelineError::Invalid(format!(
            "replay {what} ids: {} of them, the tokenizer makes {}",
            ids.len(),
            own.len()
        ))),
        Some(ids) => Ok(ids),
        None => Ok(own),
    }
}

fn sha256_u32(ids: &[u32]) -> String {
    let bytes: Vec<u8> = ids.iter().flat_map(|i| i.to_le_bytes()).collect();
    sha256_hex(&bytes)
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

/// `uncond + g * (text - uncond)` on a `[2N, ...]` batch (`N` unconditional rows first), in
/// float32 as numpy does it.
fn guide(out: &Array4<f32>, g: f32) -> Array4<f32> {
    let n = out.len_of(Axis(0)) / 2;
    let uncond = out.slice(s![0..n, .., .., ..]);
    let text = out.slice(s![n..2 * n, .., .., ..]);
    let mut r = &text - &uncond;
    r.mapv_inplace(|d| g * d);
    r += &uncond;
    r
}

fn truncation_warning(what: &str, n: usize) -> String {
    format!(
        "{what} is {n} tokens; CLIP keeps only the first 77 (75 + start/end), the rest is ignored"
    )
}

fn is_zero(v: &f64) -> bool {
    *v == 0.0
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

    /// Runs a batch with this model and returns element 0 (see [`generate_batch`]).
    pub fn generate_batch(
        &mut self,
        params: &GenerateParams,
        noises: &mut [&mut dyn NoiseSource],
        on_step: &mut dyn FnMut(usize, usize),
    ) -> Result<Generation, PipelineError> {
        generate_batch(
            &mut self.model,
            &self.tokenizer,
            &self.scheduler_config,
            params,
            noises,
            on_step,
        )
    }

    /// Replays each network once with this model (see [`replay`]).
    pub fn replay(
        &mut self,
        params: &GenerateParams,
        noise: &mut dyn NoiseSource,
        inputs: &ReplayInputs<'_>,
    ) -> Result<Generation, PipelineError> {
        replay(
            &mut self.model,
            &self.tokenizer,
            &self.scheduler_config,
            params,
            noise,
            inputs,
        )
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

#[cfg(test)]
mod stage_tests {
    use super::*;

    fn s(stage: &str, sha: &str) -> StageHash {
        StageHash {
            stage: stage.into(),
            sha256: sha.into(),
        }
    }

    #[test]
    fn only_stages_both_sides_recorded_are_compared_in_the_first_side_s_order() {
        let base = [
            s("tokens", "a"),
            s("step 1 noise_pred", "b"),
            s("step 2 latents", "x"),
            s("decoded", "c"),
        ];
        let replay = [
            s("tokens", "a"),
            s("step 1 noise_pred", "b"),
            s("decoded", "c"),
        ];
        assert_eq!(compare_stages(&replay, &base), (3, None));
        let vae = [
            s("tokens", "a"),
            s("step 1 noise_pred", "b"),
            s("decoded", "z"),
        ];
        assert_eq!(compare_stages(&vae, &base), (3, Some("decoded".into())));
        // A stage the other side never recorded (added to the pipeline since) is skipped.
        let newer = [
            s("tokens", "a"),
            s("timesteps", "t"),
            s("step 1 noise_pred", "q"),
        ];
        assert_eq!(
            first_difference(&newer, &base),
            Some("step 1 noise_pred".into())
        );
        assert_eq!(first_difference(&base, &base), None);
        let two = [
            s("tokens", "A"),
            s("step 1 noise_pred", "b"),
            s("decoded", "C"),
        ];
        assert_eq!(
            differing_stages(&two, &base),
            (3, vec!["tokens".to_string(), "decoded".to_string()])
        );
    }
}
