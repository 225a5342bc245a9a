//! `monitor baselines list|show`: what the baseline store holds.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use serde_json::Value;

use crate::baseline::{BaselineStore, NewBaseline};
use crate::generation::{Metadata, ParametersRecord};
use crate::sd::image::RgbImage;

/// Flags of `monitor baselines`.
#[derive(Debug, Args)]
pub struct BaselinesArgs {
    #[command(subcommand)]
    command: BaselinesCommand,
}

#[derive(Debug, Subcommand)]
enum BaselinesCommand {
    /// One line per case: current version, when, who, why, number of versions.
    List(ListArgs),
    /// One case's baseline (the current version unless --version): parameters, model, runtime.
    Show(ShowArgs),
    /// Test helper: write COUNT synthetic baselines to CASE, one after another.
    #[command(hide = true)]
    StressWrite(StressArgs),
}

/// Flags of `monitor baselines list`.
#[derive(Debug, Args)]
struct ListArgs {
    /// Baseline store folder.
    #[arg(long, value_name = "DIR")]
    baselines: Option<PathBuf>,
    #[command(flatten)]
    config: super::config::ConfigFileArg,
}

/// Flags of `monitor baselines show`.
#[derive(Debug, Args)]
struct ShowArgs {
    /// Case name.
    case: String,
    /// Version number (default: the current one).
    #[arg(long, value_name = "N")]
    version: Option<u32>,
    /// Baseline store folder.
    #[arg(long, value_name = "DIR")]
    baselines: Option<PathBuf>,
    #[command(flatten)]
    config: super::config::ConfigFileArg,
    /// Print the full metadata.json instead of a summary.
    #[arg(long)]
    json: bool,
}

/// Flags of the hidden `monitor baselines stress-write`.
#[derive(Debug, Args)]
struct StressArgs {
    #[arg(long, value_name = "DIR")]
    baselines: PathBuf,
    #[arg(long)]
    case: String,
    #[arg(long, default_value_t = 1)]
    count: u32,
    /// Latent height and width (the image is 8x that).
    #[arg(long, default_value_t = 16)]
    latent_size: usize,
}

/// Runs the command.
pub fn run(a: BaselinesArgs) -> Result<u8> {
    match a.command {
        BaselinesCommand::List(a) => list(a),
        BaselinesCommand::Show(a) => show(a),
        BaselinesCommand::StressWrite(a) => stress_write(a),
    }
}

/// `--baselines`, else the config's `storage.baselines`.
fn store_dir(explicit: Option<PathBuf>, config: &super::config::ConfigFileArg) -> Result<PathBuf> {
    match explicit {
        Some(d) => Ok(d),
        None => Ok(crate::config::Config::load(&config.path())?
            .storage
            .baselines),
    }
}

fn list(a: ListArgs) -> Result<u8> {
    let dir = store_dir(a.baselines, &a.config)?;
    // A mistyped folder must not look like an empty store.
    if !dir.is_dir() {
        anyhow::bail!("{}: no such baseline folder", dir.display());
    }
    let store = BaselineStore::new(&dir);
    let cases = store
        .cases()
        .with_context(|| format!("listing baselines in {}", dir.display()))?;
    if cases.is_empty() {
        println!("no baselines in {}", dir.display());
        return Ok(0);
    }
    let mut rows = vec![[
        "CASE".to_string(),
        "CURRENT".to_string(),
        "VERSIONS".to_string(),
        "CREATED".to_string(),
        "WHO".to_string(),
        "WHY".to_string(),
    ]];
    let mut failed = false;
    for case in &cases {
        // One damaged case must not hide the others: report it and go on.
        let history = match store.versions(case) {
            Ok(h) => h,
            Err(e) => {
                eprintln!("monitor: error: listing case {case}: {e}");
                failed = true;
                continue;
            }
        };
        let Some(cur) = history.last() else { continue };
        let why = match cur.restored_from {
            Some(v) => format!("{} (restores v{v:04})", cur.why),
            None => cur.why.clone(),
        };
        rows.push([
            case.clone(),
            format!("v{:04}", cur.version),
            history.len().to_string(),
            cur.created_at.clone(),
            cur.who.clone(),
            why,
        ]);
    }
    let widths: Vec<usize> = (0..5)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    for r in &rows {
        let mut line = String::new();
        for (i, w) in widths.iter().enumerate() {
            line.push_str(&format!("{:<w$}  ", r[i]));
        }
        line.push_str(&r[5]);
        println!("{}", line.trim_end());
    }
    Ok(if failed { super::EXIT_ERROR } else { 0 })
}

fn show(a: ShowArgs) -> Result<u8> {
    let dir = store_dir(a.baselines.clone(), &a.config)?;
    let store = BaselineStore::new(&dir);
    let context = || format!("showing baseline {} in {}", a.case, dir.display());
    let version = match a.version {
        Some(v) => v,
        None => store
            .latest_version(&a.case)
            .with_context(context)?
            .ok_or_else(|| crate::baseline::BaselineError::NoSuchCase {
                case: a.case.clone(),
                path: dir.join(&a.case),
            })
            .with_context(context)?,
    };
    let b = store.load(&a.case, version).with_context(context)?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&b.metadata).unwrap_or_default()
        );
        return Ok(0);
    }
    let count = store.version_numbers(&a.case).with_context(context)?.len();
    let m = &b.metadata;
    let bl = m.baseline.clone().unwrap_or_default();
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_string(),
        other => other.to_string(),
    };
    let or_dash = |s: Option<&String>| s.map_or("-".to_string(), String::clone);
    // Blocks whose every field is listed go through their JSON form, which keeps the file's
    // order and includes fields this monitor does not know.
    let fields = |v: Value, skip: &str| -> Vec<String> {
        v.as_object()
            .map(|o| {
                o.iter()
                    .filter(|(k, _)| k.as_str() != skip)
                    .map(|(k, v)| format!("{k}={}", text(v)))
                    .collect()
            })
            .unwrap_or_default()
    };
    println!("case:       {}", a.case);
    let restored = match bl.restored_from {
        Some(v) => format!(", restores v{v:04}"),
        None => String::new(),
    };
    println!("version:    v{version:04} (of {count}{restored})");
    println!("folder:     {}", b.dir.display());
    println!(
        "created:    {} by {}",
        or_dash(bl.created_at.as_ref()),
        or_dash(bl.who.as_ref())
    );
    println!("why:        {}", or_dash(bl.why.as_ref()));
    if let Some(p) = &m.parameters {
        let parts = fields(serde_json::to_value(p).unwrap_or_default(), "");
        println!("parameters: {}", parts.join(" "));
    }
    let model = m.model.clone().unwrap_or_default();
    println!(
        "model:      {} ({} files with sha256)",
        or_dash(model.path.as_ref()),
        m.model_files().len()
    );
    if let Some(n) = &m.noise {
        println!(
            "noise:      {} seed {} initial sha256 {}",
            or_dash(n.source.as_ref()),
            n.seed.map_or("-".to_string(), |s| s.to_string()),
            or_dash(n.initial_sha256.as_ref())
        );
    }
    let ort_version = m.onnxruntime.as_ref().and_then(|o| o.version.as_ref());
    println!("onnxruntime: {}", or_dash(ort_version));
    match &m.execution_provider {
        Some(ep) => {
            let parts = fields(
                serde_json::to_value(ep).unwrap_or_default(),
                "execution_provider",
            );
            println!(
                "ep:         {} ({})",
                or_dash(ep.execution_provider.as_ref()),
                parts.join(" ")
            );
        }
        None => println!("ep:         -"),
    }
    if let Some(env) = &m.environment {
        println!(
            "environment: {}",
            serde_json::to_string(env).unwrap_or_default()
        );
    }
    println!(
        "outputs:    {}, image {}x{}",
        b.latents
            .as_ref()
            .map_or("no latents (a service's image)".to_string(), |l| format!(
                "latents {:?} float32",
                l.shape
            )),
        b.image.width,
        b.image.height
    );
    Ok(0)
}

/// Writes synthetic baselines for the crash test (`tests/baseline.rs`).
fn stress_write(a: StressArgs) -> Result<u8> {
    let store = BaselineStore::new(&a.baselines);
    let n = a.latent_size;
    let shape = [1, 4, n, n];
    for i in 0..a.count {
        let latents: Vec<f32> = (0..4 * n * n)
            .map(|k| ((k as u32).wrapping_mul(2654435761) ^ i) as f32 / u32::MAX as f32)
            .collect();
        let side = (n * 8) as u32;
        let pixels: Vec<u8> = (0..(side * side * 3))
            .map(|k| (k.wrapping_mul(31) ^ i.wrapping_mul(7)) as u8)
            .collect();
        let image = RgbImage {
            width: side,
            height: side,
            pixels,
        };
        let v = store.write(
            &a.case,
            &NewBaseline {
                latents: Some(&crate::generation::Latents {
                    values: latents,
                    shape: shape.to_vec(),
                }),
                image: &image,
                metadata: synthetic_metadata(i),
                stages: None,
                who: "stress-write".to_string(),
                why: format!("write {i}"),
                restored_from: None,
            },
        )?;
        println!("v{v:04}");
    }
    Ok(0)
}

/// Metadata of a synthetic baseline: marked as such, and numbered.
fn synthetic_metadata(i: u32) -> Metadata {
    let mut parameters = ParametersRecord::default();
    parameters.extra.insert("synthetic".into(), true.into());
    parameters.extra.insert("i".into(), i.into());
    Metadata {
        parameters: Some(parameters),
        ..Metadata::default()
    }
}
