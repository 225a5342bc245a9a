//! Prometheus metrics, read from the history database on each scrape, so that the daemon's
//! `/metrics`, `monitor check --metrics-textfile` (node_exporter's textfile collector) and any
//! other process show the same numbers. Counts of stored rows are gauges, not counters: retention
//! prunes the history, and a counter must never go down.

use std::sync::atomic::AtomicU64;

use anyhow::{Context, Result};
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use rusqlite::{params, OptionalExtension};

use crate::compare::Verdict;
use crate::config::Config;
use crate::history::History;

type F64Gauge = Gauge<f64, AtomicU64>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CaseLabel {
    case: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CaseVerdict {
    case: String,
    verdict: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Delivery {
    channel: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Action {
    kind: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Build {
    version: String,
    execution_provider: String,
}

/// Every verdict a case can have, so each case exports the whole state set.
const VERDICTS: [Verdict; 5] = [
    Verdict::Identical,
    Verdict::WithinTolerance,
    Verdict::Drift,
    Verdict::ModelChanged,
    Verdict::Error,
];

/// The exposition text (OpenMetrics, which Prometheus and node_exporter read) for `config`'s
/// cases and the daemon's records in `history`.
pub fn render(config: &Config, history: &History) -> Result<String> {
    let mut registry = Registry::default();
    let f = |name: &str| format!("reading metric {name} from the history");

    let verdict = Family::<CaseVerdict, F64Gauge>::default();
    registry.register(
        "monitor_case_verdict",
        "1 for the case's last check verdict, 0 for the others",
        verdict.clone(),
    );
    let per_case: Vec<(&str, &str, Family<CaseLabel, F64Gauge>)> = vec![
        (
            "monitor_case_latent_max_abs",
            "max |delta| of the final latents vs the baseline",
            Family::default(),
        ),
        (
            "monitor_case_latent_cosine",
            "cosine similarity of the final latents vs the baseline",
            Family::default(),
        ),
        (
            "monitor_case_ssim",
            "SSIM of the decoded image vs the baseline",
            Family::default(),
        ),
        (
            "monitor_case_psnr_db",
            "PSNR of the decoded image vs the baseline (+Inf when identical)",
            Family::default(),
        ),
        (
            "monitor_case_generation_seconds",
            "seconds the case took in the worker",
            Family::default(),
        ),
        (
            "monitor_case_last_run_timestamp_seconds",
            "when the case was last checked (unix time)",
            Family::default(),
        ),
    ];
    for (name, help, fam) in &per_case {
        registry.register(*name, *help, fam.clone());
    }
    for case in &config.cases {
        let row = history
            .conn()
            .query_row(
                "SELECT r.verdict, r.latent_max_abs, r.latent_cosine, r.ssim, r.psnr_db,
                        r.duration_s, r.created_at
                 FROM results r JOIN runs u ON u.id = r.run_id
                 WHERE u.kind = 'check' AND r.case_name = ?1
                 ORDER BY r.id DESC LIMIT 1",
                params![case.name],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        [
                            r.get::<_, Option<f64>>(1)?,
                            r.get::<_, Option<f64>>(2)?,
                            r.get::<_, Option<f64>>(3)?,
                            r.get::<_, Option<f64>>(4)?,
                            r.get::<_, Option<f64>>(5)?,
                        ],
                        r.get::<_, String>(6)?,
                    ))
                },
            )
            .optional()
            .with_context(|| f("monitor_case_*"))?;
        let Some((last, values, at)) = row else {
            continue;
        };
        for v in VERDICTS {
            verdict
                .get_or_create(&CaseVerdict {
                    case: case.name.clone(),
                    verdict: v.as_str().into(),
                })
                .set(if v.as_str() == last { 1.0 } else { 0.0 });
        }
        let label = CaseLabel {
            case: case.name.clone(),
        };
        for ((_, _, fam), value) in per_case.iter().zip(values) {
            if let Some(x) = value {
                fam.get_or_create(&label).set(x);
            }
        }
        if let Some(t) = parse_rfc3339(&at) {
            per_case[5].2.get_or_create(&label).set(t);
        }
    }

    let rounds = Family::<Outcome, F64Gauge>::default();
    registry.register(
        "monitor_rounds_recorded",
        "check runs in the history by outcome (ok, drift, error, failed, interrupted, skipped)",
        rounds.clone(),
    );
    for (labels, n) in grouped_counts(
        history,
        "SELECT CASE
             WHEN status = 'finished' AND exit_code = 0 THEN 'ok'
             WHEN status = 'finished' AND exit_code = 1 THEN 'drift'
             WHEN status = 'finished' THEN 'error'
             ELSE COALESCE(status, 'running') END AS outcome, '', COUNT(*)
         FROM runs WHERE kind = 'check' GROUP BY outcome",
        "monitor_rounds_recorded",
    )? {
        let [outcome, _] = labels;
        rounds.get_or_create(&Outcome { outcome }).set(n);
    }

    let deliveries = Family::<Delivery, F64Gauge>::default();
    registry.register(
        "monitor_alert_deliveries",
        "alert deliveries in the history by channel and state (pending, delivered, failed)",
        deliveries.clone(),
    );
    for ([channel, state], n) in grouped_counts(
        history,
        "SELECT channel, state, COUNT(*) FROM deliveries GROUP BY channel, state",
        "monitor_alert_deliveries",
    )? {
        deliveries
            .get_or_create(&Delivery { channel, state })
            .set(n);
    }

    let actions = Family::<Action, F64Gauge>::default();
    registry.register(
        "monitor_remediation_actions",
        "remediation actions in the history by kind and outcome",
        actions.clone(),
    );
    for ([kind, outcome], n) in grouped_counts(
        history,
        "SELECT kind, outcome, COUNT(*) FROM actions GROUP BY kind, outcome",
        "monitor_remediation_actions",
    )? {
        actions.get_or_create(&Action { kind, outcome }).set(n);
    }

    let next_at: Option<Option<String>> = history
        .conn()
        .query_row(
            "SELECT next_run_at FROM daemon WHERE id = 1 AND stopped_at IS NULL",
            [],
            |r| r.get(0),
        )
        .optional()
        .with_context(|| f("monitor_next_run_timestamp_seconds"))?;
    if let Some(t) = next_at.flatten().as_deref().and_then(parse_rfc3339) {
        let next = F64Gauge::default();
        next.set(t);
        registry.register(
            "monitor_next_run_timestamp_seconds",
            "the daemon's next scheduled check (unix time; absent without a running daemon)",
            next,
        );
    }

    let build = Family::<Build, F64Gauge>::default();
    registry.register(
        "monitor_build_info",
        "the monitor's version and execution provider",
        build.clone(),
    );
    build
        .get_or_create(&Build {
            version: env!("CARGO_PKG_VERSION").into(),
            execution_provider: config.model.execution_provider.name().into(),
        })
        .set(1.0);

    let mut out = String::new();
    encode(&mut out, &registry).context("encoding the metrics")?;
    Ok(out)
}

/// Rows of `sql`, which selects two label columns and a count, for metric `name`.
fn grouped_counts(history: &History, sql: &str, name: &str) -> Result<Vec<([String; 2], f64)>> {
    let what = || format!("reading metric {name} from the history");
    let mut stmt = history.conn().prepare(sql).with_context(what)?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                [r.get::<_, String>(0)?, r.get::<_, String>(1)?],
                r.get::<_, i64>(2)? as f64,
            ))
        })
        .with_context(what)?;
    rows.collect::<rusqlite::Result<Vec<_>>>()
        .with_context(what)
}

fn parse_rfc3339(s: &str) -> Option<f64> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp() as f64)
}

/// Writes the metrics to `path` atomically (node_exporter must never read half a file).
pub fn write_textfile(path: &std::path::Path, config: &Config, history: &History) -> Result<()> {
    let text = render(config, history)?;
    crate::fsutil::atomic_write(path, text.as_bytes())
        .with_context(|| format!("writing metrics to {}", path.display()))
}
