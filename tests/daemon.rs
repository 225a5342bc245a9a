//! `monitor run` end to end on the tiny model, with real peers on loopback that the tests start
//! themselves: an SMTP sink, HTTP servers standing in for Slack and a webhook, and a unix datagram
//! socket standing in for systemd's NOTIFY_SOCKET. Drift is real: the same model under another
//! ONNX Runtime release from PyPI, with thresholds that call any bit change drift.

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::peers::{parse_mail, HttpPeer, SmtpSink};
use common::site::{Site, FOX, TIGHT};
use common::{old_ort_lib, repo};
use serde_json::Value;

/// A `monitor run` child with its log in a file.
struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn start(site: &Site, args: &[&str], env: &[(&str, &str)]) -> Daemon {
        let log = site.path(&format!(
            "daemon-{}.log",
            Instant::now().elapsed().as_nanos()
        ));
        let log = unique(log);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_monitor"));
        cmd.arg("run")
            .args(args)
            .arg("--config")
            .arg(site.path("monitor.yaml"))
            .current_dir(repo())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        Daemon {
            child: cmd.spawn().unwrap(),
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let end = Instant::now() + within;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            if Instant::now() > end {
                let _ = self.child.kill();
                panic!(
                    "daemon did not exit within {within:?}; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Polls `cond` until it holds, or fails the test with the daemon's log.
    fn wait_for(&self, what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
        let end = Instant::now() + within;
        while !cond() {
            if Instant::now() > end {
                panic!("timed out waiting for {what}; daemon log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn unique(p: PathBuf) -> PathBuf {
    let mut n = 0;
    let mut q = p.clone();
    while q.exists() {
        n += 1;
        q = p.with_extension(format!("{n}.log"));
    }
    q
}

/// Rows of a query on the site's database, each as a JSON array.
fn query(site: &Site, sql: &str) -> Vec<Vec<Value>> {
    let Ok(conn) = rusqlite::Connection::open_with_flags(
        site.path("monitor.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    ) else {
        return Vec::new();
    };
    let Ok(mut stmt) = conn.prepare(sql) else {
        return Vec::new(); // not created yet
    };
    let n = stmt.column_count();
    stmt.query_map([], |r| {
        (0..n)
            .map(|i| {
                Ok(match r.get_ref(i)? {
                    rusqlite::types::ValueRef::Null => Value::Null,
                    rusqlite::types::ValueRef::Integer(v) => v.into(),
                    rusqlite::types::ValueRef::Real(v) => v.into(),
                    rusqlite::types::ValueRef::Text(t) => String::from_utf8_lossy(t).into(),
                    rusqlite::types::ValueRef::Blob(_) => Value::Null,
                })
            })
            .collect()
    })
    .and_then(|rows| rows.collect())
    .unwrap_or_default()
}

fn count(site: &Site, sql: &str) -> i64 {
    query(site, sql)
        .first()
        .and_then(|r| r[0].as_i64())
        .unwrap_or(0)
}

/// Check runs that finished (a scheduled round each).
fn finished_checks(site: &Site) -> i64 {
    count(
        site,
        "SELECT count(*) FROM runs WHERE kind = 'check' AND status = 'finished' AND trigger = 'schedule'",
    )
}

/// A fake systemd notification socket collecting every datagram.
struct NotifySocket {
    path: PathBuf,
    got: Arc<Mutex<Vec<String>>>,
}

impl NotifySocket {
    fn bind(dir: &Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let got: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = Arc::clone(&got);
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            loop {
                if let Ok(n) = sock.recv(&mut buf) {
                    sink.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&buf[..n]).into_owned());
                }
                if Arc::strong_count(&sink) == 1 {
                    return;
                }
            }
        });
        NotifySocket { path, got }
    }

    fn messages(&self) -> Vec<String> {
        self.got.lock().unwrap().clone()
    }
}

fn alerts_config(sink: &SmtpSink, webhook: &HttpPeer) -> String {
    format!(
        "alerts:\n  failure_threshold: 1\n  success_threshold: 1\n  send_resolved: true\n  reminder_interval: 0\n  retry_initial: 200ms\n  retry_max: 1s\n  timeout: 5s\n  slack: {{webhook_url: \"${{TEST_SLACK_URL}}\"}}\n  webhook: {{url: \"{}/hook\"}}\n  email: {{smtp_host: 127.0.0.1, smtp_port: {}, tls: none, from: monitor@example.org, to: [ops@example.org]}}\n",
        webhook.base_url(),
        sink.addr().port()
    )
}

/// `monitor run --once`, which must exit with `code`.
fn run_once(site: &Site, code: i32) -> std::process::Output {
    let o = site.run(&["run", "--once"]);
    assert_eq!(
        o.status.code(),
        Some(code),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// Webhook alert documents received, in order.
fn webhook_alerts(peer: &HttpPeer) -> Vec<Value> {
    peer.requests()
        .iter()
        .filter_map(|r| serde_json::from_slice(&r.body).ok())
        .collect()
}

fn kinds(alerts: &[Value]) -> Vec<String> {
    alerts
        .iter()
        .map(|a| a["kind"].as_str().unwrap_or("?").to_string())
        .collect()
}

#[test]
fn one_daemon_life_drift_restart_escalation_resolved_and_clean_stop() {
    let sink = SmtpSink::start();
    let webhook = HttpPeer::start(vec![]);
    let slack = HttpPeer::start(vec![]);
    let secret_path = "/services/T000/B000/SECRET-TOKEN-123";
    let slack_url = format!("{}{secret_path}", slack.base_url());
    let restarts = tempfile::NamedTempFile::new().unwrap();
    let site = Site::with_cases(
        None,
        &[FOX],
        &format!(
            "{TIGHT}schedule: \"*/2 * * * * *\"\n{}remediation:\n  restart: {{command: [sh, -c, \"echo restarted >> {}\"]}}\n  recheck_delay: 300ms\n  max_restarts: 3\n  window: 1h\ndaemon: {{shutdown_grace: 20s, flush_timeout: 5s}}\n",
            alerts_config(&sink, &webhook),
            restarts.path().display()
        ),
    );
    site.rebaseline();
    let notify = NotifySocket::bind(site.dir.path());
    let mut d = Daemon::start(
        &site,
        &[],
        &[
            ("NOTIFY_SOCKET", notify.path.to_str().unwrap()),
            ("WATCHDOG_USEC", "1000000"),
            ("TEST_SLACK_URL", &slack_url),
        ],
    );
    let long = Duration::from_secs(90);

    // Identical rounds: nothing to say.
    d.wait_for("two identical rounds", long, || finished_checks(&site) >= 2);
    assert!(
        sink.messages().is_empty() && webhook.requests().is_empty() && slack.requests().is_empty()
    );

    // A real drift: the same model under ONNX Runtime 1.24.4, picked up on SIGHUP.
    let cfg = site.path("monitor.yaml");
    let good = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        format!(
            "{good}onnxruntime: {{library: {}}}\n",
            old_ort_lib().display()
        ),
    )
    .unwrap();
    d.signal(libc::SIGHUP);
    d.wait_for("firing and escalation on the webhook", long, || {
        let k = kinds(&webhook_alerts(&webhook));
        k.contains(&"firing".to_string()) && k.contains(&"escalation".to_string())
    });
    let alerts = webhook_alerts(&webhook);
    let firing = &alerts[0];
    assert_eq!(firing["kind"], "firing", "{alerts:?}");
    assert_eq!(firing["severity"], "drift");
    assert_eq!(firing["version"], 1);
    assert_eq!(firing["cases"][0]["name"], "fox");
    assert_eq!(firing["cases"][0]["verdict"], "drift");
    // The alert points at the round's HTML report, at the case's section, and the page is there.
    let report = firing["cases"][0]["report_dir"].as_str().unwrap();
    let (page, anchor) = report.split_once('#').unwrap();
    assert_eq!(anchor, "case-fox", "{firing}");
    assert!(
        page.ends_with("/index.html") && std::path::Path::new(page).is_file(),
        "{report}"
    );
    let max_abs = &firing["cases"][0]["metrics"][0];
    assert_eq!(max_abs["name"], "latent_max_abs");
    assert!(max_abs["value"].as_f64().unwrap() > 0.0 && max_abs["ok"] == false);
    assert!(
        firing["cases"][0]["env_changes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e.as_str().unwrap().contains("1.24.4")),
        "{firing}"
    );
    // The restart command ran once, and the re-check still drifted: escalation.
    assert_eq!(
        std::fs::read_to_string(restarts.path()).unwrap(),
        "restarted\n"
    );
    let esc = alerts.iter().find(|a| a["kind"] == "escalation").unwrap();
    assert!(
        esc["title"].as_str().unwrap().contains("did not fix fox"),
        "{esc}"
    );
    let actions = query(&site, "SELECT kind, outcome FROM actions ORDER BY id");
    assert_eq!(
        actions,
        vec![
            vec![Value::from("restart"), Value::from("ok")],
            vec![Value::from("recheck"), Value::from("still_drifting")]
        ]
    );
    // The same alerts reached email (with the diff heatmap) and Slack.
    d.wait_for("two emails and two Slack posts", long, || {
        sink.messages().len() >= 2 && slack.requests().len() >= 2
    });
    let mail = parse_mail(&sink.messages()[0].data);
    assert!(
        mail.subject.contains("DRIFT") && mail.subject.contains("fox"),
        "{}",
        mail.subject
    );
    let text = mail.text.clone().unwrap();
    assert!(text.contains("fox") && text.contains("drift"), "{text}");
    assert!(mail.html.as_deref().unwrap().contains("fox"));
    let (name, png) = &mail.attachments[0];
    assert_eq!(name, "fox-diff.png");
    assert_eq!(&png[1..4], b"PNG");
    let slack_first: Value = serde_json::from_slice(&slack.requests()[0].body).unwrap();
    assert!(
        slack_first["blocks"].is_array() && slack_first["text"].as_str().unwrap().contains("fox")
    );

    // Switched back: the next round is identical again, and the case resolves.
    std::fs::write(&cfg, &good).unwrap();
    d.signal(libc::SIGHUP);
    d.wait_for("resolved on the webhook", long, || {
        kinds(&webhook_alerts(&webhook)).contains(&"resolved".to_string())
    });
    // Drift fired once: later drifting rounds (escalated) and identical rounds said nothing more.
    assert_eq!(
        kinds(&webhook_alerts(&webhook)),
        ["firing", "escalation", "resolved"]
    );

    // `monitor status` reads it all from the database while the daemon runs.
    let o = site.run(&["status", "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let status: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(status["daemon"]["state"], "running");
    assert_eq!(status["cases"][0]["alert"], "ok");
    assert_eq!(status["cases"][0]["last_verdict"], "identical");
    assert_eq!(status["last_actions"][0]["outcome"], "still_drifting");
    let text = String::from_utf8(site.run(&["status"]).stdout).unwrap();
    assert!(text.starts_with("daemon: running (pid "), "{text}");
    assert!(
        text.contains("last remediation: ") && text.contains("recheck for fox: still_drifting"),
        "{text}"
    );

    // Every check ran in a worker: the daemon never mapped ONNX Runtime (so the GPU is free
    // between checks).
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", d.child.id())).unwrap();
    assert!(
        !maps.contains("onnxruntime"),
        "the daemon loaded ONNX Runtime"
    );

    d.signal(libc::SIGTERM);
    let exit = d.wait_exit(Duration::from_secs(30));
    assert_eq!(exit.code(), Some(0), "log:\n{}", d.log());
    let got = notify.messages();
    for m in ["READY=1", "WATCHDOG=1", "STOPPING=1"] {
        assert!(got.iter().any(|g| g == m), "{m} not received: {got:?}");
    }
    assert!(
        got.iter()
            .any(|g| g.starts_with("STATUS=last: 1 case: 1 identical")),
        "{got:?}"
    );
    // The Slack URL is a secret: not in the log, not in the database.
    let log = d.log();
    assert!(!log.contains("SECRET-TOKEN"), "{log}");
    let db = std::fs::read(site.path("monitor.db")).unwrap();
    assert!(!db.windows(12).any(|w| w == b"SECRET-TOKEN"));
    assert!(log.contains("config reloaded"), "{log}");
}

#[test]
fn ticks_during_a_running_check_are_skipped_and_a_broken_reload_keeps_the_old_config() {
    let site = Site::with_cases(None, &[FOX], "schedule: \"* * * * * *\"\n");
    site.rebaseline();
    // Hold the model device as a manual `monitor check` would: the daemon's round waits for it,
    // and the ticks that come meanwhile must be skipped, not queued.
    let lock = monitor::device_lock::acquire(
        &site.path("monitor.db"),
        "cpu",
        Duration::ZERO,
        &monitor::worker::Cancel::new(),
        |_| {},
    )
    .unwrap();
    let mut d = Daemon::start(&site, &[], &[]);
    let long = Duration::from_secs(90);
    d.wait_for("two skipped ticks", long, || {
        count(&site, "SELECT count(*) FROM runs WHERE status = 'skipped'") >= 2
    });
    assert!(d.log().contains("waiting for device cpu"), "{}", d.log());
    assert_eq!(finished_checks(&site), 0);
    drop(lock);
    d.wait_for("the waiting round to finish", long, || {
        finished_checks(&site) >= 1
    });
    let skipped = query(
        &site,
        "SELECT trigger, skipped_reason, finished_at IS NOT NULL FROM runs WHERE status = 'skipped' LIMIT 1",
    );
    assert_eq!(skipped[0][0], "schedule");
    assert!(skipped[0][1].as_str().unwrap().contains("still running"));
    assert_eq!(skipped[0][2], 1);
    // Checks never overlap: at most one run is unfinished at any time.
    assert!(count(&site, "SELECT count(*) FROM runs WHERE finished_at IS NULL") <= 1);

    // SIGUSR1 checks now (its run says what started it).
    d.signal(libc::SIGUSR1);
    d.wait_for("a check started by SIGUSR1", long, || {
        count(&site, "SELECT count(*) FROM runs WHERE trigger = 'signal'") >= 1
    });

    // SIGHUP with a broken file: refused with its one-line error, the old config keeps running.
    let cfg = site.path("monitor.yaml");
    let good = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, good.replace("steps: 3", "steps: many")).unwrap();
    d.signal(libc::SIGHUP);
    d.wait_for("the reload refusal in the log", long, || {
        d.log().contains("config reload refused")
    });
    let line = d
        .log()
        .lines()
        .find(|l| l.contains("config reload refused"))
        .unwrap()
        .to_string();
    assert!(line.contains("cases[0].steps"), "{line}");
    let before = finished_checks(&site);
    d.wait_for("another round under the old config", long, || {
        finished_checks(&site) > before
    });
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait_exit(Duration::from_secs(60)).code(), Some(0));
}

#[test]
fn a_hung_worker_is_killed_at_the_timeout_and_alerts_as_an_error_without_a_restart() {
    let webhook = HttpPeer::start(vec![]);
    let restarts = tempfile::NamedTempFile::new().unwrap();
    let slow = "{name: slow, prompt: \"a slow fox\", seed: 5, steps: 200, width: 256, height: 256, scheduler: pndm, noise: numpy}";
    let site = Site::with_cases(
        None,
        &[slow],
        &format!(
            "worker: {{timeout_s: 1.0}}\nalerts: {{retry_initial: 200ms, webhook: {{url: \"{}/hook\"}}}}\nremediation: {{restart: {{command: [sh, -c, \"echo restarted >> {}\"]}}, recheck_delay: 100ms}}\n",
            webhook.base_url(),
            restarts.path().display()
        ),
    );
    let start = Instant::now();
    let o = run_once(&site, 2);
    assert!(start.elapsed() < Duration::from_secs(30));
    let alerts = webhook_alerts(&webhook);
    assert!(
        !alerts.is_empty(),
        "no alert; stderr: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(kinds(&alerts), ["firing"]);
    assert_eq!(alerts[0]["severity"], "error");
    let title = alerts[0]["title"].as_str().unwrap();
    assert!(
        title.contains("CHECK ERROR") && !title.contains("DRIFT"),
        "{title}"
    );
    let err = alerts[0]["cases"][0]["error"].as_str().unwrap();
    assert!(
        err.contains("timeout") || err.contains("no baseline"),
        "{err}"
    );
    // An error is not drift: nothing is restarted.
    assert_eq!(std::fs::read_to_string(restarts.path()).unwrap(), "");
    assert_eq!(count(&site, "SELECT count(*) FROM actions"), 0);
}

#[test]
fn a_failing_or_hanging_restart_is_recorded_and_escalated() {
    for (command, outcome) in [
        ("[sh, -c, \"echo no permission >&2; exit 3\"]", "failed"),
        ("[sleep, \"30\"]", "timed_out"),
    ] {
        let webhook = HttpPeer::start(vec![]);
        let site = Site::with_cases(
            None,
            &[FOX],
            &format!(
                "{TIGHT}alerts: {{retry_initial: 200ms, webhook: {{url: \"{}/hook\"}}}}\nremediation: {{restart: {{command: {command}}}, timeout: 500ms, recheck_delay: 100ms}}\n",
                webhook.base_url()
            ),
        );
        // Baselines from another runtime release: every check drifts.
        site.rebaseline_with_old_ort(&[]);
        let start = Instant::now();
        run_once(&site, 1);
        assert!(
            start.elapsed() < Duration::from_secs(25),
            "a hanging restart held the round"
        );
        let actions = query(&site, "SELECT kind, outcome, detail FROM actions");
        assert_eq!(actions.len(), 1, "{actions:?}");
        assert_eq!(
            (actions[0][0].as_str(), actions[0][1].as_str()),
            (Some("restart"), Some(outcome))
        );
        if outcome == "failed" {
            let detail = actions[0][2].as_str().unwrap();
            assert!(
                detail.contains('3') && detail.contains("no permission"),
                "{detail}"
            );
        }
        let alerts = webhook_alerts(&webhook);
        assert_eq!(kinds(&alerts), ["firing", "escalation"], "{outcome}");
        let summary = alerts[1]["summary"].as_str().unwrap();
        assert!(summary.contains(&outcome.replace('_', " ")), "{summary}");
    }
}

#[test]
fn alerts_pending_when_the_daemon_is_killed_are_sent_once_by_the_next_one() {
    let sink = SmtpSink::start();
    sink.set_down(true);
    let webhook = HttpPeer::start(vec![]);
    let site = Site::with_cases(
        None,
        &[FOX],
        &format!(
            "{TIGHT}schedule: \"*/2 * * * * *\"\nalerts: {{retry_initial: 200ms, retry_max: 500ms, webhook: {{url: \"{}/hook\"}}, email: {{smtp_host: 127.0.0.1, smtp_port: {}, tls: none, from: m@example.org, to: [ops@example.org]}}}}\n",
            webhook.base_url(),
            sink.addr().port()
        ),
    );
    site.rebaseline_with_old_ort(&[]);
    let d = Daemon::start(&site, &[], &[]);
    let long = Duration::from_secs(60);
    d.wait_for(
        "the webhook delivery and failed email attempts",
        long,
        || {
            webhook.requests().len() == 1
                && count(
                    &site,
                    "SELECT attempts FROM deliveries WHERE channel = 'email' AND state = 'pending'",
                ) >= 2
        },
    );
    d.signal(libc::SIGKILL);
    drop(d);
    assert!(sink.messages().is_empty());

    // The SMTP server is back; a new daemon (whose schedule will not come for a year) sends
    // what was pending, and nothing that was delivered.
    sink.set_down(false);
    site.edit_config("schedule: \"*/2 * * * * *\"", "schedule: \"0 0 0 1 1 *\"");
    let mut d = Daemon::start(&site, &[], &[]);
    d.wait_for("the email", long, || !sink.messages().is_empty());
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait_exit(Duration::from_secs(30)).code(), Some(0));
    assert_eq!(sink.messages().len(), 1);
    assert_eq!(webhook.requests().len(), 1);
    let mail = parse_mail(&sink.messages()[0].data);
    assert!(mail.subject.contains("DRIFT"), "{}", mail.subject);
    assert_eq!(
        count(
            &site,
            "SELECT count(*) FROM deliveries WHERE state != 'delivered'"
        ),
        0
    );
    // The run the killed daemon left open is closed as interrupted at start-up (if it was killed
    // mid-check), never left "running".
    assert_eq!(
        count(&site, "SELECT count(*) FROM runs WHERE status = 'running'"),
        0
    );
}

#[test]
fn auto_rebaseline_stores_new_baselines_when_drift_persists_after_a_restart() {
    let webhook = HttpPeer::start(vec![]);
    let site = Site::with_cases(
        None,
        &[FOX],
        &format!(
            "{TIGHT}alerts: {{retry_initial: 200ms, webhook: {{url: \"{}/hook\"}}}}\nremediation: {{restart: {{command: [\"true\"]}}, recheck_delay: 100ms, auto_rebaseline: true}}\n",
            webhook.base_url()
        ),
    );
    site.rebaseline_with_old_ort(&[]);
    run_once(&site, 1);
    let alerts = webhook_alerts(&webhook);
    assert_eq!(kinds(&alerts), ["firing", "escalation", "auto_rebaseline"]);
    assert!(
        alerts[2]["title"].as_str().unwrap().contains("fox v0002"),
        "{}",
        alerts[2]
    );
    // The new version is current, says why, and the next round is identical with no alert.
    let current = site.store().current("fox").unwrap().unwrap();
    assert_eq!(current.version, 2);
    let meta = serde_json::to_string(&current.metadata).unwrap();
    assert!(
        meta.contains("automatic: drift persisted after restart"),
        "{meta}"
    );
    let actions = query(&site, "SELECT kind, outcome FROM actions ORDER BY id");
    let kinds_outcomes: Vec<(String, String)> = actions
        .iter()
        .map(|r| (r[0].as_str().unwrap().into(), r[1].as_str().unwrap().into()))
        .collect();
    assert_eq!(
        kinds_outcomes,
        [
            ("restart".into(), "ok".into()),
            ("recheck".into(), "still_drifting".into()),
            ("auto_rebaseline".into(), "ok".into())
        ]
    );
    run_once(&site, 0);
    assert_eq!(webhook_alerts(&webhook).len(), 3);
}

#[test]
fn config_validate_warns_about_what_would_stop_the_daemon() {
    let site = Site::with_cases(
        None,
        &[FOX],
        "alerts: {slack: {webhook_url: \"${MONITOR_TEST_UNSET_VAR}\"}}\nremediation: {restart: {unit: no-such-unit-4711.service}}\n",
    );
    let o = site.run(&["config", "validate"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains(
            "alerts.slack.webhook_url: environment variable MONITOR_TEST_UNSET_VAR is not set"
        ),
        "{err}"
    );
    assert!(err.contains("no-such-unit-4711.service"), "{err}");
    assert!(err.contains("no schedule"), "{err}");
    // The daemon itself refuses to start without the secret, with the same one line.
    let o = site.run(&["run", "--once"]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("MONITOR_TEST_UNSET_VAR is not set") && err.lines().count() == 1,
        "{err}"
    );
}

#[test]
fn a_host_without_ca_certificates_still_sends_plain_http_alerts() {
    // Seen in a minimal Debian container under systemd: without the ca-certificates package the
    // HTTP client refused to build, and with it the whole daemon refused to start.
    let webhook = HttpPeer::start(vec![]);
    let site = Site::with_cases(
        None,
        &[FOX],
        &format!(
            "alerts: {{webhook: {{url: \"{}/hook\"}}}}\n",
            webhook.base_url()
        ),
    );
    let empty = tempfile::tempdir().unwrap();
    std::fs::write(empty.path().join("none.pem"), "").unwrap();
    let o = site
        .command(&["alert", "test"])
        .env("SSL_CERT_FILE", empty.path().join("none.pem"))
        .env("SSL_CERT_DIR", empty.path())
        .output()
        .unwrap();
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert_eq!(o.status.code(), Some(0), "{out}{err}");
    assert!(out.contains("webhook: delivered"), "{out}");
    assert!(err.contains("no usable system CA certificates"), "{err}");
    assert_eq!(webhook_alerts(&webhook).len(), 1);
}

#[test]
fn sigterm_does_not_wait_for_a_stalled_alert_delivery() {
    // The webhook takes 60 s to answer; the stop must not wait for it beyond the flush timeout.
    let webhook = HttpPeer::start(vec![
        common::peers::Reply::new(200, "ok").after(Duration::from_secs(60))
    ]);
    let site = Site::with_cases(
        None,
        &[FOX],
        &format!(
            "{TIGHT}schedule: \"*/2 * * * * *\"\nalerts: {{timeout: 2m, webhook: {{url: \"{}/hook\"}}}}\ndaemon: {{shutdown_grace: 5s, flush_timeout: 2s}}\n",
            webhook.base_url()
        ),
    );
    site.rebaseline_with_old_ort(&[]);
    let mut d = Daemon::start(&site, &[], &[]);
    // The peer records a request once it has read it, before its delayed answer.
    d.wait_for("the webhook request", Duration::from_secs(60), || {
        !webhook.requests().is_empty()
    });
    let start = Instant::now();
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait_exit(Duration::from_secs(40)).code(), Some(0));
    let took = start.elapsed();
    // Grace for a running check (5 s at most) plus twice the flush timeout, with slack.
    assert!(
        took < Duration::from_secs(15),
        "stop took {took:?}; log:\n{}",
        d.log()
    );
    assert!(d.log().contains("did not end within 2s"), "{}", d.log());
}

#[test]
fn sigterm_during_a_hanging_restart_stops_in_time_and_kills_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("restart.pid");
    let site = Site::with_cases(
        None,
        &[FOX],
        &format!(
            "{TIGHT}schedule: \"*/2 * * * * *\"\nremediation: {{restart: {{command: [sh, -c, \"echo $$ > {}; exec sleep 60\"]}}, timeout: 2m}}\ndaemon: {{shutdown_grace: 1s, flush_timeout: 1s}}\n",
            pidfile.display()
        ),
    );
    site.rebaseline_with_old_ort(&[]);
    let mut d = Daemon::start(&site, &[], &[]);
    d.wait_for("the restart command", Duration::from_secs(60), || {
        std::fs::read_to_string(&pidfile).is_ok_and(|s| s.ends_with('\n'))
    });
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let start = Instant::now();
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait_exit(Duration::from_secs(60)).code(), Some(0));
    let took = start.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "stop took {took:?}; log:\n{}",
        d.log()
    );
    // Gone, or a zombie waiting for an init that does not reap: either way not running.
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let running = state
        .rsplit(')')
        .next()
        .and_then(|r| r.split_whitespace().next())
        .is_some_and(|s| s != "Z");
    assert!(
        !running,
        "the restart command {pid} outlived the daemon: {state}"
    );
}

#[test]
fn a_case_that_becomes_slow_alerts_once_and_stays_identical() {
    let webhook = HttpPeer::start(vec![]);
    let site = Site::with_cases(
        None,
        &[FOX],
        &format!(
            "performance: {{max_slowdown: 1.5}}\nalerts:\n  timeout: 5s\n  webhook: {{url: \"{}/hook\"}}\n",
            webhook.base_url()
        ),
    );
    // Every run sleeps a little each step so that timing noise of the tiny model (a few ms)
    // cannot reach the 1.5x limit; "slow" rounds sleep five times as long.
    let round = |delay_ms: &str| {
        let o = site
            .command(&["run", "--once"])
            .env("MONITOR_TEST_STEP_DELAY_MS", delay_ms)
            .output()
            .unwrap();
        assert_eq!(
            o.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    let o = site
        .command(&["rebaseline", "--reason", "t", "--yes"])
        .env("MONITOR_TEST_STEP_DELAY_MS", "20")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    round("20");
    assert!(webhook_alerts(&webhook).is_empty());
    // A worker slowed to 100 ms a step (a throttled GPU): two rounds, one alert.
    round("100");
    round("100");
    let alerts = webhook_alerts(&webhook);
    assert_eq!(kinds(&alerts), ["slow"], "{alerts:?}");
    let slow = &alerts[0];
    assert_eq!(slow["severity"], "info");
    assert_eq!(slow["cases"][0]["name"], "fox");
    assert_eq!(
        slow["cases"][0]["verdict"], "identical",
        "speed never changes the verdict"
    );
    assert!(
        slow["title"]
            .as_str()
            .unwrap()
            .contains("× the baseline's generation time"),
        "{slow}"
    );
    // Back to normal speed, then slow again: a new alert for the new episode.
    round("20");
    round("100");
    assert_eq!(kinds(&webhook_alerts(&webhook)), ["slow", "slow"]);
}

#[test]
fn quick_schedule_checks_each_network_and_sends_only_differences_to_a_full_check() {
    let webhook = HttpPeer::start(vec![]);
    let site = Site::with_cases(
        None,
        &[FOX],
        &format!(
            "{TIGHT}quick_schedule: \"*/2 * * * * *\"\nalerts:\n  failure_threshold: 1\n  timeout: 5s\n  webhook: {{url: \"{}/hook\"}}\n",
            webhook.base_url()
        ),
    );
    site.rebaseline();
    let mut d = Daemon::start(&site, &[], &[]);
    let long = Duration::from_secs(90);
    let quick_runs = || {
        count(
            &site,
            "SELECT count(*) FROM runs WHERE kind = 'quick' AND status = 'finished' AND trigger = 'quick_schedule'",
        )
    };
    d.wait_for("two quick checks", long, || quick_runs() >= 2);
    // Same bits: no full check, no alert.
    assert_eq!(
        count(&site, "SELECT count(*) FROM runs WHERE kind = 'check'"),
        0
    );
    assert!(webhook_alerts(&webhook).is_empty());

    // The UNet's kernels change (graph optimization off): the next quick check differs at the
    // UNet, and the full check it starts is drift, which alerts.
    site.edit_config("threads: 1}", "threads: 1, graph_optimization: disable}");
    d.signal(libc::SIGHUP);
    d.wait_for("a full check started by a quick one", long, || {
        count(
            &site,
            "SELECT count(*) FROM runs WHERE kind = 'check' AND trigger = 'quick' AND status = 'finished'",
        ) >= 1
    });
    d.wait_for("the drift alert", long, || {
        !webhook_alerts(&webhook).is_empty()
    });
    let alerts = webhook_alerts(&webhook);
    assert_eq!(kinds(&alerts)[0], "firing", "{alerts:?}");
    assert_eq!(alerts[0]["severity"], "drift");
    assert_eq!(alerts[0]["cases"][0]["name"], "fox");
    let differs = query(
        &site,
        "SELECT r.verdict, r.reasons_json FROM results r JOIN runs u ON u.id = r.run_id WHERE u.kind = 'quick' AND r.verdict = 'drift' LIMIT 1",
    );
    assert!(
        differs[0][1]
            .as_str()
            .unwrap()
            .contains("step 1 noise_pred"),
        "{differs:?}"
    );
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait_exit(Duration::from_secs(60)).code(), Some(0));
}
