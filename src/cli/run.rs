//! `monitor run`: the daemon (see `crate::daemon`).

use anyhow::Result;
use clap::Args;

use super::config::ConfigFileArg;

/// Flags of `monitor run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    config: ConfigFileArg,
    /// Run one round of every case (check, alerts, remediation) and exit with `check`'s codes.
    #[arg(long)]
    once: bool,
}

/// Runs the daemon until SIGTERM (exit 0), or one round with `--once` (exit 0/1/2 as `check`).
pub fn run(a: RunArgs) -> Result<u8> {
    match crate::daemon::run(&a.config.path(), a.once)? {
        Some(status) => Ok(super::exit_code(status)),
        None => Ok(0),
    }
}
