//! `monitor alert test` and `monitor alerts` (being written).

use anyhow::Result;
use clap::{Args, Subcommand};
use std::path::PathBuf;

/// `monitor alert ...`.
#[derive(Debug, Args)]
pub struct AlertArgs {
    #[command(subcommand)]
    command: AlertCommand,
}

#[derive(Debug, Subcommand)]
enum AlertCommand {
    /// Send a test message to every configured channel and report each outcome.
    Test {
        /// Config file (else $MONITOR_CONFIG, else configs/monitor.yaml).
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

/// `monitor alerts`.
#[derive(Debug, Args)]
pub struct AlertsArgs {
    /// Config file (else $MONITOR_CONFIG, else configs/monitor.yaml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// How many alerts to show.
    #[arg(long, default_value_t = 20)]
    limit: usize,
    /// JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Runs `monitor alert test`.
pub fn run_alert(args: AlertArgs) -> Result<u8> {
    let _ = args;
    anyhow::bail!("not yet implemented")
}

/// Runs `monitor alerts`.
pub fn run_alerts(args: AlertsArgs) -> Result<u8> {
    let _ = (args.config, args.limit, args.json);
    anyhow::bail!("not yet implemented")
}
