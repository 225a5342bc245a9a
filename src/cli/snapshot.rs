//! `monitor snapshot`: capture this host's outputs for the configured cases as a portable,
//! verifiable file; `monitor snapshot verify FILE` checks one.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::{Args, Subcommand};

use super::config::ConfigFileArg;
use crate::config::Config;
use crate::snapshot::{take, Snapshot, SourceKind};

/// Flags of `monitor snapshot`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct SnapshotArgs {
    #[command(subcommand)]
    action: Option<SnapshotAction>,
    #[command(flatten)]
    config: ConfigFileArg,
    /// Only this case (repeatable; default all).
    #[arg(long = "case", value_name = "NAME")]
    cases: Vec<String>,
    /// Where to write it: FILE.tar, or a folder that does not exist yet.
    #[arg(long, value_name = "PATH")]
    out: Option<PathBuf>,
    /// A name for this host in comparisons (default: the host name).
    #[arg(long, value_name = "TEXT")]
    label: Option<String>,
}

#[derive(Debug, Subcommand)]
enum SnapshotAction {
    /// Verify a snapshot: manifest, every file's sha256, every case's recorded hashes.
    Verify {
        /// The snapshot tar or folder.
        path: PathBuf,
    },
}

/// Runs the command: 0 written/verified, 2 when a case failed or the snapshot is damaged.
pub fn run(a: SnapshotArgs) -> Result<u8> {
    if let Some(SnapshotAction::Verify { path }) = &a.action {
        let s = Snapshot::open(path)?;
        if s.kind == SourceKind::BaselineStore {
            bail!(
                "{} is a baseline store, not a snapshot (its versions were verified on reading)",
                path.display()
            );
        }
        println!(
            "{}: ok ({}, {} case{} verified{})",
            path.display(),
            s.name(),
            s.cases.len(),
            if s.cases.len() == 1 { "" } else { "s" },
            if s.errors.is_empty() {
                String::new()
            } else {
                format!(", {} recorded as failed", s.errors.len())
            }
        );
        return Ok(super::EXIT_OK);
    }
    let Some(out) = a.out else {
        bail!("--out PATH is required (FILE.tar, or a new folder); or use `monitor snapshot verify PATH`");
    };
    let config = Config::load(&a.config.path())?;
    let taken = take(&config, &a.cases, &out, a.label)?;
    for c in &taken.info.cases {
        println!("{c:<20} captured");
    }
    for (c, e) in &taken.info.errors {
        println!("{c:<20} error: {e}");
    }
    println!(
        "snapshot {} of {} ({}): {} case{}{}",
        taken.path.display(),
        taken.info.label.as_deref().unwrap_or("?"),
        taken.info.platform,
        taken.info.cases.len(),
        if taken.info.cases.len() == 1 { "" } else { "s" },
        if taken.info.errors.is_empty() {
            String::new()
        } else {
            format!(", {} failed", taken.info.errors.len())
        }
    );
    Ok(if taken.info.errors.is_empty() {
        super::EXIT_OK
    } else {
        super::EXIT_ERROR
    })
}
