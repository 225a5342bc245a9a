//! `monitor config validate`: load and check a config file without touching ONNX Runtime.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};

use crate::config::{config_path, Config};

/// `--config FILE`, shared by every command that reads the config file.
#[derive(Debug, Clone, Args)]
pub struct ConfigFileArg {
    /// Config file (default: $MONITOR_CONFIG, else configs/monitor.yaml).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

impl ConfigFileArg {
    /// The file to read: `--config`, else `$MONITOR_CONFIG`, else `configs/monitor.yaml`.
    pub fn path(&self) -> PathBuf {
        config_path(self.config.as_deref())
    }
}

/// `monitor config ...`.
#[derive(Debug, Args)]
pub struct ConfigArgs {
    #[command(subcommand)]
    command: ConfigCommand,
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Check the config file (schema, values, model folder, sizes the UNet can run) and print a one-line summary.
    Validate(ValidateArgs),
}

/// Flags of `monitor config validate`.
#[derive(Debug, Args)]
pub struct ValidateArgs {
    #[command(flatten)]
    config: ConfigFileArg,
}

/// Runs the command.
pub fn run(a: ConfigArgs) -> Result<u8> {
    match a.command {
        ConfigCommand::Validate(v) => validate(v),
    }
}

fn validate(a: ValidateArgs) -> Result<u8> {
    let path = a.config.path();
    let config = Config::load(&path)?;
    // What the model itself cannot run; `check` would make each of these that case's error.
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    if let Some(first) = config.model_problems(&text).into_iter().next() {
        anyhow::bail!("{first}");
    }
    for w in daemon_warnings(&config) {
        eprintln!("monitor: warning: {}: {w}", path.display());
    }
    let names: Vec<&str> = config.cases.iter().map(|c| c.name.as_str()).collect();
    println!(
        "{}: ok ({} case{}: {}; model {})",
        path.display(),
        names.len(),
        if names.len() == 1 { "" } else { "s" },
        names.join(", "),
        config.model.path.display()
    );
    Ok(0)
}

/// What would stop or weaken `monitor run` without making the config invalid for `check`: a
/// secret that cannot be resolved here, a restart unit systemd does not know.
fn daemon_warnings(config: &Config) -> Vec<String> {
    let mut w = Vec::new();
    let dir = config.source.parent().unwrap_or(std::path::Path::new("."));
    if let Err(e) = crate::alert::build_channels(&config.alerts, dir) {
        w.push(format!(
            "{e} (`monitor run` and `monitor alert test` will refuse to start)"
        ));
    }
    if let Some(r) = &config.remediation {
        if let crate::remediate::RestartTarget::Unit(unit) = &r.restart {
            match crate::remediate::unit_exists(unit) {
                Some(false) => w.push(format!(
                    "remediation.restart.unit: systemd has no unit {unit:?}; a restart would fail"
                )),
                None => w.push(format!(
                    "remediation.restart.unit: cannot ask systemd whether unit {unit:?} exists (is systemd running?)"
                )),
                Some(true) => {}
            }
        }
    }
    if config.schedule.is_none() && config.cases.iter().all(|c| c.schedule.is_none()) {
        w.push("no schedule: fine for `monitor check`, but `monitor run` needs `schedule:`".into());
    }
    w
}
