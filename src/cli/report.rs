//! `monitor report`: (re)write a round's HTML report, or export it as a folder of its own.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use crate::config::Config;
use crate::history::History;

/// Flags of `monitor report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The run (see `monitor history`); with neither this nor --latest, the newest check.
    #[arg(value_name = "RUN_ID", conflicts_with = "latest")]
    run_id: Option<i64>,
    /// The newest check run.
    #[arg(long)]
    latest: bool,
    /// Write a self-contained copy (page and images) into this new folder instead of the
    /// reports folder.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    #[command(flatten)]
    config: super::config::ConfigFileArg,
}

/// Runs the command; prints the page's path.
pub fn run(a: ReportArgs) -> Result<u8> {
    let config = Config::load(&a.config.path())?;
    let history = History::open_existing(&config.storage.database)?;
    let run_id = match a.run_id {
        Some(id) => id,
        None => history.latest_check()?.with_context(|| {
            format!(
                "no finished check in {}; run `monitor check` first",
                config.storage.database.display()
            )
        })?,
    };
    if history.run(run_id)?.is_none() {
        anyhow::bail!(
            "no run {run_id} in {} (see `monitor history`)",
            config.storage.database.display()
        );
    }
    let settings = config.report.settings();
    let page = match &a.out {
        Some(out) => {
            crate::report::export_round(&config.storage.reports, &history, run_id, &settings, out)
        }
        None => crate::report::write_round(&config.storage.reports, &history, run_id, &settings),
    }
    .with_context(|| format!("writing the report of run {run_id}"))?;
    println!("{}", page.display());
    Ok(super::EXIT_OK)
}
