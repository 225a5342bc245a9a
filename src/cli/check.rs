//! `monitor check`: run the configured cases, compare with baselines, record, exit 0/1/2.

use anyhow::Result;
use clap::Args;

use super::config::ConfigFileArg;
use crate::check::{check, CaseCheck, CheckOptions, CheckRun};
use crate::config::Config;
use serde_json::json;

/// Flags of `monitor check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    config: ConfigFileArg,
    /// Only this case (repeatable; default all).
    #[arg(long = "case", value_name = "NAME")]
    cases: Vec<String>,
    /// Print the full result as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Compare with this snapshot (another host's `monitor snapshot`) instead of the baselines.
    #[arg(long, value_name = "SNAPSHOT")]
    against: Option<std::path::PathBuf>,
    /// Also write the Prometheus metrics to this file, atomically (node_exporter's textfile
    /// collector reads `*.prom` files).
    #[arg(long, value_name = "PATH")]
    metrics_textfile: Option<std::path::PathBuf>,
    /// Replay each network once against the baselines' stage hashes (a fraction of the model
    /// time); cases that differ, or cannot be judged that way, then get a full check.
    #[arg(long, conflicts_with = "against")]
    quick: bool,
    /// With --quick: only report, without the full check of cases that differ.
    #[arg(long, requires = "quick")]
    no_follow_up: bool,
}

/// Runs the command; the exit code is the check's (0 ok, 1 drift/model change, 2 error).
pub fn run(a: CheckArgs) -> Result<u8> {
    let config = Config::load(&a.config.path())?;
    let opts = CheckOptions {
        against: a.against,
        ..CheckOptions::manual(&config, a.cases)
    };
    if a.quick {
        let quick = crate::quick::quick_check(&config, &opts)?;
        let follow = crate::quick::follow_up(&quick);
        if a.json && (a.no_follow_up || follow.is_empty()) {
            println!(
                "{}",
                serde_json::to_string_pretty(&json!({"quick": quick}))?
            );
        } else if !a.json {
            print_quick(&quick);
        }
        if a.no_follow_up || follow.is_empty() {
            return Ok(if follow.is_empty() {
                super::EXIT_OK
            } else {
                super::EXIT_DRIFT
            });
        }
        let full = CheckOptions {
            cases: follow,
            trigger: "quick",
            ..opts
        };
        let result = check(&config, &full)?;
        if a.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&json!({"quick": quick, "check": result}))?
            );
        } else {
            println!("full check of the cases the quick check could not clear:");
            print_table(&result);
        }
        return Ok(super::exit_code(result.status));
    }
    let result = check(&config, &opts)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        print_table(&result);
    }
    if let Some(e) = &result.history_error {
        eprintln!("monitor: error: results not recorded: {e}");
    }
    if let Some(e) = &result.report_error {
        eprintln!("monitor: warning: HTML report not written: {e}");
    }
    let mut code = super::exit_code(result.status);
    if let Some(path) = &a.metrics_textfile {
        let written = crate::history::History::open(&config.storage.database)
            .map_err(anyhow::Error::from)
            .and_then(|h| crate::metrics::write_textfile(path, &config, &h));
        if let Err(e) = written {
            let chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
            eprintln!("monitor: error: {}", super::join_causes(&chain));
            code = code.max(super::EXIT_ERROR);
        }
    }
    Ok(code)
}

fn print_quick(q: &crate::quick::QuickRun) {
    use crate::quick::QuickOutcome;
    println!(
        "{:<20} {:<40} {:>5} {:>7} {:>10}",
        "case", "quick check", "base", "stages", "model"
    );
    for c in &q.cases {
        let what = match &c.outcome {
            QuickOutcome::Same => "same bits".to_string(),
            QuickOutcome::Differs { stage } => format!("differs at {stage}"),
            QuickOutcome::Unknown { .. } => "cannot judge".to_string(),
        };
        println!(
            "{:<20} {:<40} {:>5} {:>7} {:>10}",
            c.name,
            what,
            c.baseline_version.map_or("-".into(), |v| format!("v{v}")),
            c.stages_compared,
            c.model_s.map_or("-".into(), |s| format!("{s:.3}s")),
        );
        if let QuickOutcome::Unknown { reason } = &c.outcome {
            println!("    {reason}");
        }
        if c.differing.len() > 1 {
            println!(
                "    each on the baseline's inputs, these differ: {}",
                c.differing.join(", ")
            );
        }
        if let Some(d) = c.divergence.as_ref().map(|d| d.describe()) {
            if !d.is_empty() {
                println!("    {d}");
            }
        }
        for d in &c.env_differences {
            println!("    environment: {}", d.describe().replacen(": ", " ", 1));
        }
    }
    let follow = crate::quick::follow_up(q);
    println!(
        "quick check (run {}): {} of {} cases same bits{}",
        q.run_id,
        q.cases.len() - follow.len(),
        q.cases.len(),
        if follow.is_empty() {
            String::new()
        } else {
            format!("; full check needed: {}", follow.join(", "))
        }
    );
}

fn print_table(run: &CheckRun) {
    if let Some(against) = run
        .cases
        .iter()
        .find_map(|c| c.details.as_ref().and_then(|d| d.get("against")))
    {
        let get = |k: &str| against.get(k).and_then(|v| v.as_str()).unwrap_or("?");
        println!(
            "compared with snapshot {} of host {}, not with this host's baselines",
            get("snapshot"),
            get("host")
        );
    }
    println!(
        "{:<20} {:<17} {:>5} {:>10} {:>10} {:>8} {:>7}",
        "case", "verdict", "base", "max|Δlat|", "cosine", "SSIM", "time"
    );
    for c in &run.cases {
        let lat = c.report.as_ref().and_then(|r| r.latents.as_ref());
        let img = c.report.as_ref().and_then(|r| r.image.as_ref());
        println!(
            "{:<20} {:<17} {:>5} {:>10} {:>10} {:>8} {:>6.2}s",
            c.name,
            c.verdict.to_string(),
            c.baseline_version.map_or("-".into(), |v| format!("v{v}")),
            lat.map_or("-".into(), |l| if l.max_abs == 0.0 {
                "0".into()
            } else {
                format!("{:.2e}", l.max_abs)
            }),
            lat.map_or("-".into(), |l| format!("{:.6}", l.cosine)),
            img.map_or("-".into(), |i| format!("{:.4}", i.ssim)),
            c.duration_s,
        );
        print_details(c);
    }
    if let Some(page) = &run.report {
        println!("report: {}", page.display());
    }
    println!(
        "{} (run {}, {:.1}s, exit {})",
        crate::check::case_counts(&run.cases),
        run.run_id,
        run.timings.total_s,
        super::exit_code(run.status)
    );
}

fn print_details(c: &CaseCheck) {
    if let Some(e) = &c.error {
        println!("    error: {e}");
    }
    if let Some(r) = &c.report {
        for f in &r.classification.failures {
            println!("    {}", f.message);
        }
        for m in &r.classification.model_changes {
            println!("    model file changed: {}", m.file);
        }
        if let Some(line) = r.diverged_line() {
            println!("    {line}");
        }
        for d in &r.env_differences {
            // "environment: key "a" → "b"" (the key without its colon, as before).
            println!("    environment: {}", d.describe().replacen(": ", " ", 1));
        }
    }
    if let Some(dir) = &c.artifacts {
        println!("    outputs and diff: {}", dir.display());
    }
    for w in &c.warnings {
        println!("    warning: {w}");
    }
    if let Some(slow) = c.performance.as_ref().and_then(|p| p.describe_slow()) {
        println!("    {slow}");
    }
    if let Some(b) = c.details.as_ref().and_then(|d| d.get("batch")) {
        println!("    {}", describe_batch(b));
    }
    if let Some(p) = c.details.as_ref().and_then(|d| d.get("parity")) {
        println!("    {}", crate::check::describe_parity(p));
    }
}

/// "batch of 4: element 0 identical to the batch-1 result" (or how it differs).
fn describe_batch(b: &serde_json::Value) -> String {
    let size = b.get("size").and_then(|v| v.as_u64()).unwrap_or(0);
    if let Some(e) = b.get("error").and_then(|v| v.as_str()) {
        return format!("batch of {size}: could not run: {e}");
    }
    if b.get("identical").and_then(|v| v.as_bool()) == Some(true) {
        return format!("batch of {size}: element 0 identical to the batch-1 result");
    }
    format!(
        "batch of {size}: element 0 DIFFERS from the batch-1 result (max |Δ latent| {:.2e}, first at {}): a service batching requests gives other images",
        b.get("latent_max_abs").and_then(|v| v.as_f64()).unwrap_or(f64::NAN),
        b.get("first_difference").and_then(|v| v.as_str()).unwrap_or("?")
    )
}
