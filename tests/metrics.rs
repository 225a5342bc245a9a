//! Prometheus metrics: the textfile of `monitor check --metrics-textfile` and the daemon's
//! `/metrics` and `/healthz`, parsed by a real parser (the `prometheus-parse` crate, and
//! `promtool check metrics` when it is installed, as `.ci/run` does).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::site::{Site, TIGHT};
use prometheus_parse::{Scrape, Value};

fn parse(text: &str) -> Scrape {
    Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("exposition text parses")
}

/// The value of `metric` with exactly these labels.
fn value(s: &Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    s.samples
        .iter()
        .find(|x| {
            x.metric == metric
                && x.labels.len() == labels.len()
                && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v))
        })
        .map(|x| match x.value {
            Value::Gauge(v) | Value::Untyped(v) | Value::Counter(v) => v,
            _ => f64::NAN,
        })
}

/// `promtool check metrics` on `text`, when promtool is installed: its lint must pass.
fn promtool(text: &str) {
    let Ok(mut child) = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    else {
        eprintln!("promtool: NOT RUN (not installed)");
        return;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn check_writes_a_valid_textfile_with_per_case_gauges() {
    let site = Site::new(None, TIGHT);
    site.rebaseline_with_old_ort(&[]);
    let prom = site.path("node_exporter/monitor.prom");
    std::fs::create_dir_all(prom.parent().unwrap()).unwrap();
    let o = site.run(&["check", "--metrics-textfile", prom.to_str().unwrap()]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let text = std::fs::read_to_string(&prom).unwrap();
    promtool(&text);
    let s = parse(&text);
    for case in ["fox", "owl"] {
        assert_eq!(
            value(
                &s,
                "monitor_case_verdict",
                &[("case", case), ("target", "pipeline"), ("verdict", "drift")]
            ),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            value(
                &s,
                "monitor_case_verdict",
                &[
                    ("case", case),
                    ("target", "pipeline"),
                    ("verdict", "identical")
                ]
            ),
            Some(0.0)
        );
        assert!(
            value(
                &s,
                "monitor_case_latent_max_abs",
                &[("case", case), ("target", "pipeline")]
            )
            .unwrap()
                > 0.0
        );
        assert!(
            value(
                &s,
                "monitor_case_ssim",
                &[("case", case), ("target", "pipeline")]
            )
            .unwrap()
                <= 1.0
        );
        assert!(
            value(
                &s,
                "monitor_case_generation_seconds",
                &[("case", case), ("target", "pipeline")]
            )
            .unwrap()
                > 0.0
        );
        let at = value(
            &s,
            "monitor_case_last_run_timestamp_seconds",
            &[("case", case), ("target", "pipeline")],
        )
        .unwrap();
        assert!((at - monitor::clock::unix_now()).abs() < 600.0, "{at}");
    }
    assert_eq!(
        value(&s, "monitor_rounds_recorded", &[("outcome", "drift")]),
        Some(1.0)
    );
    assert_eq!(
        value(
            &s,
            "monitor_build_info",
            &[
                ("version", env!("CARGO_PKG_VERSION")),
                ("execution_provider", "cpu"),
                ("onnxruntime", "1.31.1"),
            ]
        ),
        Some(1.0)
    );
    // Stage times, memory and the slow flag of each case's last check.
    for case in ["fox", "owl"] {
        for stage in ["text_encoder", "unet", "unet_step_median", "vae", "load"] {
            let v = value(
                &s,
                "monitor_case_stage_seconds",
                &[("case", case), ("target", "pipeline"), ("stage", stage)],
            );
            assert!(v.is_some_and(|v| v > 0.0), "{case} {stage}: {v:?}");
        }
        #[cfg(unix)]
        assert!(value(
            &s,
            "monitor_case_memory_bytes",
            &[("case", case), ("target", "pipeline"), ("kind", "peak_rss")]
        )
        .is_some_and(|v| v > 1e6));
        // No performance.max_slowdown in this config: never slow.
        assert_eq!(
            value(
                &s,
                "monitor_case_slow",
                &[("case", case), ("target", "pipeline")]
            ),
            Some(0.0)
        );
    }
    assert_eq!(
        value(&s, "monitor_worker_failures", &[("kind", "crash")]),
        Some(0.0)
    );
    // No daemon ran on this database: no next run.
    assert!(value(&s, "monitor_next_run_timestamp_seconds", &[]).is_none());
    // Only the file itself: written atomically, no temporary left beside it.
    let names: Vec<String> = std::fs::read_dir(prom.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["monitor.prom"]);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET path` → (status line, body).
fn get(port: u16, path: &str) -> Option<(String, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    Some((head.lines().next()?.to_string(), body.to_string()))
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_daemon_serves_metrics_and_health() {
    let port = free_port();
    let site = Site::new(
        None,
        &format!("schedule: \"* * * * * *\"\nmetrics: {{listen: \"127.0.0.1:{port}\"}}\n"),
    );
    site.rebaseline();
    let mut daemon = site.command(&["run"]).spawn().unwrap();
    let scrape = || get(port, "/metrics");
    let mut text = String::new();
    wait_for(
        "a round in /metrics",
        Duration::from_secs(60),
        || match scrape() {
            Some((status, body)) if status.contains("200") => {
                let ok = value(
                    &parse(&body),
                    "monitor_rounds_recorded",
                    &[("outcome", "ok")],
                )
                .is_some_and(|n| n >= 1.0);
                text = body;
                ok
            }
            _ => false,
        },
    );
    promtool(&text);
    let s = parse(&text);
    for case in ["fox", "owl"] {
        assert_eq!(
            value(
                &s,
                "monitor_case_verdict",
                &[
                    ("case", case),
                    ("target", "pipeline"),
                    ("verdict", "identical")
                ]
            ),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            value(
                &s,
                "monitor_case_latent_max_abs",
                &[("case", case), ("target", "pipeline")]
            ),
            Some(0.0)
        );
    }
    let next =
        value(&s, "monitor_next_run_timestamp_seconds", &[]).expect("next run while running");
    assert!((next - monitor::clock::unix_now()).abs() < 120.0, "{next}");
    let (status, body) = get(port, "/healthz").unwrap();
    assert!(status.contains("200"), "{status} {body}");
    assert_eq!(body, "ok\n");
    let (status, _) = get(port, "/nothing").unwrap();
    assert!(status.contains("404"), "{status}");
    // SIGTERM: the endpoint goes away with the daemon.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    let exit = daemon.wait().unwrap();
    assert!(exit.success(), "{exit:?}");
    assert!(get(port, "/healthz").is_none(), "the port is still served");
}

#[test]
fn healthz_fails_while_the_scheduler_loop_is_held_and_recovers() {
    let port = free_port();
    let site = Site::with_cases(
        None,
        &[common::site::FOX],
        &format!("schedule: \"* * * * * *\"\nmetrics: {{listen: \"127.0.0.1:{port}\"}}\n"),
    );
    site.rebaseline();
    // The loop iterates every second here; 3 s without one is a stall.
    let mut daemon = site
        .command(&["run"])
        .env("MONITOR_TEST_HEALTH_STALE_S", "3")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let health = || get(port, "/healthz");
    wait_for("healthy", Duration::from_secs(60), || {
        health().is_some_and(|(s, _)| s.contains("200"))
    });
    // Another process holds the database's write lock: each loop iteration now waits out the
    // 5 s busy timeout, so the loop stops beating while the endpoint still answers.
    let db = rusqlite::Connection::open(site.path("monitor.db")).unwrap();
    db.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let mut body = String::new();
    wait_for("/healthz 503", Duration::from_secs(30), || match health() {
        Some((s, b)) if s.contains("503") => {
            body = b;
            true
        }
        _ => false,
    });
    assert!(
        body.starts_with("scheduler loop stalled: last iteration"),
        "{body}"
    );
    db.execute_batch("COMMIT").unwrap();
    drop(db);
    wait_for("healthy again", Duration::from_secs(30), || {
        health().is_some_and(|(s, _)| s.contains("200"))
    });
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    assert!(daemon.wait().unwrap().success());
}

/// Every metric family the exporter can emit, from a database with a check, an alert delivery,
/// a remediation action and a running daemon in it.
fn exported_families() -> Vec<String> {
    let site = Site::new(None, "");
    site.rebaseline();
    assert!(site.run(&["check"]).status.success());
    let db = rusqlite::Connection::open(site.path("monitor.db")).unwrap();
    db.execute_batch(
        "INSERT INTO outbox (id, created_at, kind, title, payload_json) VALUES (1, '2026-12-05T00:00:00Z', 'firing', 't', '{}');
         INSERT INTO deliveries (alert_id, channel, state, attempts, next_attempt_at) VALUES (1, 'slack', 'failed', 3, 0);
         INSERT INTO actions (at, at_unix, kind, outcome) VALUES ('2026-12-05T00:00:00Z', 0, 'restart', 'ok');
         INSERT INTO daemon (id, pid, started_at, heartbeat_at, next_run_at) VALUES (1, 1, '2026-12-05T00:00:00Z', '2026-12-05T00:00:00Z', '2026-12-05T00:10:00Z');",
    )
    .unwrap();
    drop(db);
    let prom = site.path("m.prom");
    assert!(site
        .run(&["check", "--metrics-textfile", prom.to_str().unwrap()])
        .status
        .success());
    let text = std::fs::read_to_string(&prom).unwrap();
    promtool(&text);
    let s = parse(&text);
    assert_eq!(
        value(
            &s,
            "monitor_alert_deliveries",
            &[("channel", "slack"), ("state", "failed")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &s,
            "monitor_remediation_actions",
            &[("kind", "restart"), ("outcome", "ok")]
        ),
        Some(1.0)
    );
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect()
}

/// `monitor_*` names used in a query text.
fn names_in(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("monitor_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

#[test]
fn the_dashboard_and_alert_rules_use_only_exported_metrics() {
    let exported = exported_families();
    let repo = common::repo();
    let dashboard =
        std::fs::read_to_string(repo.join("configs/grafana/monitor-dashboard.json")).unwrap();
    let d: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    let panels = d["panels"].as_array().unwrap();
    assert!(panels.len() >= 6);
    let mut used = Vec::new();
    for p in panels {
        for t in p["targets"].as_array().unwrap() {
            used.extend(names_in(t["expr"].as_str().unwrap()));
        }
    }
    let rules = std::fs::read_to_string(repo.join("configs/prometheus-alerts.yaml")).unwrap();
    used.extend(names_in(&rules));
    assert!(used.len() > 8);
    for name in &used {
        assert!(
            exported.contains(name),
            "{name} is not exported: {exported:?}"
        );
    }
}

#[test]
fn the_alert_rules_pass_promtool() {
    let repo = common::repo();
    let Ok(o) = std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(repo.join("configs/prometheus-alerts.yaml"))
        .output()
    else {
        eprintln!("promtool: NOT RUN (not installed)");
        return;
    };
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    // Behaviour: drift, a failing channel and a stalled schedule fire; healthy series do not.
    let o = std::process::Command::new("promtool")
        .args(["test", "rules", "alerts-test.yaml"])
        .current_dir(repo.join("tests/fixtures/prometheus"))
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}
