//! The command line: clap definitions, one module per command, exit codes.
//!
//! Exit codes (stable, scripts rely on them): 0 success, 1 drift or model change (check), 2 error.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::sd::runtime::{ConvAlgoSearch, ExecutionProvider, GraphOptimization, RuntimeSettings};

mod alerts;
mod baselines;
mod bench;
mod check;
mod compare;
pub mod config;
mod generate;
mod history;
mod noise;
mod progress;
mod rebaseline;
mod report;
mod run;
mod service;
mod snapshot;
mod status;
mod tokenize;
mod verify;
mod worker;

/// Exit code of success (a check: every case identical or within tolerance).
pub const EXIT_OK: u8 = 0;
/// Exit code of a check where a case drifted or its model changed.
pub const EXIT_DRIFT: u8 = 1;
/// Exit code for "could not do it" (a check: a case could not be checked).
pub const EXIT_ERROR: u8 = 2;

/// The one mapping from a check's status to the process exit code (the history records it too).
pub fn exit_code(status: crate::check::CheckStatus) -> u8 {
    match status {
        crate::check::CheckStatus::Ok => EXIT_OK,
        crate::check::CheckStatus::Drift => EXIT_DRIFT,
        crate::check::CheckStatus::Error => EXIT_ERROR,
    }
}

/// Reproducibility watchdog for Stable Diffusion 1.5 ONNX exports.
#[derive(Debug, Parser)]
#[command(name = "monitor", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the configured cases and compare them with their baselines (exit 0 ok, 1 drift, 2 error).
    Check(check::CheckArgs),
    /// Accept new baselines (after showing what changes), or restore an old version.
    Rebaseline(rebaseline::RebaselineArgs),
    /// Run each case several times, in one worker and in fresh ones: is every run bit-identical?
    VerifyDeterminism(verify::VerifyArgs),
    /// Capture this host's outputs as a verifiable snapshot (`--out FILE.tar`), or `verify` one.
    Snapshot(snapshot::SnapshotArgs),
    /// Compare hosts: snapshots or baseline stores side by side, the first as the reference.
    Compare(compare::CompareArgs),
    /// Run one txt2img generation and write latents.npy, image.png and metadata.json.
    Generate(generate::GenerateArgs),
    /// Print the 77 CLIP token ids the model would be fed for TEXT.
    Tokenize(tokenize::TokenizeArgs),
    /// Write the first draw of a freshly seeded noise source as .npy.
    Noise(noise::NoiseArgs),
    /// Time each pipeline stage on a model and report the share spent outside ONNX Runtime.
    Bench(bench::BenchArgs),
    /// Work with the config file (`validate`).
    Config(config::ConfigArgs),
    /// Runs model cases for check/rebaseline in a child process (internal).
    #[command(hide = true)]
    Worker(worker::WorkerArgs),
    /// List the stored baselines, or show one (`list`, `show CASE`).
    Baselines(baselines::BaselinesArgs),
    /// Show the newest recorded results (table, or --json).
    History(history::HistoryArgs),
    /// Write a round's HTML report (images, metrics, trend), or export it with --out DIR.
    Report(report::ReportArgs),
    /// Send a test alert to every configured channel (`alert test`).
    Alert(alerts::AlertArgs),
    /// List recent alerts and their delivery state per channel.
    Alerts(alerts::AlertsArgs),
    /// The watchdog daemon: check on the configured schedule, alert, remediate (systemd-ready).
    Run(run::RunArgs),
    /// Per case: last verdict, alert state, next run; undelivered alerts, last remediation.
    Status(status::StatusArgs),
    /// The generation service's HTTP API (`probe`: send cases, show what comes back).
    Service(service::ServiceArgs),
}

/// ONNX Runtime location and every setting that can change output bits.
#[derive(Debug, Clone, Args)]
pub struct RuntimeArgs {
    /// ONNX Runtime shared library (or the wheel's capi/ folder); else ORT_DYLIB_PATH, else an
    /// installed `onnxruntime` Python package.
    #[arg(long, value_name = "PATH")]
    pub ort_lib: Option<PathBuf>,
    /// Execution provider.
    #[arg(long, default_value = "cpu", value_name = "cpu|cuda")]
    pub ep: ExecutionProvider,
    /// CUDA device ordinal.
    #[arg(long, default_value_t = 0)]
    pub device_id: i32,
    /// cuDNN convolution algorithm search (CUDA).
    #[arg(
        long,
        default_value = "heuristic",
        value_name = "exhaustive|heuristic|default"
    )]
    pub conv_algo_search: ConvAlgoSearch,
    /// Allow TF32 tensor-core math (CUDA); off by default because it changes bits across GPUs.
    #[arg(long)]
    pub tf32: bool,
    /// Prefer NHWC convolution kernels (CUDA).
    #[arg(long)]
    pub prefer_nhwc: bool,
    /// Turn off ONNX Runtime's deterministic-compute option (on by default).
    #[arg(long)]
    pub no_deterministic_compute: bool,
    /// Intra-op threads (default: ONNX Runtime's choice, one per physical core).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// ONNX Runtime graph optimization level (changes bits, even on the CPU).
    #[arg(long, default_value = "all", value_name = "all|extended|basic|disable")]
    pub graph_optimization: GraphOptimization,
}

impl RuntimeArgs {
    /// The runtime settings these flags describe.
    pub fn settings(&self) -> RuntimeSettings {
        RuntimeSettings {
            execution_provider: self.ep,
            device_id: self.device_id,
            conv_algo_search: self.conv_algo_search,
            use_tf32: self.tf32,
            prefer_nhwc: self.prefer_nhwc,
            deterministic_compute: !self.no_deterministic_compute,
            intra_op_threads: self.threads,
            graph_optimization: self.graph_optimization,
        }
    }
}

/// Parses the command line and runs the command; returns the process exit code.
pub fn main() -> u8 {
    let cli = Cli::parse();
    // The daemon reports what it does as it goes; one-shot commands print their results and
    // log only problems.
    init_logging(if matches!(cli.command, Command::Run(_)) {
        "info"
    } else {
        "warn"
    });
    let result = match cli.command {
        Command::Check(a) => check::run(a),
        Command::Rebaseline(a) => rebaseline::run(a),
        Command::VerifyDeterminism(a) => verify::run(a),
        Command::Snapshot(a) => snapshot::run(a),
        Command::Compare(a) => compare::run(a),
        Command::Generate(a) => generate::run(a),
        Command::Tokenize(a) => tokenize::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Noise(a) => noise::run(a),
        Command::Config(a) => config::run(a),
        Command::Worker(a) => worker::run(a),
        Command::Baselines(a) => baselines::run(a),
        Command::History(a) => history::run(a),
        Command::Report(a) => report::run(a),
        Command::Alert(a) => alerts::run_alert(a),
        Command::Alerts(a) => alerts::run_alerts(a),
        Command::Run(a) => run::run(a),
        Command::Status(a) => status::run(a),
        Command::Service(a) => service::run(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            let chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
            eprintln!("monitor: error: {}", join_causes(&chain));
            EXIT_ERROR
        }
    }
}

/// Logs go to stderr, one line per event, at `RUST_LOG`'s levels (else `default_level`). Under
/// journald (`JOURNAL_STREAM` set) the timestamp is left to the journal.
fn init_logging(default_level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(false);
    let _ = if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.without_time().try_init()
    } else {
        builder.try_init()
    };
}

/// One line from an error chain, outermost context first. Contexts often name the file their
/// cause names again ("loading model M: M: missing folder"): a cause's leading part that the
/// line already holds is dropped, and a cause the line already holds whole is skipped.
pub fn join_causes(chain: &[String]) -> String {
    let mut line = String::new();
    for cause in chain {
        let cause = cause.replace('\n', " ");
        let mut rest = cause.as_str();
        while let Some((head, tail)) = rest.split_once(": ") {
            if head.is_empty() || !line.contains(head) {
                break;
            }
            rest = tail;
        }
        if rest.is_empty() || line.contains(rest) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(rest);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::join_causes;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn causes_are_joined_without_repeating_themselves() {
        assert_eq!(
            join_causes(&s(&[
                "loading model /m",
                "/m: missing model folder (not an SD1.5 ONNX export?)"
            ])),
            "loading model /m: missing model folder (not an SD1.5 ONNX export?)"
        );
        assert_eq!(
            join_causes(&s(&["reading x.npy", "x.npy: bad magic", "bad magic"])),
            "reading x.npy: bad magic"
        );
        assert_eq!(
            join_causes(&s(&["check", "database is locked"])),
            "check: database is locked"
        );
        assert_eq!(join_causes(&s(&["a\nb"])), "a b");
    }
}
