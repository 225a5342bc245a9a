//! The fault matrix: full disks during every kind of write, read-only folders, kill -9 at random
//! moments of check and rebaseline, and concurrent checks and rebaselines on one store. Each
//! fault prints one line (`FAULT | what was done | exit code, verdicts | what was preserved`);
//! `cargo test --release --test faults --test defects -- --nocapture --test-threads 1 2>&1 | grep FAULT`
//! prints the whole matrix (tests/defects.rs adds the lines of the probe's defects).

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::site::{
    fault_line, integrity, names, on_full_disk, parse_check, read_only, snapshot, verdicts, Site,
    TIGHT,
};
use common::{kill_after, wait_for_workers_of, Lcg};

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// [`on_full_disk`], or a FAULT line saying why the fault could not be made here.
fn full_disk(
    fault: &str,
    dir: &std::path::Path,
    free: u64,
    cmd: std::process::Command,
) -> Option<std::process::Output> {
    let out = on_full_disk(dir, free, cmd);
    if out.is_none() {
        fault_line(
            fault,
            "NOT RUN: no mount namespace here (needs root with CAP_SYS_ADMIN)",
            "-",
        );
    }
    out
}

/// Results and runs in the database, by direct query.
fn counts(site: &Site) -> (i64, i64) {
    let conn = rusqlite::Connection::open(site.path("monitor.db")).unwrap();
    conn.query_row(
        "SELECT (SELECT count(*) FROM runs), (SELECT count(*) FROM results)",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .unwrap()
}

fn last_run_status(site: &Site) -> (String, Option<String>) {
    let conn = rusqlite::Connection::open(site.path("monitor.db")).unwrap();
    conn.query_row(
        "SELECT coalesce(status, ''), error FROM runs ORDER BY id DESC LIMIT 1",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .unwrap()
}

/// A site whose two cases have baselines made under ONNX Runtime 1.24.4, with thresholds that
/// call that drift, and the store's content.
fn drifting_site() -> (Site, Vec<(String, Vec<u8>)>) {
    let site = Site::new(None, TIGHT);
    site.rebaseline_with_old_ort(&[]);
    let before = store_snapshot(&site);
    (site, before)
}

/// Store content without lock files (taking a lock may create its file).
fn store_snapshot(site: &Site) -> Vec<(String, Vec<u8>)> {
    snapshot(&site.path("baselines"))
        .into_iter()
        .filter(|(p, _)| !p.ends_with(".lock"))
        .collect()
}

// ---- full disks ----

#[test]
fn full_disk_under_the_baselines_during_rebaseline() {
    let site = Site::new(None, "");
    site.rebaseline();
    let before = store_snapshot(&site);
    let fault = "baselines/ on a full tmpfs (0 bytes free), rebaseline of 2 cases";
    let Some(o) = full_disk(
        fault,
        &site.path("baselines"),
        0,
        site.command(&["rebaseline", "--reason", "on a full disk", "--yes"]),
    ) else {
        return;
    };
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert_eq!(store_snapshot(&site), before, "the store changed");
    let (status, error) = last_run_status(&site);
    assert_eq!(status, "failed");
    assert!(
        error
            .as_deref()
            .unwrap_or_default()
            .contains("No space left"),
        "{error:?}"
    );
    fault_line(
        fault,
        "exit 2, one line naming the file",
        "every version byte-identical, no temp folder, run recorded as failed",
    );
}

#[test]
fn full_disk_under_the_reports_during_a_drifting_check() {
    let site = Site::new(None, TIGHT);
    site.rebaseline_with_old_ort(&[]);
    std::fs::create_dir_all(site.path("reports")).unwrap();
    let fault = "reports/ on a full tmpfs (0 bytes free), drifting check";
    let Some(o) = full_disk(
        fault,
        &site.path("reports"),
        0,
        site.command(&["check", "--json"]),
    ) else {
        return;
    };
    let (code, v, err) = parse_check(o);
    assert_eq!(code, 1, "{err}");
    assert_eq!(verdicts(&v), ["drift", "drift"]);
    let warnings = v["cases"][0]["warnings"].to_string();
    assert!(warnings.contains("outputs not kept"), "{warnings}");
    // The HTML report cannot be written either: said beside the results, never instead of them.
    assert!(v.get("report").is_none(), "{v}");
    assert!(v["report_error"].is_string(), "{v}");
    let partial: Vec<String> = snapshot(&site.path("reports"))
        .into_iter()
        .map(|(p, _)| p)
        .filter(|p| !p.contains("/.tmp-"))
        .collect();
    assert!(partial.is_empty(), "{partial:?}");
    assert_eq!(counts(&site).1, 4, "2 rebaseline rows + 2 check rows");
    fault_line(
        fault,
        "exit 1, verdicts drift drift, warning 'outputs not kept'",
        "results in the table and the history; no partial report folder",
    );
}

#[test]
fn full_disk_under_the_database_during_check() {
    for free in [0u64, 48 << 10] {
        let site = Site::new(None, "");
        // The database in its own folder, so that only it is on the full disk.
        site.edit_config("database: monitor.db", "database: db/monitor.db");
        site.rebaseline();
        let db = site.path("db/monitor.db");
        let rows_before = {
            let c = rusqlite::Connection::open(&db).unwrap();
            c.query_row("SELECT count(*) FROM results", [], |r| r.get::<_, i64>(0))
                .unwrap()
        };
        let fault = format!("database folder on a full tmpfs ({free} bytes free), check");
        let Some(o) = full_disk(
            &fault,
            &site.path("db"),
            free,
            site.command(&["check", "--json"]),
        ) else {
            return;
        };
        let (code, v, err) = parse_check(o);
        assert!(code == 0 || code == 2, "{code}: {err}");
        assert_eq!(integrity(&db), "ok");
        let c = rusqlite::Connection::open(&db).unwrap();
        let rows_after: i64 = c
            .query_row("SELECT count(*) FROM results", [], |r| r.get(0))
            .unwrap();
        assert!(rows_after >= rows_before, "rows lost");
        let outcome = if code == 0 {
            "exit 0, recorded".to_string()
        } else if v.is_null() {
            format!("exit 2 before the model ran: {}", err.trim())
        } else {
            assert!(err.contains("results not recorded"), "{err}");
            assert_eq!(verdicts(&v), ["identical", "identical"]);
            "exit 2, results shown, 'results not recorded'".to_string()
        };
        fault_line(
            &fault,
            &outcome,
            &format!("integrity ok, {rows_before} earlier results intact"),
        );
    }
}

#[test]
fn full_disk_under_the_worker_folder_during_check() {
    let site = Site::new(None, "");
    site.rebaseline();
    let before = store_snapshot(&site);
    let tmp = site.path("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let mut cmd = site.command(&["check", "--json"]);
    cmd.env("TMPDIR", &tmp);
    let fault = "$TMPDIR (worker outputs) on a full tmpfs (0 bytes free), check";
    let Some(o) = full_disk(fault, &tmp, 0, cmd) else {
        return;
    };
    let (code, v, err) = parse_check(o);
    assert_eq!(code, 2, "{err}");
    if !v.is_null() {
        assert_eq!(verdicts(&v), ["error", "error"], "{v}");
    }
    assert_eq!(store_snapshot(&site), before);
    let (status, _) = last_run_status(&site);
    assert!(status == "finished" || status == "failed", "{status}");
    let outcome = if v.is_null() {
        format!("exit 2, one line: {}", err.trim())
    } else {
        format!("exit 2, every case error, run {status}")
    };
    fault_line(
        fault,
        &outcome,
        &format!("baselines untouched, run recorded as {status}"),
    );
}

// ---- read-only folders ----

#[test]
fn read_only_baselines_reports_and_database_folders() {
    let (site, before) = drifting_site();
    let baselines = site.path("baselines");

    let (mut c, g) = read_only(&[&baselines], site.command(&["check", "--json"]));
    let (code, v, err) = parse_check(c.output().unwrap());
    drop(g);
    assert_eq!(code, 1, "{err}");
    assert_eq!(verdicts(&v), ["drift", "drift"]);
    fault_line(
        "baselines/ read-only, check",
        "exit 1, verdicts drift drift (reading needs no write)",
        "store untouched",
    );

    let (mut c, g) = read_only(
        &[&baselines],
        site.command(&["rebaseline", "--reason", "read-only", "--yes"]),
    );
    let o = c.output().unwrap();
    drop(g);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert_eq!(store_snapshot(&site), before);
    assert_eq!(last_run_status(&site).0, "failed");
    fault_line(
        "baselines/ read-only, rebaseline",
        "exit 2, one line naming the folder",
        "store byte-identical, run recorded as failed",
    );

    std::fs::create_dir_all(site.path("reports")).unwrap();
    let (mut c, g) = read_only(&[&site.path("reports")], site.command(&["check", "--json"]));
    let (code, v, err) = parse_check(c.output().unwrap());
    drop(g);
    assert_eq!(code, 1, "{err}");
    assert!(v["cases"][0]["warnings"]
        .to_string()
        .contains("outputs not kept"));
    fault_line(
        "reports/ read-only, drifting check",
        "exit 1, warning 'outputs not kept'",
        "results in the table and the history",
    );

    // The database's folder read-only: its WAL files cannot be created.
    let db_dir = site.path("dbdir");
    std::fs::create_dir(&db_dir).unwrap();
    site.edit_config("database: monitor.db", "database: dbdir/monitor.db");
    site.rebaseline();
    let db = db_dir.join("monitor.db");
    let db_before = std::fs::read(&db).unwrap();
    let (mut c, g) = read_only(&[&db_dir], site.command(&["check"]));
    let start = Instant::now();
    let o = c.output().unwrap();
    drop(g);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("monitor.db"), "{err}");
    assert_eq!(std::fs::read(&db).unwrap(), db_before);
    fault_line(
        "database folder read-only, check",
        &format!(
            "exit 2 in {:.1}s, before the model ran",
            start.elapsed().as_secs_f64()
        ),
        "database byte-identical",
    );
}

// ---- kill -9 ----

#[test]
fn kill_9_of_check_at_random_moments() {
    let (site, before) = drifting_site();
    let tmp = site.path("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let start = Instant::now();
    let o = site
        .command(&["check"])
        .env("TMPDIR", &tmp)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let span = (start.elapsed().as_millis() as u64 * 6 / 5).max(50);
    let mut rng = Lcg(0xc4ec);
    let kills = 20;
    let mut killed = Vec::new();
    for _ in 0..kills {
        let mut cmd = site.command(&["check"]);
        cmd.env("TMPDIR", &tmp);
        killed.push(kill_after(cmd, Duration::from_millis(rng.next() % span)));
        assert_eq!(
            store_snapshot(&site),
            before,
            "a killed check changed the store"
        );
    }
    // The next check closes the killed runs and sweeps their work folders (once their workers,
    // which die with them, have finished dying).
    wait_for_workers_of(&killed);
    let o = site
        .command(&["check"])
        .env("TMPDIR", &tmp)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_eq!(integrity(&site.path("monitor.db")), "ok");
    let conn = rusqlite::Connection::open(site.path("monitor.db")).unwrap();
    let (unfinished, interrupted, finished): (i64, i64, i64) = conn
        .query_row(
            "SELECT sum(finished_at IS NULL), sum(status = 'interrupted'), sum(status = 'finished')
             FROM runs WHERE kind = 'check'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(unfinished, 0, "runs left open");
    // (ONNX Runtime keeps a `.ses` file of its own in $TMPDIR.)
    let leftovers: Vec<String> = std::fs::read_dir(&tmp)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("monitor-"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "work folders left in $TMPDIR: {leftovers:?}"
    );
    let partial: Vec<String> = snapshot(&site.path("reports"))
        .into_iter()
        .map(|(p, _)| p)
        .filter(|p| p.contains("/.tmp-"))
        .collect();
    fault_line(
        &format!("kill -9 of check at {kills} seeded moments over {span} ms"),
        &format!("{interrupted} runs closed as interrupted, {finished} finished"),
        &format!(
            "store byte-identical, history integrity ok, no work folder left, {} hidden partial report temp(s), no visible partial report",
            partial.len()
        ),
    );
}

#[test]
fn kill_9_of_rebaseline_at_random_moments() {
    let site = Site::new(None, "");
    let start = Instant::now();
    site.rebaseline();
    let span = (start.elapsed().as_millis() as u64 * 6 / 5).max(50);
    let mut rng = Lcg(0x4eba);
    let kills = 20;
    for _ in 0..kills {
        let cmd = site.command(&["rebaseline", "--reason", "killed", "--yes"]);
        kill_after(cmd, Duration::from_millis(rng.next() % span));
        site.store().recover().unwrap();
        let (fox, owl) = (
            site.store().version_numbers("fox").unwrap(),
            site.store().version_numbers("owl").unwrap(),
        );
        assert_eq!(fox.len(), owl.len(), "one case landed without the other");
        assert_eq!(fox, (1..=fox.len() as u32).collect::<Vec<_>>());
        for v in &fox {
            site.store().load("fox", *v).unwrap();
            site.store().load("owl", *v).unwrap();
        }
    }
    let versions = site.store().version_numbers("fox").unwrap().len();
    fault_line(
        &format!("kill -9 of rebaseline (2 cases) at {kills} seeded moments over {span} ms"),
        &format!(
            "{} of {kills} kills came after the batch was committed",
            versions - 1
        ),
        "only complete versions, no gaps, both cases always at the same version count",
    );
}

// ---- concurrency ----

#[test]
fn concurrent_checks_and_rebaselines_on_one_store() {
    let site = Site::new(None, "");
    site.rebaseline();
    let rounds = 3;
    for _ in 0..rounds {
        let children: Vec<_> = [
            vec!["check"],
            vec!["check"],
            vec!["rebaseline", "--reason", "concurrent", "--yes"],
            vec!["rebaseline", "--reason", "concurrent", "--yes"],
        ]
        .iter()
        .map(|args| {
            site.command(args)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
        for c in children {
            let out = c.wait_with_output().unwrap();
            assert!(out.status.success(), "{}", stderr(&out));
        }
    }
    let fox = site.store().version_numbers("fox").unwrap();
    let owl = site.store().version_numbers("owl").unwrap();
    assert_eq!(fox, (1..=1 + 2 * rounds as u32).collect::<Vec<_>>());
    assert_eq!(owl, fox);
    assert_eq!(integrity(&site.path("monitor.db")), "ok");
    let conn = rusqlite::Connection::open(site.path("monitor.db")).unwrap();
    let open: i64 = conn
        .query_row(
            "SELECT count(*) FROM runs WHERE status != 'finished'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(open, 0);
    fault_line(
        &format!("2 checks + 2 rebaselines at once on one store, {rounds} rounds"),
        "every exit 0, checks identical",
        &format!(
            "versions 1..={} for both cases, no gap, history integrity ok, every run finished",
            fox.len()
        ),
    );
}

#[test]
fn full_disk_under_a_snapshot_and_a_metrics_textfile() {
    let site = Site::new(None, "");
    site.rebaseline();
    let out = site.path("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("keep"), b"x").unwrap();
    let fault = "out/ on a full tmpfs (0 bytes free): snapshot as tar and as folder, check --metrics-textfile";
    for target in ["host.tar", "host"] {
        let path = out.join(target);
        let Some(o) = full_disk(
            fault,
            &out,
            0,
            site.command(&["snapshot", "--out", path.to_str().unwrap()]),
        ) else {
            return;
        };
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{target}: {err}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(err.contains("No space left"), "{err}");
        assert_eq!(
            names(&out),
            vec!["keep"],
            "{target}: nothing half-written is left"
        );
    }
    let prom = out.join("monitor.prom");
    let Some(o) = full_disk(
        fault,
        &out,
        0,
        site.command(&["check", "--metrics-textfile", prom.to_str().unwrap()]),
    ) else {
        return;
    };
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("writing metrics to"), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert_eq!(names(&out), vec!["keep"]);
    // The check itself was recorded: a full metrics folder costs the metrics only.
    let (status, _) = last_run_status(&site);
    assert_eq!(status, "finished");
    fault_line(
        fault,
        "exit 2, one line: No space left on device",
        "no partial tar, folder or .prom; the check recorded",
    );
}
