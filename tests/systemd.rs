//! The shipped systemd units are valid: `systemd-analyze verify` accepts them (with ExecStart
//! pointed at the binary under test, since /usr/local/bin/monitor is not installed here).

use std::process::Command;

#[test]
fn shipped_units_verify() {
    let dir = tempfile::tempdir().unwrap();
    let root = env!("CARGO_MANIFEST_DIR");
    for unit in ["monitor-check.service", "monitor-check.timer"] {
        let text = std::fs::read_to_string(format!("{root}/systemd/{unit}")).unwrap();
        let text = text.replace("/usr/local/bin/monitor", env!("CARGO_BIN_EXE_monitor"));
        std::fs::write(dir.path().join(unit), text).unwrap();
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(dir.path().join("monitor-check.service"))
        .arg(dir.path().join("monitor-check.timer"))
        .output()
        .expect("systemd-analyze (package systemd) is needed to verify the units");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.trim().is_empty(),
        "systemd-analyze verify: {err}"
    );
}
