//! The alert channels against real loopback peers: what an email, a Slack message and a webhook
//! POST hold, how failures are classified, and that the outbox retries until delivered without
//! ever storing a secret.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::peers::{
    base64_decode, decode_words, parse_mail, qp_decode, HttpPeer, Reply, SmtpSink,
};
use common::site::Site;
use monitor::alert::config::AlertsConfig;
use monitor::alert::outbox::{self, Backoff, DeliveryReport, DeliveryRow};
use monitor::alert::{
    build_channels, Alert, AlertCase, AlertKind, Channel, Metric, SendError, Severity,
    ALERT_VERSION,
};
use monitor::clock::unix_now;
use monitor::duration::ConfigDuration;
use monitor::history::History;

const FAST: Backoff = Backoff {
    initial: Duration::from_millis(100),
    max: Duration::from_secs(2),
};

fn drift_alert(heatmap: Option<&Path>) -> Alert {
    Alert {
        version: ALERT_VERSION,
        id: 0,
        kind: AlertKind::Firing,
        severity: Severity::Drift,
        title: "[monitor] DRIFT on gpu-01: sunset (latent max|Δ| 3.2e-3 > 1e-3)".into(),
        summary: "sunset drifted past its thresholds for 2 rounds.".into(),
        host: Some("gpu-01".into()),
        created_at: "2026-11-27T03:23:10Z".into(),
        run_id: Some(12),
        cases: vec![AlertCase {
            name: "sunset".into(),
            verdict: "drift".into(),
            baseline_version: Some(3),
            metrics: vec![
                Metric {
                    name: "latent_max_abs".into(),
                    value: Some(3.2e-3),
                    threshold: Some(1e-3),
                    op: Some("<=".into()),
                    ok: false,
                },
                Metric {
                    name: "ssim".into(),
                    value: Some(0.987_654),
                    threshold: Some(0.99),
                    op: Some(">=".into()),
                    ok: false,
                },
            ],
            reasons: vec!["latent max|Δ| 3.20e-3 > 1.00e-3 (3.2× the limit)".into()],
            env_changes: vec!["onnxruntime.version: 1.31.1 → 1.24.4".into()],
            error: None,
            report_dir: Some("/var/lib/monitor/reports/12/sunset".into()),
            heatmap: heatmap.map(|p| p.display().to_string()),
            bad_streak: 2,
            firing_since: Some("2026-11-27T02:23:10Z".into()),
            target: None,
        }],
    }
}

/// `alerts:` from YAML, with fast retries and a short timeout.
fn alerts_config(channels_yaml: &str) -> AlertsConfig {
    let yaml = format!("retry_initial: 100ms\nretry_max: 2s\ntimeout: 3s\n{channels_yaml}");
    serde_yaml::from_str(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"))
}

fn channels(channels_yaml: &str) -> Vec<Box<dyn Channel>> {
    build_channels(&alerts_config(channels_yaml), Path::new(".")).unwrap()
}

fn email_yaml(sink: &SmtpSink, extra: &str) -> String {
    format!(
        "email:\n  smtp_host: 127.0.0.1\n  smtp_port: {}\n  tls: none\n  from: 'Monitor <monitor@example.com>'\n  to: [oncall@example.com, ml@example.com]\n{extra}",
        sink.addr().port()
    )
}

/// A PNG-looking file holding every byte value, so the attachment round trip is exact.
fn heatmap(dir: &Path) -> (std::path::PathBuf, Vec<u8>) {
    let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut x: u32 = 12345;
    for _ in 0..5000 {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        bytes.push((x >> 16) as u8);
    }
    bytes.extend(0u8..=255);
    let path = dir.join("diff.png");
    std::fs::write(&path, &bytes).unwrap();
    (path, bytes)
}

/// Delivery rounds, each when the next delivery is due, until none is pending (or `limit`).
async fn deliver_until_done(
    h: &mut History,
    chans: &[Box<dyn Channel>],
    limit: Duration,
) -> DeliveryReport {
    let start = Instant::now();
    let mut total = DeliveryReport::default();
    loop {
        let r = outbox::deliver_due(h, chans, &FAST).await.unwrap();
        total.delivered += r.delivered;
        total.failed += r.failed;
        total.retrying += r.retrying;
        let Some(due) = outbox::next_due(h).unwrap() else {
            return total;
        };
        assert!(start.elapsed() < limit, "still pending after {limit:?}");
        let wait = (due - unix_now()).max(0.0) + 0.01;
        tokio::time::sleep(Duration::from_secs_f64(wait)).await;
    }
}

fn delivery(h: &History, id: i64, channel: &str) -> DeliveryRow {
    outbox::recent(h, 100)
        .unwrap()
        .into_iter()
        .find(|r| r.id == id)
        .expect("alert stored")
        .deliveries
        .into_iter()
        .find(|d| d.channel == channel)
        .expect("delivery stored")
}

/// The database file and its WAL, as bytes.
fn database_bytes(path: &Path) -> Vec<u8> {
    let mut bytes = std::fs::read(path).unwrap();
    let wal = path.with_extension("db-wal");
    if let Ok(more) = std::fs::read(wal) {
        bytes.extend(more);
    }
    bytes
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[tokio::test]
async fn email_holds_the_verdict_numbers_and_the_heatmap() {
    let sink = SmtpSink::start();
    let dir = tempfile::tempdir().unwrap();
    let (png, png_bytes) = heatmap(dir.path());
    let alert = drift_alert(Some(&png));
    let chans = channels(&email_yaml(&sink, ""));
    assert_eq!(chans[0].name(), "email");
    chans[0].send(&alert).await.unwrap();

    let messages = sink.messages();
    assert_eq!(messages.len(), 1);
    let m = &messages[0];
    assert_eq!(m.from, "monitor@example.com");
    assert_eq!(m.to, ["oncall@example.com", "ml@example.com"]);
    let mail = parse_mail(&m.data);
    assert_eq!(mail.subject, alert.title);
    let text = mail.text.expect("text part");
    let html = mail.html.expect("html part");
    for part in [&text, &html] {
        assert!(part.contains("sunset"), "{part}");
        assert!(part.contains("DRIFT"), "{part}");
        assert!(part.contains("3.20e-3"), "{part}");
        assert!(part.contains("1.00e-3"), "{part}");
        assert!(part.contains("0.987654"), "{part}");
        assert!(
            part.contains("onnxruntime.version: 1.31.1 → 1.24.4"),
            "{part}"
        );
        assert!(
            part.contains("/var/lib/monitor/reports/12/sunset"),
            "{part}"
        );
    }
    assert!(
        text.contains("latent max|Δ| 3.20e-3  (limit ≤ 1.00e-3)  FAIL"),
        "{text}"
    );
    assert_eq!(mail.attachments.len(), 1);
    assert_eq!(mail.attachments[0].0, "sunset-diff.png");
    assert!(
        mail.attachments[0].1 == png_bytes,
        "attachment bytes differ from the file"
    );
}

#[tokio::test]
async fn smtp_rejections_are_permanent_and_never_show_the_password() {
    let sink = SmtpSink::start();
    sink.reply("RCPT", "550 5.1.1 <oncall@example.com>: no such user");
    let chans = channels(&email_yaml(&sink, ""));
    match chans[0].send(&drift_alert(None)).await {
        Err(SendError::Permanent(r)) => {
            assert!(r.contains("550") && r.contains("no such user"), "{r}")
        }
        other => panic!("{other:?}"),
    }

    let sink = SmtpSink::start();
    sink.require_auth();
    sink.reply("AUTH", "535 5.7.8 authentication failed");
    let password = "hunter2-smtp-password";
    let chans = channels(&email_yaml(
        &sink,
        &format!("  username: monitor\n  password: '{password}'\n"),
    ));
    match chans[0].send(&drift_alert(None)).await {
        Err(SendError::Permanent(r)) => {
            assert!(r.contains("535"), "{r}");
            assert!(!r.contains(password), "{r}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(sink.auth_lines().len(), 1, "credentials were offered once");
    assert!(sink.messages().is_empty());

    // A busy server (4xx) is worth another try.
    let sink = SmtpSink::start();
    sink.reply("MAIL", "451 4.3.0 try again later");
    let chans = channels(&email_yaml(&sink, ""));
    match chans[0].send(&drift_alert(None)).await {
        Err(SendError::Retry { reason, .. }) => assert!(reason.contains("451"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn slack_gets_block_kit_with_the_numbers_and_a_fallback() {
    let peer = HttpPeer::start(vec![]);
    let url = format!("{}/services/T000/B000/SLACK-SECRET", peer.base_url());
    let chans = channels(&format!("slack:\n  webhook_url: '{url}'\n"));
    let alert = drift_alert(None);
    chans[0].send(&alert).await.unwrap();

    let reqs = peer.requests();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(
        (r.method.as_str(), r.path.as_str()),
        ("POST", "/services/T000/B000/SLACK-SECRET")
    );
    assert_eq!(r.header("content-type"), Some("application/json"));
    let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(body, monitor::alert::slack::payload(&alert));
    assert_eq!(body["text"], alert.title.as_str());
    let blocks = body["blocks"].as_array().unwrap();
    assert_eq!(blocks[0]["type"], "header");
    let all = body.to_string();
    for needle in [
        "sunset",
        "DRIFT",
        "3.20e-3",
        "1.00e-3",
        "0.987654",
        "1.31.1 → 1.24.4",
    ] {
        assert!(all.contains(needle), "{needle} missing from {all}");
    }
}

#[tokio::test]
async fn http_failures_are_classified_without_the_url() {
    let peer = HttpPeer::start(vec![
        Reply::new(404, "no_service"),
        Reply::new(429, "").header("Retry-After", "7"),
        Reply::new(503, "maintenance"),
    ]);
    let url = format!("{}/services/T000/B000/SLACK-SECRET", peer.base_url());
    let chans = channels(&format!("slack:\n  webhook_url: '{url}'\n"));
    let alert = drift_alert(None);
    assert_eq!(
        chans[0].send(&alert).await,
        Err(SendError::Permanent("HTTP 404 no_service".into()))
    );
    assert_eq!(
        chans[0].send(&alert).await,
        Err(SendError::Retry {
            reason: "HTTP 429 Too Many Requests".into(),
            after: Some(Duration::from_secs(7)),
        })
    );
    assert_eq!(
        chans[0].send(&alert).await,
        Err(SendError::Retry {
            reason: "HTTP 503 maintenance".into(),
            after: None,
        })
    );

    // Nothing listens there: the transport error must not name the URL.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let chans = channels(&format!(
        "webhook:\n  url: 'http://127.0.0.1:{port}/hooks/T000/SECRET-TOKEN'\n"
    ));
    match chans[0].send(&alert).await {
        Err(SendError::Retry { reason, .. }) => {
            assert_eq!(reason, "connection refused");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn webhook_posts_the_alert_document_with_its_version() {
    let peer = HttpPeer::start(vec![]);
    let chans = channels(&format!("webhook:\n  url: '{}/hook'\n", peer.base_url()));
    let mut alert = drift_alert(None);
    alert.id = 42;
    chans[0].send(&alert).await.unwrap();

    let reqs = peer.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].method, "POST");
    assert_eq!(reqs[0].header("content-type"), Some("application/json"));
    assert_eq!(reqs[0].header("x-monitor-alert-version"), Some("1"));
    let back: Alert = serde_json::from_slice(&reqs[0].body).unwrap();
    assert_eq!(back, alert);
}

#[tokio::test]
async fn the_outbox_retries_until_delivered_and_honours_retry_after() {
    let peer = HttpPeer::start(vec![
        Reply::new(429, "slow down").header("Retry-After", "1"),
        // A server echoing the request path must not get the token into the database.
        Reply::new(500, "upstream failed for /hooks/T000/SECRET-TOKEN"),
        Reply::new(200, "ok"),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("history.db");
    let mut h = History::open(&db).unwrap();
    let chans = channels(&format!(
        "webhook:\n  url: '{}/hooks/T000/SECRET-TOKEN'\n",
        peer.base_url()
    ));
    let id = outbox::enqueue(&mut h, &drift_alert(None), &["webhook"]).unwrap();

    let report = deliver_until_done(&mut h, &chans, Duration::from_secs(10)).await;
    assert_eq!(
        report,
        DeliveryReport {
            delivered: 1,
            retrying: 2,
            failed: 0
        }
    );
    let reqs = peer.requests();
    assert_eq!(reqs.len(), 3);
    let gap = reqs[1].at - reqs[0].at;
    assert!(
        gap >= Duration::from_secs(1),
        "Retry-After 1 not honoured: {gap:?}"
    );
    assert!(
        reqs[2].at - reqs[1].at >= Duration::from_millis(200),
        "backoff doubled"
    );
    let sent: Alert = serde_json::from_slice(&reqs[2].body).unwrap();
    assert_eq!(sent.id, id, "the stored id goes out with the alert");

    let d = delivery(&h, id, "webhook");
    assert_eq!((d.state.as_str(), d.attempts), ("delivered", 3));
    let last = d.last_error.unwrap();
    assert!(last.starts_with("HTTP 500 upstream failed for"), "{last}");
    assert!(!last.contains("SECRET-TOKEN"), "{last}");
    drop(h);
    assert!(!contains(&database_bytes(&db), "SECRET-TOKEN"));
}

#[tokio::test]
async fn a_rejected_delivery_fails_for_good_with_its_reason() {
    let peer = HttpPeer::start(vec![Reply::new(400, "invalid_payload")]);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("history.db");
    let mut h = History::open(&db).unwrap();
    let url = format!("{}/services/T000/B000/SECRET-TOKEN", peer.base_url());
    let chans = channels(&format!("slack:\n  webhook_url: '{url}'\n"));
    let id = outbox::enqueue(&mut h, &drift_alert(None), &["slack"]).unwrap();

    let r = outbox::deliver_due(&mut h, &chans, &FAST).await.unwrap();
    assert_eq!(
        r,
        DeliveryReport {
            delivered: 0,
            retrying: 0,
            failed: 1
        }
    );
    let d = delivery(&h, id, "slack");
    assert_eq!(d.state, "failed");
    assert_eq!(d.last_error.as_deref(), Some("HTTP 400 invalid_payload"));
    assert_eq!(outbox::next_due(&h).unwrap(), None, "nothing left to retry");
    assert_eq!(outbox::undelivered(&h).unwrap(), 0);
    let r = outbox::deliver_due(&mut h, &chans, &FAST).await.unwrap();
    assert_eq!(r, DeliveryReport::default());
    assert_eq!(peer.requests().len(), 1, "not retried");
    drop(h);
    let bytes = database_bytes(&db);
    assert!(!contains(&bytes, "SECRET-TOKEN"));
    assert!(!contains(&bytes, &url));
}

#[tokio::test]
async fn smtp_down_then_up_delivers_exactly_once() {
    let sink = SmtpSink::start();
    let dir = tempfile::tempdir().unwrap();
    let mut h = History::open(dir.path().join("history.db")).unwrap();
    let chans = channels(&email_yaml(&sink, ""));
    sink.set_down(true);
    let id = outbox::enqueue(&mut h, &drift_alert(None), &["email"]).unwrap();

    let r = outbox::deliver_due(&mut h, &chans, &FAST).await.unwrap();
    assert_eq!(r.retrying, 1);
    let d = delivery(&h, id, "email");
    assert_eq!((d.state.as_str(), d.attempts), ("pending", 1));
    assert_eq!(d.last_error.as_deref(), Some("SMTP: connection refused"));

    sink.set_down(false);
    deliver_until_done(&mut h, &chans, Duration::from_secs(10)).await;
    let d = delivery(&h, id, "email");
    assert_eq!((d.state.as_str(), d.attempts), ("delivered", 2));
    let again = outbox::deliver_due(&mut h, &chans, &FAST).await.unwrap();
    assert_eq!(again, DeliveryReport::default());
    assert_eq!(sink.messages().len(), 1, "delivered exactly once");
    let mail = parse_mail(&sink.messages()[0].data);
    assert_eq!(mail.subject, drift_alert(None).title);
}

#[tokio::test]
async fn a_peer_that_hangs_times_out_and_is_retried() {
    let sink = SmtpSink::start();
    sink.set_stall(Duration::from_secs(3));
    let peer = HttpPeer::start(vec![Reply::new(200, "late").after(Duration::from_secs(3))]);
    let mut config = alerts_config(&format!(
        "{}webhook:\n  url: '{}/hook'\n",
        email_yaml(&sink, ""),
        peer.base_url()
    ));
    config.timeout = ConfigDuration(Duration::from_millis(300));
    let chans = build_channels(&config, Path::new(".")).unwrap();
    for (channel, expected) in chans
        .iter()
        .zip(["SMTP: timed out after 300ms", "timed out after 300ms"])
    {
        let start = Instant::now();
        let r = channel.send(&drift_alert(None)).await;
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{} did not time out",
            channel.name()
        );
        assert_eq!(
            r,
            Err(SendError::Retry {
                reason: expected.into(),
                after: None
            })
        );
    }
}

#[test]
fn alert_test_reports_each_channel_and_alerts_lists_them() {
    let sink = SmtpSink::start();
    let peer = HttpPeer::start(vec![Reply::new(404, "no_service")]);
    let site = Site::new(
        None,
        &format!(
            "alerts:\n  retry_initial: 1s\n  timeout: 3s\n{}  slack:\n    webhook_url: '${{MONITOR_TEST_SLACK_URL}}'\n",
            indent(&email_yaml(&sink, ""))
        ),
    );
    let url = format!("{}/services/T000/B000/SECRET-TOKEN", peer.base_url());
    let o = site
        .command(&["alert", "test"])
        .env("MONITOR_TEST_SLACK_URL", &url)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stdout}{stderr}");
    assert_eq!(
        stdout, "email: delivered\nslack: failed: HTTP 404 no_service (not retried)\n",
        "{stderr}"
    );
    assert_eq!(sink.messages().len(), 1);
    let mail = parse_mail(&sink.messages()[0].data);
    assert!(
        mail.subject.starts_with("[monitor] test alert from "),
        "{}",
        mail.subject
    );

    let o = site.run(&["alerts", "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rows: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(rows[0]["kind"], "test");
    assert_eq!(rows[0]["deliveries"][0]["state"], "delivered");
    assert_eq!(rows[0]["deliveries"][1]["state"], "failed");
    assert_eq!(
        rows[0]["deliveries"][1]["last_error"],
        "HTTP 404 no_service"
    );
    let o = site.run(&["alerts"]);
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(table.contains("email delivered, slack failed"), "{table}");
    assert!(
        table.contains("    slack: failed: HTTP 404 no_service (not retried)"),
        "{table}"
    );
    assert!(!contains(
        &database_bytes(&site.path("monitor.db")),
        "SECRET-TOKEN"
    ));
}

#[test]
fn alert_test_without_channels_says_so() {
    let site = Site::new(None, "");
    let o = site.run(&["alert", "test"]);
    assert_eq!(o.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("no alert channel configured"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

/// `yaml` indented by two spaces (to nest it under `alerts:`).
fn indent(yaml: &str) -> String {
    yaml.lines().map(|l| format!("  {l}\n")).collect()
}

#[test]
fn a_missing_secret_names_the_key_and_the_variable_not_a_value() {
    let config = alerts_config("slack:\n  webhook_url: '${MONITOR_TEST_UNSET_SLACK_URL}'\n");
    let e = build_channels(&config, Path::new(".")).err().unwrap();
    assert_eq!(
        e,
        "alerts.slack.webhook_url: environment variable MONITOR_TEST_UNSET_SLACK_URL is not set"
    );
    let config = alerts_config("webhook:\n  url: 'ftp://example.com/SECRET-TOKEN'\n");
    let e = build_channels(&config, Path::new(".")).err().unwrap();
    assert!(e.starts_with("alerts.webhook.url: "), "{e}");
    assert!(!e.contains("SECRET-TOKEN"), "{e}");
}

#[test]
fn the_mail_decoders_decode() {
    assert_eq!(base64_decode("aGVsbG8="), b"hello");
    assert_eq!(base64_decode("aGVs\r\nbG8"), b"hello");
    assert_eq!(qp_decode("a=3Db=\r\nc =CE=94"), "a=bc Δ".as_bytes());
    assert_eq!(decode_words("=?utf-8?b?zpQ=?= x"), "Δ x");
    assert_eq!(decode_words("=?utf-8?q?a_=CE=94?= =?utf-8?q?b?="), "a Δb");
}
