//! The history at scale: insert 1,000,000 result rows (50,000 runs of 20 cases, one transaction
//! per run's results, as `monitor check` writes them), then time the queries `monitor history`
//! and the alerting make (median of many), opening, `PRAGMA quick_check` and a 10 % prune.
//! Run with `cargo bench --bench history`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use monitor::clock::rfc3339;
use monitor::history::{CaseResult, History, NewRun};
use serde_json::json;

const RUNS: usize = 50_000;
const CASES: usize = 20;

fn median_ms(mut f: impl FnMut()) -> (f64, usize) {
    for _ in 0..5 {
        f();
    }
    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < 200 || (start.elapsed() < Duration::from_secs(1) && times.len() < 100_000) {
        let t = Instant::now();
        f();
        times.push(t.elapsed());
    }
    times.sort();
    (times[times.len() / 2].as_secs_f64() * 1e3, times.len())
}

fn result(case: usize, i: usize) -> CaseResult {
    let verdict = match i % 50 {
        0 => "drift",
        1..=5 => "within_tolerance",
        _ => "identical",
    };
    CaseResult {
        case_name: format!("case-{case:02}"),
        verdict: verdict.parse().expect("verdict"),
        baseline_version: Some(1 + (i / 10_000) as i64),
        latents_sha256: Some(format!("{:064x}", i * CASES + case)),
        latent_max_abs: Some(1e-4 * (i % 7) as f64),
        latent_mean_abs: Some(1e-5),
        latent_rmse: Some(2e-5),
        latent_cosine: Some(0.999_999),
        ssim: Some(0.9995),
        psnr_db: Some(52.5),
        pixels_differing: Some((i % 100) as i64),
        reasons: (verdict == "drift").then(|| json!(["latent max |Δ| above tolerance"])),
        env_diff: None,
        error: None,
        duration_s: Some(14.2),
        timings: Some(json!({"text_encoder_s": 0.1, "unet_s": 13.0, "vae_s": 1.1})),
        details: None,
    }
}

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("bench.db");
    let mut h = History::open(&path).expect("open");

    // One run every 15 minutes, ending now-ish: ~1.4 years of history.
    let t0: u64 = 1_750_000_000;
    let start = Instant::now();
    for i in 0..RUNS {
        let run = h
            .begin_run(&NewRun {
                kind: "check".into(),
                trigger: Some("schedule".into()),
                started_at: rfc3339(t0 + i as u64 * 900),
                model_path: Some("/models/sd15".into()),
                environment: Some(json!({"os": "linux", "onnxruntime": "1.22.0"})),
                skipped_reason: None,
            })
            .expect("begin");
        let results: Vec<_> = (0..CASES).map(|c| result(c, i)).collect();
        h.record_results(run, &results).expect("record");
        h.finish_run(run, 0, 300.0).expect("finish");
    }
    let insert_s = start.elapsed().as_secs_f64();
    let rows = RUNS * CASES;
    println!(
        "insert: {rows} result rows in {RUNS} runs ({} transactions) in {insert_s:.1} s = {:.0} rows/s",
        RUNS * 3,
        rows as f64 / insert_s
    );
    let size = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    println!(
        "file: {:.1} MiB (+ WAL {:.1} MiB)",
        size(&path) as f64 / 1048576.0,
        size(&path.with_extension("db-wal")) as f64 / 1048576.0
    );

    let (ms, n) = median_ms(|| {
        black_box(h.recent(Some("case-07"), 20).expect("recent case"));
    });
    println!("recent(Some(case), 20): {ms:.3} ms median of {n}");
    let (ms, n) = median_ms(|| {
        black_box(h.recent(None, 20).expect("recent"));
    });
    println!("recent(None, 20):       {ms:.3} ms median of {n}");
    let (ms, n) = median_ms(|| {
        black_box(h.last_verdicts("case-07", 5).expect("verdicts"));
    });
    println!("last_verdicts(case, 5): {ms:.3} ms median of {n}");
    let (ms, n) = median_ms(|| {
        black_box(h.recent(Some("no-such-case"), 20).expect("recent"));
    });
    println!("recent(unknown case):   {ms:.3} ms median of {n}");

    let t = Instant::now();
    let h2 = History::open(&path).expect("reopen");
    println!(
        "open (second connection, no migration): {:.3} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    let t = Instant::now();
    h2.quick_check().expect("quick_check");
    println!(
        "PRAGMA quick_check: {:.0} ms (why it is not run on every open)",
        t.elapsed().as_secs_f64() * 1e3
    );
    drop(h2);

    let cutoff = rfc3339(t0 + (RUNS / 10) as u64 * 900);
    let t = Instant::now();
    let pruned = h.prune_before(&cutoff).expect("prune");
    println!(
        "prune: {pruned} runs ({} results) in {:.0} ms, then WAL truncated; file {:.1} MiB (no VACUUM)",
        pruned * CASES,
        t.elapsed().as_secs_f64() * 1e3,
        size(&path) as f64 / 1048576.0
    );
    let (runs, results) = h.counts().expect("counts");
    assert_eq!(results as usize, (RUNS - pruned) * CASES);
    println!("left: {runs} runs, {results} results");
}
