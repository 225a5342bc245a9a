//! `monitor worker` (hidden): the child process that runs model cases for check and rebaseline.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

/// Flags of the worker; only `monitor` itself starts it.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// The job file written by the parent.
    #[arg(long)]
    job: PathBuf,
    /// Folder for per-case outputs and report.json.
    #[arg(long)]
    out: PathBuf,
}

/// Runs the job; failures of single cases are in report.json, not the exit code.
pub fn run(a: WorkerArgs) -> Result<u8> {
    crate::worker::work(&a.job, &a.out)?;
    Ok(0)
}
