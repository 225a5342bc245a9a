//! `monitor alert test` (send a test alert through every configured channel, now) and
//! `monitor alerts` (recent alerts and where each delivery stands).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use crate::alert::outbox::{self, AlertRow, Backoff, DeliveryRow};
use crate::alert::{build_channels, Alert, AlertKind, Severity, ALERT_VERSION};
use crate::config::{config_path, Config};
use crate::history::History;

/// `monitor alert ...`.
#[derive(Debug, Args)]
pub struct AlertArgs {
    #[command(subcommand)]
    command: AlertCommand,
}

#[derive(Debug, Subcommand)]
enum AlertCommand {
    /// Send a test message to every configured channel and report each outcome.
    Test {
        /// Config file (else $MONITOR_CONFIG, else configs/monitor.yaml).
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

/// `monitor alerts`.
#[derive(Debug, Args)]
pub struct AlertsArgs {
    /// Config file (else $MONITOR_CONFIG, else configs/monitor.yaml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// How many alerts to show.
    #[arg(long, default_value_t = 20)]
    limit: usize,
    /// JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Runs `monitor alert test`: exit 0 when every channel took the message, else 2.
pub fn run_alert(args: AlertArgs) -> Result<u8> {
    let AlertCommand::Test { config } = args.command;
    let path = config_path(config.as_deref());
    let config = Config::load(&path)?;
    let names = config.alerts.channel_names();
    if names.is_empty() {
        anyhow::bail!(
            "no alert channel configured in {} (add alerts.email, alerts.slack or alerts.webhook)",
            path.display()
        );
    }
    let channels = build_channels(&config.alerts, config_dir(&path))
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("setting up the alert channels of {}", path.display()))?;
    let mut history = History::open(&config.storage.database)?;
    let host = crate::fingerprint::hostname();
    let shown_host = host.clone().unwrap_or_else(|| "this host".into());
    let alert = Alert {
        version: ALERT_VERSION,
        id: 0,
        kind: AlertKind::Test,
        severity: Severity::Info,
        title: format!("[monitor] test alert from {shown_host}"),
        summary: format!(
            "This is a test message sent by `monitor alert test` on {shown_host}. \
             If you can read it, monitor alerts reach this channel; nothing is wrong."
        ),
        host,
        created_at: crate::clock::utc_now_rfc3339(),
        run_id: None,
        cases: Vec::new(),
    };
    let id = outbox::enqueue(&mut history, &alert, &names)?;
    let backoff = Backoff {
        initial: config.alerts.retry_initial.get(),
        max: config.alerts.retry_max.get(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(outbox::deliver_alert(&mut history, &channels, &backoff, id))?;
    let row = outbox::alert_row(&history, id)?
        .with_context(|| format!("alert {id} vanished from {}", history.path().display()))?;
    let mut all_delivered = true;
    for d in &row.deliveries {
        all_delivered &= d.state == "delivered";
        println!("{}: {}", d.channel, outcome(d));
    }
    Ok(if all_delivered { 0 } else { super::EXIT_ERROR })
}

/// Runs `monitor alerts`.
pub fn run_alerts(args: AlertsArgs) -> Result<u8> {
    let path = config_path(args.config.as_deref());
    let database = Config::load(&path)?.storage.database;
    let history = History::open_existing(&database)?;
    let rows = outbox::recent(&history, args.limit)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else if rows.is_empty() {
        println!("no alerts in {}", database.display());
    } else {
        print!("{}", table(&rows));
    }
    Ok(0)
}

/// The folder relative secret files are looked up in.
fn config_dir(path: &Path) -> &Path {
    path.parent().unwrap_or(Path::new("."))
}

/// "delivered", "failed: HTTP 404 no_service (not retried)", "will retry: connection refused".
fn outcome(d: &DeliveryRow) -> String {
    let error = d.last_error.as_deref().unwrap_or("no error recorded");
    match d.state.as_str() {
        "delivered" => "delivered".into(),
        "failed" => format!("failed: {error} (not retried)"),
        "pending" => match &d.next_attempt_at {
            Some(at) => format!("will retry: {error} (next attempt {at})"),
            None => format!("will retry: {error}"),
        },
        other => format!("{other}: {error}"),
    }
}

/// id, time, kind, deliveries (channel state, with attempts when more than one), title; below an
/// alert, the error of each delivery that has not gone through.
fn table(rows: &[AlertRow]) -> String {
    let header = ["id", "time", "kind", "deliveries", "title"].map(String::from);
    let cells: Vec<[String; 5]> = rows
        .iter()
        .map(|r| {
            let deliveries = if r.deliveries.is_empty() {
                "(no channel)".to_string()
            } else {
                r.deliveries
                    .iter()
                    .map(|d| match d.attempts {
                        0 | 1 => format!("{} {}", d.channel, d.state),
                        n => format!("{} {} ({n} tries)", d.channel, d.state),
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            [
                r.id.to_string(),
                r.created_at.clone(),
                r.kind.clone(),
                deliveries,
                r.title.clone(),
            ]
        })
        .collect();
    let mut widths = header.clone().map(|h| h.chars().count());
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String; 5]| {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
            s.push_str(c);
            if i + 1 < cells.len() {
                s.push_str(&" ".repeat(w - c.chars().count() + 2));
            }
        }
        s.push('\n');
        s
    };
    let mut out = line(&header);
    for (row, c) in rows.iter().zip(&cells) {
        out.push_str(&line(c));
        for d in row.deliveries.iter().filter(|d| d.state != "delivered") {
            out.push_str(&format!("    {}: {}\n", d.channel, outcome(d)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(channel: &str, state: &str, attempts: u32, error: Option<&str>) -> DeliveryRow {
        DeliveryRow {
            channel: channel.into(),
            state: state.into(),
            attempts,
            last_error: error.map(String::from),
            delivered_at: None,
            next_attempt_at: None,
        }
    }

    #[test]
    fn outcomes_read_as_one_line_per_channel() {
        assert_eq!(
            outcome(&delivery("email", "delivered", 1, None)),
            "delivered"
        );
        assert_eq!(
            outcome(&delivery("slack", "failed", 1, Some("HTTP 404 no_service"))),
            "failed: HTTP 404 no_service (not retried)"
        );
        assert_eq!(
            outcome(&delivery(
                "webhook",
                "pending",
                1,
                Some("connection refused")
            )),
            "will retry: connection refused"
        );
    }

    #[test]
    fn the_table_lists_deliveries_and_the_errors_of_those_not_through() {
        let rows = vec![AlertRow {
            id: 4,
            created_at: "2026-11-27T03:23:10Z".into(),
            kind: "firing".into(),
            title: "[monitor] DRIFT on gpu-01: sunset".into(),
            deliveries: vec![
                delivery("email", "delivered", 1, None),
                delivery("slack", "pending", 3, Some("HTTP 500")),
            ],
        }];
        let t = table(&rows);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("id  time"), "{t}");
        assert!(
            lines[1].contains("email delivered, slack pending (3 tries)"),
            "{t}"
        );
        assert!(
            lines[1].ends_with("[monitor] DRIFT on gpu-01: sunset"),
            "{t}"
        );
        assert_eq!(lines[2], "    slack: will retry: HTTP 500");
        assert_eq!(lines.len(), 3);
    }
}
