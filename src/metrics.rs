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
    /// pipeline or service: what generated the case.
    target: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CaseVerdict {
    case: String,
    /// pipeline or service: what generated the case.
    target: String,
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
    onnxruntime: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CaseStage {
    case: String,
    /// pipeline or service: what generated the case.
    target: String,
    stage: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CaseMemory {
    case: String,
    /// pipeline or service: what generated the case.
    target: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerFailure {
    kind: String,
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
    let stages = Family::<CaseStage, F64Gauge>::default();
    registry.register(
        "monitor_case_stage_seconds",
        "seconds per pipeline stage in the case's last check (text_encoder, unet, unet_step_median, vae, load)",
        stages.clone(),
    );
    let memory = Family::<CaseMemory, F64Gauge>::default();
    registry.register(
        "monitor_case_memory_bytes",
        "the worker's memory after the case's last check (peak_rss; gpu on CUDA hosts)",
        memory.clone(),
    );
    let slowdown = Family::<CaseLabel, F64Gauge>::default();
    registry.register(
        "monitor_case_slowdown_ratio",
        "generation time of the case's last check over its baseline's",
        slowdown.clone(),
    );
    let slow = Family::<CaseLabel, F64Gauge>::default();
    registry.register(
        "monitor_case_slow",
        "1 when the last check was slower than performance.max_slowdown times the baseline (never part of the verdict)",
        slow.clone(),
    );
    for case in &config.cases {
        let row = history
            .conn()
            .query_row(
                "SELECT r.verdict, r.latent_max_abs, r.latent_cosine, r.ssim, r.psnr_db,
                        r.duration_s, r.created_at, r.timings_json
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
                        r.get::<_, Option<String>>(7)?,
                    ))
                },
            )
            .optional()
            .with_context(|| f("monitor_case_*"))?;
        let Some((last, values, at, timings)) = row else {
            continue;
        };
        // A row written before timings were recorded (or damaged) just has none to show.
        let perf: Option<crate::performance::Performance> =
            timings.and_then(|t| serde_json::from_str(&t).ok());
        if let Some(p) = &perf {
            for (stage, v) in [
                ("text_encoder", p.text_encoder_s),
                ("unet", p.unet_s),
                ("unet_step_median", p.unet_step_median_s),
                ("vae", p.vae_s),
                ("load", p.load_s),
            ] {
                if let Some(v) = v {
                    stages
                        .get_or_create(&CaseStage {
                            case: case.name.clone(),
                            target: case.target.as_str().into(),
                            stage: stage.into(),
                        })
                        .set(v);
                }
            }
            for (kind, v) in [("peak_rss", p.peak_rss_bytes), ("gpu", p.gpu_memory_bytes)] {
                if let Some(v) = v {
                    memory
                        .get_or_create(&CaseMemory {
                            case: case.name.clone(),
                            target: case.target.as_str().into(),
                            kind: kind.into(),
                        })
                        .set(v as f64);
                }
            }
            let label = CaseLabel {
                case: case.name.clone(),
                target: case.target.as_str().into(),
            };
            if let Some(r) = p.slowdown {
                slowdown.get_or_create(&label).set(r);
            }
            slow.get_or_create(&label)
                .set(if p.slow { 1.0 } else { 0.0 });
        }
        for v in VERDICTS {
            verdict
                .get_or_create(&CaseVerdict {
                    case: case.name.clone(),
                    target: case.target.as_str().into(),
                    verdict: v.as_str().into(),
                })
                .set(if v.as_str() == last { 1.0 } else { 0.0 });
        }
        let label = CaseLabel {
            case: case.name.clone(),
            target: case.target.as_str().into(),
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

    let failures = Family::<WorkerFailure, F64Gauge>::default();
    registry.register(
        "monitor_worker_failures",
        "case results in the history whose worker crashed (and was restarted for the next cases) or was killed at its timeout",
        failures.clone(),
    );
    let counted: (f64, f64) = history
        .conn()
        .query_row(
            "SELECT COALESCE(SUM(r.error LIKE ?1 || '%'), 0), COALESCE(SUM(r.error LIKE ?2 || '%'), 0)
             FROM results r JOIN runs u ON u.id = r.run_id WHERE u.kind = 'check'",
            params![crate::worker::CRASH_PREFIX, crate::worker::TIMEOUT_PREFIX],
            |r| Ok((r.get::<_, i64>(0)? as f64, r.get::<_, i64>(1)? as f64)),
        )
        .with_context(|| f("monitor_worker_failures"))?;
    for (kind, n) in [("crash", counted.0), ("timeout", counted.1)] {
        failures
            .get_or_create(&WorkerFailure { kind: kind.into() })
            .set(n);
    }

    // The release the last check's worker loaded (the daemon itself never loads ONNX Runtime).
    let onnxruntime: Option<String> = history
        .conn()
        .query_row(
            "SELECT json_extract(environment_json, '$.onnxruntime_version') FROM runs
             WHERE kind = 'check' AND json_valid(environment_json)
               AND json_extract(environment_json, '$.onnxruntime_version') IS NOT NULL
             ORDER BY id DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .optional()
        .with_context(|| f("monitor_build_info"))?;
    let build = Family::<Build, F64Gauge>::default();
    registry.register(
        "monitor_build_info",
        "the monitor's version, execution provider, and the ONNX Runtime release of the last check",
        build.clone(),
    );
    build
        .get_or_create(&Build {
            version: env!("CARGO_PKG_VERSION").into(),
            execution_provider: config.model.execution_provider.name().into(),
            onnxruntime: onnxruntime.unwrap_or_else(|| "unknown".into()),
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
