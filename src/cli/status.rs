//! `monitor status` (being written).

use anyhow::Result;
use clap::Args;

use super::config::ConfigFileArg;

/// Flags of `monitor status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    config: ConfigFileArg,
    /// JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// Prints the status.
pub fn run(a: StatusArgs) -> Result<u8> {
    let _ = (a.config, a.json);
    anyhow::bail!("not yet implemented")
}
