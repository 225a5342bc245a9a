//! `monitor bench`: per-stage timings on a model, and the share of time spent outside ONNX Runtime.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use serde_json::json;

use super::RuntimeArgs;
use crate::sd::noise::{self, NoiseKind};
use crate::sd::pipeline::{GenerateParams, LoadedModel, Timings};
use crate::sd::runtime::Runtime;
use crate::sd::scheduler::SchedulerKind;

/// Flags of `monitor bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// SD1.5 ONNX export folder.
    #[arg(long, value_name = "DIR", default_value = "onnx/tiny-sd15")]
    model: PathBuf,
    /// Inference steps.
    #[arg(long, default_value_t = 25)]
    steps: usize,
    /// Image width and height.
    #[arg(long, default_value_t = 256)]
    size: u32,
    /// Scheduler.
    #[arg(long, default_value = "pndm")]
    scheduler: SchedulerKind,
    /// Timed generations after one warm-up.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    runs: u64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    runtime: RuntimeArgs,
}

/// Runs the command.
pub fn run(a: BenchArgs) -> Result<u8> {
    let runtime = Runtime::init(a.runtime.ort_lib.as_deref(), a.runtime.settings())?;
    let mut loaded = LoadedModel::load(&runtime, &a.model)
        .with_context(|| format!("loading model {}", a.model.display()))?;
    let params = GenerateParams {
        prompt: "a photograph of an astronaut riding a horse".into(),
        negative_prompt: Some("blurry".into()),
        steps: a.steps,
        guidance_scale: 7.5,
        width: a.size,
        height: a.size,
        scheduler: a.scheduler,
    };
    let mut runs: Vec<Timings> = Vec::new();
    for i in 0..=a.runs {
        let mut src = noise::build(NoiseKind::Numpy, 42, None)?;
        let gen = loaded
            .generate(&params, src.as_mut(), &mut |_, _| {})
            .context("benchmark generation")?;
        if i > 0 {
            runs.push(gen.timings);
        }
    }
    let med = |f: fn(&Timings) -> f64| median(runs.iter().map(f).collect());
    let total = med(|t| t.total_s);
    let ort = med(|t| t.ort_run_s);
    let outside = med(|t| t.total_s - t.ort_run_s);
    let stages = [
        ("tokenize", med(|t| t.tokenize_s)),
        ("text_encoder", med(|t| t.text_encoder_s)),
        ("unet", med(|t| t.unet_s)),
        ("scheduler", med(|t| t.scheduler_s)),
        ("vae", med(|t| t.vae_s)),
        ("postprocess", med(|t| t.postprocess_s)),
    ];
    if a.json {
        let mut v = json!({
            "model": a.model, "steps": a.steps, "size": a.size, "scheduler": a.scheduler.to_string(),
            "runs": a.runs, "ort_version": runtime.info().version, "threads": a.runtime.threads,
            "load_s": loaded.load_s, "total_s_median": total, "ort_run_s_median": ort,
            "outside_ort_s_median": outside, "outside_ort_share": outside / total,
        });
        for (name, s) in stages {
            v[format!("{name}_s_median")] = json!(s);
        }
        println!("{v}");
    } else {
        println!(
            "model {}  {}x{}  {} steps {}  ORT {}  median of {} runs",
            a.model.display(),
            a.size,
            a.size,
            a.steps,
            a.scheduler,
            runtime.info().version,
            a.runs
        );
        println!("{:<16}{:>12}{:>9}", "stage", "seconds", "share");
        println!("{:<16}{:>12.4}", "load (once)", loaded.load_s);
        for (name, s) in stages {
            println!("{:<16}{:>12.4}{:>8.1}%", name, s, 100.0 * s / total);
        }
        println!("{:<16}{:>12.4}{:>8.1}%", "total", total, 100.0);
        println!(
            "{:<16}{:>12.4}{:>8.1}%",
            "inside ORT run",
            ort,
            100.0 * ort / total
        );
        println!(
            "{:<16}{:>12.4}{:>8.2}%",
            "outside ORT",
            outside,
            100.0 * outside / total
        );
    }
    Ok(0)
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}
