//! `monitor generate`: one generation, written as latents.npy + image.png + metadata.json.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::json;

use super::RuntimeArgs;
use crate::fsutil::atomic_write;
use crate::sd::model::hex;
use crate::sd::noise::{self, NoiseKind};
use crate::sd::npy;
use crate::sd::pipeline::{GenerateParams, Generation, LoadedModel};
use crate::sd::runtime::Runtime;
use crate::sd::scheduler::SchedulerKind;

/// Flags of `monitor generate` (names are stable: scripts call them).
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// SD1.5 ONNX export folder (model_index.json, text_encoder/, unet/, vae_decoder/, ...).
    #[arg(long, value_name = "DIR")]
    model: PathBuf,
    /// Prompt.
    #[arg(long)]
    prompt: String,
    /// Negative prompt (default: none, i.e. "" under guidance).
    #[arg(long)]
    negative_prompt: Option<String>,
    /// Seed of the noise source.
    #[arg(long)]
    seed: u64,
    /// Inference steps.
    #[arg(long, default_value_t = 50)]
    steps: usize,
    /// Classifier-free guidance scale (CFG only when > 1).
    #[arg(long, default_value_t = 7.5)]
    guidance: f32,
    /// Width in pixels (multiple of 8).
    #[arg(long, default_value_t = 512)]
    width: u32,
    /// Height in pixels (multiple of 8).
    #[arg(long, default_value_t = 512)]
    height: u32,
    /// Scheduler: pndm, ddim, euler, euler-a, lms, dpmpp-2m.
    #[arg(long, default_value = "pndm")]
    scheduler: SchedulerKind,
    /// Karras sigmas: sets `use_karras_sigmas` on the model's scheduler config for this run
    /// (euler, lms and dpmpp-2m only, the diffusers classes that have the option).
    #[arg(long)]
    karras: bool,
    /// Noise source: numpy, torch-cpu, torch-cuda, file.
    #[arg(long, default_value = "numpy")]
    noise: NoiseKind,
    /// The .npy file for `--noise file`.
    #[arg(long, value_name = "FILE")]
    noise_file: Option<PathBuf>,
    #[command(flatten)]
    runtime: RuntimeArgs,
    /// Output folder (created if missing; files in it are replaced atomically).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

/// Runs the command.
pub fn run(a: GenerateArgs) -> Result<u8> {
    if a.karras && !a.scheduler.supports_karras() {
        bail!(
            "--karras: scheduler {} has no Karras sigmas option in diffusers; use euler, lms or dpmpp-2m",
            a.scheduler
        );
    }
    let runtime = Runtime::init(a.runtime.ort_lib.as_deref(), a.runtime.settings())?;
    let mut loaded = LoadedModel::load(&runtime, &a.model)
        .with_context(|| format!("loading model {}", a.model.display()))?;
    if a.karras {
        loaded.scheduler_config.use_karras_sigmas = true;
    }
    let hash_start = std::time::Instant::now();
    let files = loaded.model.dir().file_hashes()?;
    let hash_s = hash_start.elapsed().as_secs_f64();
    let params = GenerateParams {
        prompt: a.prompt.clone(),
        negative_prompt: a.negative_prompt.clone(),
        steps: a.steps,
        guidance_scale: a.guidance,
        width: a.width,
        height: a.height,
        scheduler: a.scheduler,
    };
    let mut source = noise::build(a.noise, a.seed, a.noise_file.as_deref())?;
    let gen = {
        let mut bar = super::progress::StepBar::new("generating");
        loaded
            .generate(&params, source.as_mut(), &mut |done, total| {
                bar.update(done, total)
            })
            .with_context(|| format!("generating with {}", a.model.display()))?
    };
    for w in &gen.warnings {
        eprintln!("monitor: warning: {w}");
    }
    let meta = metadata(&a, &runtime, &loaded, &files, hash_s, &gen);
    write_outputs(&a.out, &gen, &meta)?;
    println!(
        "wrote {} ({}x{}, {} UNet calls, {:.2}s generation + {:.2}s load)",
        a.out.display(),
        gen.image.width,
        gen.image.height,
        gen.timesteps.len(),
        gen.timings.total_s,
        loaded.load_s
    );
    Ok(0)
}

fn metadata(
    a: &GenerateArgs,
    runtime: &Runtime,
    loaded: &LoadedModel,
    files: &std::collections::BTreeMap<String, String>,
    hash_s: f64,
    gen: &Generation,
) -> serde_json::Value {
    let mut timings = serde_json::to_value(&gen.timings).unwrap_or_default();
    if let Some(t) = timings.as_object_mut() {
        t.insert("load_s".into(), json!(loaded.load_s));
        t.insert("hash_s".into(), json!(hash_s));
    }
    json!({
        "monitor_version": env!("CARGO_PKG_VERSION"),
        "created_at": super::progress::utc_now_rfc3339(),
        "parameters": {
            "prompt": a.prompt,
            "negative_prompt": a.negative_prompt,
            "seed": a.seed,
            "steps": a.steps,
            "guidance_scale": a.guidance,
            "width": a.width,
            "height": a.height,
            "scheduler": a.scheduler.to_string(),
            "karras_sigmas": a.scheduler.supports_karras() && loaded.scheduler_config.use_karras_sigmas,
            "noise": a.noise.to_string(),
            "noise_file": a.noise_file,
        },
        "model": {
            "path": a.model,
            "io": loaded.model.io(),
            "vae_scaling_factor": loaded.model.dir().vae_scaling_factor(),
            "files_sha256": files,
        },
        "tokens": {"prompt": gen.prompt_ids, "negative_prompt": gen.negative_ids},
        "noise": {"source": a.noise.to_string(), "seed": a.seed, "initial_sha256": gen.initial_noise_sha256},
        "timesteps": gen.timesteps,
        "onnxruntime": runtime.info(),
        "execution_provider": runtime.settings(),
        "timings": timings,
        "warnings": gen.warnings,
    })
}

fn write_outputs(out: &Path, gen: &Generation, meta: &serde_json::Value) -> Result<()> {
    std::fs::create_dir_all(out)
        .with_context(|| format!("creating output folder {}", out.display()))?;
    let mut npy_bytes = Vec::new();
    let shape: Vec<usize> = gen.latents.shape().to_vec();
    let values: Vec<f32> = gen.latents.iter().copied().collect();
    npy::write_npy_f32(&mut npy_bytes, &shape, &values).context("encoding latents.npy")?;
    let png = gen.image.to_png().context("encoding image.png")?;
    let mut meta = meta.clone();
    meta["outputs"] = json!({
        "latents": {"file": "latents.npy", "shape": shape, "dtype": "float32", "sha256": sha256(&npy_bytes)},
        "image": {"file": "image.png", "width": gen.image.width, "height": gen.image.height, "sha256_rgb": sha256(&gen.image.pixels)},
    });
    for (name, bytes) in [
        ("latents.npy", npy_bytes),
        ("image.png", png),
        ("metadata.json", pretty(&meta)),
    ] {
        let p = out.join(name);
        atomic_write(&p, &bytes).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

fn pretty(v: &serde_json::Value) -> Vec<u8> {
    let mut s = serde_json::to_vec_pretty(v).unwrap_or_default();
    s.push(b'\n');
    s
}

fn sha256(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex(&Sha256::digest(bytes))
}
