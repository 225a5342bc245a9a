//! `monitor service probe`: send the configured cases to the generation service (`service:`)
//! and show what it returns — the image's pixel hash and size, and what the service says made it.
//! The way to check the URL, auth, workflow template and sampler names before relying on them.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use serde_json::json;

use crate::config::Config;
use crate::sd::model::sha256_hex;
use crate::service::ServiceRequest;

/// Flags of `monitor service`.
#[derive(Debug, Args)]
pub struct ServiceArgs {
    #[command(subcommand)]
    command: ServiceCommand,
}

#[derive(Debug, Subcommand)]
enum ServiceCommand {
    /// Send each case (default all) to the service once; exit 0 when every one returned a PNG.
    Probe(ProbeArgs),
}

/// Flags of `monitor service probe`.
#[derive(Debug, Args)]
struct ProbeArgs {
    /// Only this case (repeatable).
    #[arg(long = "case", value_name = "NAME")]
    cases: Vec<String>,
    /// Write `<DIR>/<case>/image.png` and `info.json`.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// One JSON document instead of the table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    config: super::config::ConfigFileArg,
}

/// Runs the command.
pub fn run(a: ServiceArgs) -> Result<u8> {
    match a.command {
        ServiceCommand::Probe(p) => probe(p),
    }
}

fn probe(a: ProbeArgs) -> Result<u8> {
    let config = Config::load(&a.config.path())?;
    let service = crate::service::cases::connect(&config).map_err(anyhow::Error::msg)?;
    let cases = crate::check::select_cases(&config, &a.cases)?;
    let mut code = super::EXIT_OK;
    let mut docs = Vec::new();
    if !a.json {
        println!(
            "{:<20} {:<10} {:<20} {:>10}  what the service says",
            "case", "size", "pixels sha256", "time"
        );
    }
    for case in cases {
        let req = ServiceRequest::of(case);
        match service.generate(&req) {
            Ok(img) => {
                let sha = sha256_hex(&img.image.pixels);
                if let Some(out) = &a.out {
                    let d = out.join(&case.name);
                    std::fs::create_dir_all(&d)
                        .with_context(|| format!("creating {}", d.display()))?;
                    let png = img.image.to_png().context("encoding image.png")?;
                    crate::fsutil::atomic_write(&d.join("image.png"), &png)
                        .with_context(|| format!("writing {}", d.join("image.png").display()))?;
                    let info = serde_json::to_vec_pretty(
                        &json!({"sampler": img.sampler, "info": img.info}),
                    )?;
                    crate::fsutil::atomic_write(&d.join("info.json"), &info)
                        .with_context(|| format!("writing {}", d.join("info.json").display()))?;
                }
                if (img.image.width, img.image.height) != (case.width, case.height) {
                    eprintln!(
                        "monitor: warning: case {}: the service returned {}x{}, the case asks for {}x{}",
                        case.name, img.image.width, img.image.height, case.width, case.height
                    );
                }
                if a.json {
                    docs.push(json!({"case": case.name, "ok": true, "width": img.image.width, "height": img.image.height,
                        "pixels_sha256": sha, "sampler": img.sampler, "seconds": img.seconds, "info": img.info}));
                } else {
                    let said: Vec<String> =
                        img.info.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    println!(
                        "{:<20} {:<10} {:<20} {:>9.2}s  sampler {:?}{}{}",
                        case.name,
                        format!("{}x{}", img.image.width, img.image.height),
                        &sha[..16],
                        img.seconds,
                        img.sampler,
                        if said.is_empty() { "" } else { "; " },
                        said.join(", ")
                    );
                }
            }
            Err(e) => {
                code = super::EXIT_ERROR;
                if a.json {
                    docs.push(json!({"case": case.name, "ok": false, "error": e}));
                } else {
                    println!("{:<20} error: {e}", case.name);
                }
            }
        }
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&docs)?);
    }
    Ok(code)
}
