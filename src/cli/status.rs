//! `monitor status`: the daemon, each case's last verdict and alert state, pending alerts, and
//! the last remediation (see `crate::status`).

use anyhow::Result;
use clap::Args;

use super::config::ConfigFileArg;
use crate::config::Config;
use crate::status::Status;

/// Flags of `monitor status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    config: ConfigFileArg,
    /// JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// Prints the status; exit 0 (it reports, it does not judge).
pub fn run(a: StatusArgs) -> Result<u8> {
    let config = Config::load(&a.config.path())?;
    let status = crate::status::read(&config)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", text(&status));
    }
    Ok(0)
}

fn text(s: &Status) -> String {
    let mut out = String::new();
    let d = &s.daemon;
    let row = d.row.as_ref();
    let field =
        |f: Option<&Option<String>>| f.and_then(|v| v.clone()).unwrap_or_else(|| "-".into());
    out.push_str(&format!(
        "daemon: {}{}; heartbeat {}; next run {}\n",
        d.state,
        row.and_then(|r| r.pid)
            .map_or(String::new(), |p| format!(" (pid {p})")),
        field(row.map(|r| &r.heartbeat_at)),
        field(row.map(|r| &r.next_run_at)),
    ));
    if let Some(last) = row.and_then(|r| r.last_round.as_deref()) {
        out.push_str(&format!("last round: {last}\n"));
    }
    out.push_str(&format!(
        "\n{:<20} {:<17} {:<21} {}\n",
        "case", "last verdict", "checked at", "alert"
    ));
    for c in &s.cases {
        out.push_str(&format!(
            "{:<20} {:<17} {:<21} {}\n",
            c.name,
            c.last_verdict.as_deref().unwrap_or("-"),
            c.last_checked_at.as_deref().unwrap_or("-"),
            c.alert_text
        ));
    }
    out.push_str(&format!("\nundelivered alerts: {}\n", s.undelivered_alerts));
    match s.last_actions.first() {
        None => out.push_str("last remediation: none\n"),
        Some(a) => out.push_str(&format!(
            "last remediation: {} {}{} for {}: {}{}\n",
            a.at,
            a.kind,
            a.target
                .as_deref()
                .map_or(String::new(), |t| format!(" `{t}`")),
            a.cases.join(", "),
            a.outcome,
            a.detail
                .as_deref()
                .map_or(String::new(), |d| format!(" ({d})"))
        )),
    }
    out
}
