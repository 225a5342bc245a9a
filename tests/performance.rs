//! Performance tracking: each result and baseline records stage times and memory, and a worker
//! slowed past `performance.max_slowdown` raises `slow` without touching the verdict.

mod common;

use common::site::{case, parse_check, Site, FOX};

/// The worker sleeps this long after each step (a throttled GPU), inside the generation time.
const DELAY: (&str, &str) = ("MONITOR_TEST_STEP_DELAY_MS", "100");

fn site() -> Site {
    Site::with_cases(None, &[FOX], "performance: {max_slowdown: 1.5}\n")
}

#[test]
fn a_slowed_worker_is_flagged_slow_and_stays_identical() {
    let site = site();
    site.rebaseline();
    // The baseline keeps the same figures as a result: per-step UNet times and memory.
    let b = site.store().current("fox").unwrap().unwrap();
    let t = b.metadata.timings.as_ref().unwrap();
    // One entry per UNet call: PNDM's 3 steps are 4 calls (its first step is taken twice).
    let calls = b.metadata.timesteps.as_ref().unwrap().len();
    assert_eq!(calls, 4);
    assert_eq!(t.unet_step_s.as_ref().map(Vec::len), Some(calls), "{t:?}");
    assert!(t.total_s.unwrap() > 0.0 && t.load_s.unwrap() > 0.0);
    #[cfg(unix)]
    assert!(
        b.metadata
            .resources
            .as_ref()
            .unwrap()
            .peak_rss_bytes
            .unwrap()
            > 10 << 20
    );

    let out = site
        .command(&["check", "--json"])
        .env(DELAY.0, DELAY.1)
        .output()
        .unwrap();
    let (code, run, stderr) = parse_check(out);
    assert_eq!(code, 0, "slow is not drift: {stderr}");
    let fox = case(&run, "fox");
    assert_eq!(fox["verdict"], "identical");
    let perf = &fox["performance"];
    assert_eq!(perf["slow"], true, "{perf}");
    // Four calls of 100 ms against a baseline of a few ms.
    assert!(perf["slowdown"].as_f64().unwrap() > 1.5, "{perf}");
    assert!(perf["generation_s"].as_f64().unwrap() >= 0.3, "{perf}");
    assert_eq!(perf["max_slowdown"], 1.5);

    // The table says so, and so does the history.
    let o = site
        .command(&["check"])
        .env(DELAY.0, DELAY.1)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("slow: ") && text.contains("× the baseline's generation time"),
        "{text}"
    );
    let h = site.run(&["history", "--case", "fox", "--limit", "1"]);
    let table = String::from_utf8_lossy(&h.stdout);
    assert!(table.contains("identical (slow)"), "{table}");
    assert!(
        table.contains("UNet step") && table.contains(" ms"),
        "{table}"
    );
    let rows = site.history();
    assert_eq!(rows[0]["timings"]["slow"], true, "{}", rows[0]);

    // And the metrics: slow, the ratio, and stage times, while the verdict gauge says identical.
    let prom = site.path("m.prom");
    let o = site
        .command(&["check", "--metrics-textfile", prom.to_str().unwrap()])
        .env(DELAY.0, DELAY.1)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0));
    let text = std::fs::read_to_string(&prom).unwrap();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    let value = |name: &str, labels: &[(&str, &str)]| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            })
    };
    assert_eq!(
        value("monitor_case_slow", &[("case", "fox")]),
        Some(1.0),
        "{text}"
    );
    assert!(value("monitor_case_slowdown_ratio", &[("case", "fox")]).unwrap() > 1.5);
    assert!(
        value(
            "monitor_case_stage_seconds",
            &[("case", "fox"), ("stage", "unet")]
        )
        .unwrap()
            > 0.0
    );
    assert_eq!(
        value(
            "monitor_case_verdict",
            &[("case", "fox"), ("verdict", "identical")]
        ),
        Some(1.0)
    );
    assert!(text.contains("onnxruntime=\"1.31.1\""), "{text}");
}

#[test]
fn the_same_slowness_in_baseline_and_check_is_not_slow() {
    let site = site();
    let o = site
        .command(&["rebaseline", "--reason", "slow host", "--yes"])
        .env(DELAY.0, DELAY.1)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = site
        .command(&["check", "--json"])
        .env(DELAY.0, DELAY.1)
        .output()
        .unwrap();
    let (code, run, stderr) = parse_check(out);
    assert_eq!(code, 0, "{stderr}");
    let perf = &case(&run, "fox")["performance"];
    assert_eq!(perf["slow"], false, "{perf}");
    let r = perf["slowdown"].as_f64().unwrap();
    assert!((0.5..1.5).contains(&r), "ratio {r}");
}

#[test]
fn max_slowdown_below_one_is_a_config_error_naming_the_key() {
    let site = Site::with_cases(None, &[FOX], "performance: {max_slowdown: 0.5}\n");
    let o = site.run(&["check"]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("performance.max_slowdown"), "{err}");
}
