//! `monitor run`: the daemon (being written).

use anyhow::Result;
use clap::Args;

use super::config::ConfigFileArg;

/// Flags of `monitor run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    config: ConfigFileArg,
    /// Run one scheduled round (check, alerts, remediation) and exit with `check`'s exit code.
    #[arg(long)]
    once: bool,
}

/// Runs the daemon.
pub fn run(a: RunArgs) -> Result<u8> {
    let _ = (a.config, a.once);
    anyhow::bail!("not yet implemented")
}
