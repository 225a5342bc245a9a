//! `monitor generate`: one generation, written as latents.npy + image.png + metadata.json.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use super::RuntimeArgs;
use crate::case::{write_generation, CaseRunner, CaseSpec};
use crate::fingerprint;
use crate::limits::Limits;
use crate::sd::noise::NoiseKind;
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
    /// Largest width or height allowed, in pixels.
    #[arg(long, default_value_t = Limits::default().max_width, value_name = "N")]
    max_side: u32,
    /// Largest width × height allowed.
    #[arg(long, default_value_t = Limits::default().max_pixels, value_name = "N")]
    max_pixels: u64,
    /// Memory the generation may use, in GiB (default: what the host has available).
    #[arg(long, value_name = "GIB")]
    memory_gib: Option<f64>,
    /// Output folder (created if missing; files in it are replaced atomically).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

/// Runs the command.
pub fn run(a: GenerateArgs) -> Result<u8> {
    let case = CaseSpec {
        name: "generate".into(),
        prompt: a.prompt,
        negative_prompt: a.negative_prompt,
        seed: a.seed,
        steps: a.steps,
        guidance_scale: a.guidance,
        width: a.width,
        height: a.height,
        scheduler: a.scheduler,
        noise: a.noise,
        noise_file: a.noise_file,
        karras: a.karras,
        batch_size: 1,
    };
    // Fail before the (slow) model load.
    case.check().context("--karras")?;
    let limits = Limits {
        max_width: a.max_side,
        max_height: a.max_side,
        max_pixels: a.max_pixels,
        memory_gib: a.memory_gib,
    };
    limits
        .check_size_named(
            a.width,
            a.height,
            ["--max-side", "--max-side", "--max-pixels"],
        )
        .map_err(|(_, e)| anyhow::anyhow!(e))?;
    if let Ok(g) = crate::sd::onnx_graph::scan_unet(&a.model.join("unet/model.onnx")) {
        g.check_size(a.width, a.height)
            .map_err(|e| anyhow::anyhow!("{}: {e}", a.model.display()))?;
    }
    let runtime = Runtime::init(a.runtime.ort_lib.as_deref(), a.runtime.settings())?;
    let mut runner = CaseRunner::load(&runtime, &a.model, fingerprint::collect(), &limits)?;
    let (gen, meta) = {
        let mut bar = super::progress::StepBar::new("generating");
        runner.run(&case, &mut |done, total| bar.update(done, total))?
    };
    for w in &gen.warnings {
        eprintln!("monitor: warning: {w}");
    }
    write_generation(&a.out, &gen, &meta)?;
    println!(
        "wrote {} ({}x{}, {} UNet calls, {:.2}s generation + {:.2}s load)",
        a.out.display(),
        gen.image.width,
        gen.image.height,
        gen.timesteps.len(),
        gen.timings.total_s,
        runner.load_s()
    );
    Ok(0)
}
