//! `monitor verify-determinism`: is this host bit-identical with itself, run after run?

use anyhow::Result;
use clap::Args;

use super::config::ConfigFileArg;
use crate::config::Config;
use crate::determinism::{verify, VerifyRun};

/// Flags of `monitor verify-determinism`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    config: ConfigFileArg,
    /// Only this case (repeatable; default all).
    #[arg(long = "case", value_name = "NAME")]
    cases: Vec<String>,
    /// Runs per case in one worker; also the number of workers (each fresh one runs once).
    #[arg(long, default_value_t = 3, value_name = "N")]
    runs: usize,
    /// Print the full result as JSON on stdout.
    #[arg(long)]
    json: bool,
}

/// Runs the command: 0 deterministic, 1 not, 2 error.
pub fn run(a: VerifyArgs) -> Result<u8> {
    let config = Config::load(&a.config.path())?;
    let result = verify(&config, &a.cases, a.runs)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        print_table(&result, a.runs);
    }
    if let Some(e) = &result.history_error {
        eprintln!("monitor: error: results not recorded: {e}");
    }
    Ok(super::exit_code(result.status))
}

fn print_table(run: &VerifyRun, runs: usize) {
    println!(
        "{:<20} {:>6} {:<14} {:<14} result",
        "case", "runs", "same worker", "fresh workers"
    );
    let word = |s: &Option<crate::determinism::Spread>| match s {
        None => "-",
        Some(s) if s.identical => "identical",
        Some(_) => "differs",
    };
    let mut deterministic = 0;
    for c in &run.cases {
        let result = match c.deterministic() {
            Some(true) => {
                deterministic += 1;
                "deterministic".to_string()
            }
            Some(false) => "NOT deterministic".to_string(),
            None => "error".to_string(),
        };
        println!(
            "{:<20} {:>6} {:<14} {:<14} {result}",
            c.name,
            format!("{runs}+{}", runs - 1),
            word(&c.same_worker),
            word(&c.fresh_workers),
        );
        if let Some(e) = &c.error {
            println!("    {e}");
        }
        if let Some(d) = c.describe_difference() {
            println!("    {d}");
        }
        if let Some(cause) = &c.likely_cause {
            println!("    most likely: {cause}");
        }
        if let Some(r) = c.runs.first() {
            println!(
                "    latents sha256 {} (run 1), image sha256 {}",
                &r.latents_sha256[..16.min(r.latents_sha256.len())],
                &r.image_sha256[..16.min(r.image_sha256.len())]
            );
        }
    }
    println!(
        "{} case{}: {deterministic} deterministic (run {}, exit {})",
        run.cases.len(),
        if run.cases.len() == 1 { "" } else { "s" },
        run.run_id,
        super::exit_code(run.status)
    );
}
