//! The shipped systemd units and polkit rule: `systemd-analyze verify` accepts every unit (with
//! ExecStart pointed at the binary under test, since /usr/local/bin/monitor is not installed
//! here), the daemon unit keeps the settings the daemon depends on, and the polkit rule parses and
//! grants exactly one restart.
//!
//! Needs `systemd-analyze` (Debian package `systemd`) and `node` (package `nodejs`); without them
//! the test says `NOT RUN` and passes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const INSTALLED_BIN: &str = "/usr/local/bin/monitor";

/// Every `systemd/*.service` and `*.timer`, by file name.
fn shipped_units() -> Vec<PathBuf> {
    let dir = Path::new(ROOT).join("systemd");
    let mut units: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("service" | "timer")
            )
        })
        .collect();
    units.sort();
    units
}

fn have(program: &str) -> bool {
    Command::new(program).arg("--version").output().is_ok()
}

/// Lines of `systemd-analyze verify` output that are problems with the units in `dir`: every
/// line naming one of them (systemd prefixes each complaint with the file or unit name; a clean
/// unit gets no line). Lines about other units (the host's own) are not ours to fail on.
/// systemd-analyze exits 0 for unknown keys and unparsable values, so the exit status alone
/// proves nothing.
fn verify(dir: &Path, names: &[String]) -> (bool, Vec<String>, String) {
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(names)
        .current_dir(dir)
        .output()
        .expect("running systemd-analyze verify");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let problems = text
        .lines()
        .filter(|line| names.iter().any(|n| line.contains(n.as_str())))
        .map(str::to_string)
        .collect();
    (out.status.success(), problems, text)
}

/// Copies the units into a fresh folder with ExecStart on the built binary; returns their names.
fn staged_units(dir: &Path) -> Vec<String> {
    let mut names = Vec::new();
    for unit in shipped_units() {
        let text = std::fs::read_to_string(&unit)
            .unwrap_or_else(|e| panic!("reading {}: {e}", unit.display()));
        let text = text.replace(INSTALLED_BIN, env!("CARGO_BIN_EXE_monitor"));
        let name = unit.file_name().unwrap().to_string_lossy().into_owned();
        std::fs::write(dir.join(&name), text).expect("writing staged unit");
        names.push(name);
    }
    names
}

#[test]
fn shipped_units_verify() {
    if !have("systemd-analyze") {
        println!("NOT RUN: systemd-analyze not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let names = staged_units(dir.path());
    for required in [
        "monitor.service",
        "monitor-check.service",
        "monitor-check.timer",
    ] {
        assert!(
            names.iter().any(|n| n == required),
            "systemd/{required} is missing: {names:?}"
        );
    }
    let (ok, problems, text) = verify(dir.path(), &names);
    println!("systemd-analyze verify output:\n{text}");
    assert!(
        ok && problems.is_empty(),
        "systemd-analyze verify found problems:\n{}",
        problems.join("\n")
    );

    // The same check on a copy with a misspelt key and a bad value must complain; otherwise the
    // assertion above would pass on any unit whatever systemd-analyze says here.
    let broken = dir.path().join("broken-monitor.service");
    let text = std::fs::read_to_string(dir.path().join("monitor.service")).unwrap();
    let text = text
        .replace("\nWatchdogSec=", "\nWatchdogSecs=")
        .replace("\nKillMode=mixed", "\nKillMode=mixd");
    std::fs::write(&broken, text).unwrap();
    let (_, problems, text) = verify(dir.path(), &["broken-monitor.service".to_string()]);
    assert!(
        problems.iter().any(|l| l.contains("WatchdogSecs"))
            && problems.iter().any(|l| l.contains("mixd")),
        "systemd-analyze did not flag a broken unit, so the check proves nothing here:\n{text}"
    );
}

/// `[Section] Key=value` assignments, comments and blank lines skipped; repeated keys kept.
fn parse_unit(path: &Path) -> BTreeMap<(String, String), Vec<String>> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let mut section = String::new();
    let mut keys: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("{}: not a Key=value line: {line}", path.display()));
        keys.entry((section.clone(), key.trim().to_string()))
            .or_default()
            .push(value.trim().to_string());
    }
    keys
}

/// systemd time spans as the units write them (`90s`, `2min`, `1h`, a bare number of seconds).
fn timespan(value: &str) -> Duration {
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (n, unit) = value.split_at(split);
    let n: u64 = n
        .parse()
        .unwrap_or_else(|_| panic!("time span {value:?} has no number"));
    let secs = match unit.trim() {
        "" | "s" | "sec" => n,
        "min" | "m" => n * 60,
        "h" => n * 3600,
        other => panic!("time span {value:?}: unit {other:?} not handled by this test"),
    };
    Duration::from_secs(secs)
}

#[test]
fn daemon_unit_keeps_required_settings() {
    let systemd = Path::new(ROOT).join("systemd");
    let unit = parse_unit(&systemd.join("monitor.service"));
    let check = parse_unit(&systemd.join("monitor-check.service"));
    let get = |keys: &BTreeMap<(String, String), Vec<String>>, key: &str| -> Vec<String> {
        keys.get(&("Service".to_string(), key.to_string()))
            .cloned()
            .unwrap_or_default()
    };
    let one = |key: &str| -> String {
        let v = get(&unit, key);
        assert_eq!(
            v.len(),
            1,
            "monitor.service: expected exactly one {key}=, found {v:?}"
        );
        v[0].clone()
    };

    assert_eq!(one("Type"), "notify");
    assert_eq!(one("NotifyAccess"), "main");
    assert!(
        timespan(&one("WatchdogSec")) >= Duration::from_secs(10),
        "WatchdogSec too short for a 1/2 ping interval"
    );
    assert_eq!(one("Restart"), "on-failure");
    assert!(timespan(&one("RestartSec")) > Duration::ZERO);
    assert_eq!(one("KillMode"), "mixed");
    // The daemon's shutdown: 30 s worker grace + 10 s alert flush, which systemd must not cut.
    assert!(
        timespan(&one("TimeoutStopSec")) > Duration::from_secs(40),
        "TimeoutStopSec must exceed 30 s grace + 10 s flush"
    );
    assert_eq!(
        one("ExecStart"),
        format!("{INSTALLED_BIN} run --config /etc/monitor/monitor.yaml")
    );
    assert_eq!(one("NoNewPrivileges"), "yes");
    assert_eq!(one("ProtectSystem"), "strict");
    assert_eq!(one("PrivateTmp"), "yes");
    assert_eq!(one("StateDirectory"), "monitor");
    assert_eq!(one("DevicePolicy"), "closed");
    assert!(
        get(&unit, "DeviceAllow")
            .iter()
            .any(|v| v.starts_with("char-nvidia")),
        "DevicePolicy=closed without an NVIDIA DeviceAllow= hides the GPU"
    );
    // These two break CUDA: one hides /dev/nvidia*, the other forbids JIT-compiled code.
    for forbidden in ["PrivateDevices", "MemoryDenyWriteExecute"] {
        assert!(
            get(&unit, forbidden)
                .iter()
                .all(|v| matches!(v.as_str(), "no" | "false" | "0")),
            "monitor.service must not set {forbidden}"
        );
    }
    let creds = get(&unit, "LoadCredential");
    for id in ["smtp-password", "slack-webhook-url"] {
        assert!(
            creds
                .iter()
                .any(|c| c == &format!("{id}:/etc/monitor/credentials/{id}")),
            "LoadCredential for {id} missing: {creds:?}"
        );
    }
    // The daemon and the one-shot check share a user, state folder and binary.
    for key in ["User", "Group", "StateDirectory", "WorkingDirectory"] {
        assert_eq!(
            get(&unit, key),
            get(&check, key),
            "{key}= differs between monitor.service and monitor-check.service"
        );
    }
    assert_eq!(one("User"), "monitor");
    let check_exec = get(&check, "ExecStart");
    assert!(
        check_exec.iter().all(|e| e.starts_with(INSTALLED_BIN)),
        "{check_exec:?}"
    );
}

/// The rule as a script node can run, with a stub `polkit` that records the rule and answers
/// each (action id, user, unit, verb) from `cases`, one decision per line.
fn polkit_harness(rule: &str, cases: &[(&str, &str, &str, &str)]) -> String {
    let cases_js: Vec<String> = cases
        .iter()
        .map(|(id, user, unit, verb)| format!("[{id:?}, {user:?}, {unit:?}, {verb:?}]"))
        .collect();
    format!(
        r#""use strict";
var rules = [];
var polkit = {{ Result: {{ YES: "YES", NO: "NO", AUTH_ADMIN: "AUTH_ADMIN", NOT_HANDLED: "NOT_HANDLED" }},
               addRule: function (f) {{ rules.push(f); }} }};
{rule}
if (rules.length !== 1) {{ throw new Error("expected one rule, got " + rules.length); }}
[{cases}].forEach(function (c) {{
  var details = {{ unit: c[2], verb: c[3] }};
  var action = {{ id: c[0], lookup: function (k) {{ return details[k]; }} }};
  var subject = {{ user: c[1], local: false, active: false, groups: [] }};
  var r = rules[0](action, subject);
  console.log(r === undefined ? "NOT_HANDLED" : r);
}});
"#,
        cases = cases_js.join(", ")
    )
}

#[test]
fn polkit_rule_allows_exactly_one_restart() {
    let path = Path::new(ROOT).join("systemd/polkit/50-monitor-restart.rules");
    let rule = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    // polkit's JavaScript engine (duktape in polkit >= 121) is ES5: no arrows, no template strings.
    for (i, line) in rule.lines().enumerate() {
        let code = line.trim_start();
        if code.starts_with("//") {
            continue;
        }
        for newer in ["=>", "`", "let ", "const "] {
            assert!(
                !code.contains(newer),
                "{}:{}: {newer:?} is not ES5, which polkit may not parse: {line}",
                path.display(),
                i + 1
            );
        }
    }
    if !have("node") {
        println!("NOT RUN: node not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let js = dir.path().join("50-monitor-restart.js");
    std::fs::write(&js, &rule).unwrap();
    let check = Command::new("node")
        .arg("--check")
        .arg(&js)
        .output()
        .expect("running node --check");
    assert!(
        check.status.success(),
        "node --check: {}",
        String::from_utf8_lossy(&check.stderr)
    );

    let manage = "org.freedesktop.systemd1.manage-units";
    let cases = [
        (manage, "monitor", "sd-webui.service", "restart"),
        (manage, "monitor", "sd-webui.service", "stop"),
        (manage, "monitor", "sd-webui.service", "start"),
        (manage, "monitor", "sd-webui.service", "try-restart"),
        (manage, "monitor", "ssh.service", "restart"),
        (manage, "monitor", "sd-webui", "restart"),
        (manage, "someone", "sd-webui.service", "restart"),
        (
            "org.freedesktop.systemd1.manage-unit-files",
            "monitor",
            "sd-webui.service",
            "restart",
        ),
        ("org.freedesktop.login1.reboot", "monitor", "", ""),
    ];
    let harness = dir.path().join("harness.js");
    std::fs::write(&harness, polkit_harness(&rule, &cases)).unwrap();
    let out = Command::new("node")
        .arg(&harness)
        .output()
        .expect("running node");
    assert!(
        out.status.success(),
        "running the rule: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let decisions: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    let expected: Vec<&str> = std::iter::once("YES")
        .chain(std::iter::repeat_n("NOT_HANDLED", cases.len() - 1))
        .collect();
    assert_eq!(decisions, expected, "decisions for {cases:?}");
}
