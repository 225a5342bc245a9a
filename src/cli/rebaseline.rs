//! `monitor rebaseline`: accept new baselines deliberately, or restore an old version.

use std::io::{BufRead, IsTerminal, Write};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;

use super::config::ConfigFileArg;
use crate::baseline::BaselineStore;
use crate::check::select_cases;
use crate::config::Config;
use crate::rebaseline::{accept, describe, propose, who, RunRecord};

/// Flags of `monitor rebaseline`.
#[derive(Debug, Args)]
pub struct RebaselineArgs {
    #[command(flatten)]
    config: ConfigFileArg,
    /// Only this case (repeatable; default all).
    #[arg(long = "case", value_name = "NAME")]
    cases: Vec<String>,
    /// Why the new baselines are right (kept with each version and in the history).
    #[arg(long, value_name = "TEXT")]
    reason: String,
    /// Do not ask for confirmation.
    #[arg(long)]
    yes: bool,
    /// Make this old version of one case (`--case`) current again, as a new version.
    #[arg(long, value_name = "VERSION")]
    restore: Option<u32>,
    /// Generate each case this many times (the extra runs in fresh workers) and refuse a case
    /// whose runs are not bit-identical; 1 skips the determinism check.
    #[arg(long, default_value_t = 2, value_name = "N")]
    runs: usize,
}

/// Runs the command: 0 when written, 2 on error or when refused.
pub fn run(a: RebaselineArgs) -> Result<u8> {
    let config = Config::load(&a.config.path())?;
    if a.runs == 0 {
        bail!("--runs 0: at least one run is needed (1 skips the determinism check)");
    }
    if a.reason.trim().is_empty() {
        bail!("--reason must say why the new baselines are right");
    }
    if let Some(version) = a.restore {
        return restore(&config, &a, version);
    }
    let cases = select_cases(&config, &a.cases)?;
    let environment = crate::fingerprint::collect();
    let mut record = RunRecord::begin(&config, &environment)?;
    match generate_and_accept(&config, &a, &cases, &environment, &mut record) {
        Ok(code) => Ok(code),
        Err(e) => {
            record.fail(&format!("{e:#}"));
            Err(e)
        }
    }
}

fn generate_and_accept(
    config: &Config,
    a: &RebaselineArgs,
    cases: &[&crate::config::Case],
    environment: &crate::fingerprint::Environment,
    record: &mut RunRecord,
) -> Result<u8> {
    let work = crate::worker::work_dir("rebaseline")?;
    let service = cases
        .iter()
        .filter(|c| c.target == crate::config::Target::Service)
        .count();
    let asked = match (&config.service, service) {
        (Some(s), 1..) => format!(
            " ({service} from the generation service at {})",
            s.url_origin()
        ),
        _ => String::new(),
    };
    eprintln!(
        "monitor: generating {} case(s) with {}{asked} ...",
        cases.len(),
        config.model.path.display()
    );
    let mut proposals = propose(
        config,
        cases,
        environment,
        work.path(),
        Duration::from_secs_f64(config.worker.timeout_s),
    )?;
    if a.runs > 1 {
        // A baseline this host cannot reproduce would drift against itself on the next check.
        let first: Vec<(String, Option<std::path::PathBuf>)> = proposals
            .iter()
            .map(|p| (p.name.clone(), p.dir.clone().filter(|_| p.error.is_none())))
            .collect();
        let refused = crate::determinism::recheck_for_rebaseline(
            config,
            cases,
            &first,
            environment,
            work.path(),
            a.runs,
        )?;
        for (name, why) in refused {
            if let Some(p) = proposals.iter_mut().find(|p| p.name == name) {
                p.error = Some(why);
            }
        }
    }
    for p in &proposals {
        println!("{:<20} {}", p.name, describe(p));
    }
    let failed: Vec<&str> = proposals
        .iter()
        .filter(|p| p.error.is_some())
        .map(|p| p.name.as_str())
        .collect();
    if !failed.is_empty() {
        bail!(
            "not writing any baseline: {} failed (select the others with --case)",
            failed.join(", ")
        );
    }
    if !confirm(
        a.yes,
        &format!("write new baselines for {} case(s)?", proposals.len()),
    )? {
        eprintln!("monitor: nothing written");
        record.fail("not confirmed; nothing written");
        return Ok(super::EXIT_ERROR);
    }
    for (case, version) in accept(config, &proposals, record, &who(), &a.reason)? {
        println!("{case}: wrote v{version}");
    }
    Ok(0)
}

fn restore(config: &Config, a: &RebaselineArgs, version: u32) -> Result<u8> {
    let [case] = a.cases.as_slice() else {
        bail!("--restore needs exactly one --case");
    };
    let store = BaselineStore::new(&config.storage.baselines);
    let old = store.load(case, version)?;
    let current = store.latest_version(case)?.unwrap_or(0);
    let b = old.metadata.baseline.unwrap_or_default();
    let or_unknown = |s: Option<String>| s.unwrap_or_else(|| "?".to_string());
    println!(
        "{case}: restore v{version} (created {}, by {}: {}) as v{}",
        or_unknown(b.created_at),
        or_unknown(b.who),
        or_unknown(b.why),
        current + 1
    );
    if !confirm(a.yes, "restore it?")? {
        eprintln!("monitor: nothing written");
        return Ok(super::EXIT_ERROR);
    }
    let new = store.restore(case, version, &who(), &a.reason)?;
    println!("{case}: wrote v{new} (restored from v{version})");
    Ok(0)
}

/// Asks on the terminal; without one, only `--yes` may proceed (a script must opt in).
fn confirm(yes: bool, question: &str) -> Result<bool> {
    if yes {
        return Ok(true);
    }
    if !std::io::stdin().is_terminal() {
        bail!(
            "refusing to write baselines without confirmation: stdin is not a terminal; pass --yes"
        );
    }
    eprint!("{question} [y/N] ");
    std::io::stderr().flush().ok();
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the answer")?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes"))
}
