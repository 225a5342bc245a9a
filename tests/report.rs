//! The HTML report: written for a round that is not all identical, opened in headless Chromium
//! (Debian's `chromium`, which `.ci/run` installs) with assertions on the rendered DOM, rebuilt
//! on demand, exported, pruned with the history, and escaped where the config is user text.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::site::{case, Site, FOX, TIGHT};
use serde_json::Value;

/// A case whose prompt holds what breaks naive HTML: quotes, a newline, markup and `</script>`.
const TRICKY_PROMPT: &str =
    "say \"hi\" </script><script>document.title='owned'</script>\nsecond line & <b>bold</b>";

fn tricky_case() -> String {
    format!(
        "{{name: tricky, prompt: {}, seed: 2, steps: 3, width: 64, height: 48, scheduler: euler, noise: torch-cpu}}",
        serde_json::to_string(TRICKY_PROMPT).unwrap()
    )
}

/// A site whose baselines were made under ONNX Runtime 1.24.4 and whose thresholds call any
/// difference drift: its checks under the default runtime are a real drifting round.
fn drifting_site() -> Site {
    let tricky = tricky_case();
    let site = Site::with_cases(None, &[FOX, &tricky], TIGHT);
    site.rebaseline_with_old_ort(&[]);
    site
}

fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| {
            let found = Command::new("which").arg(name).output().ok()?;
            found
                .status
                .success()
                .then(|| PathBuf::from(String::from_utf8_lossy(&found.stdout).trim()))
        })
}

/// Headless Chromium with the flags a CI machine without a display or network needs.
fn headless(browser: &Path) -> Command {
    let mut c = Command::new(browser);
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--allow-file-access-from-files",
    ]);
    c
}

/// Loads `page` in an iframe of a harness page next to it, runs the DOM checks once the page
/// and its images have loaded, and returns what they found (JSON).
fn inspect(browser: &Path, page: &Path) -> Value {
    let dir = page.parent().unwrap();
    let harness = dir.join("_harness.html");
    std::fs::write(&harness, HARNESS).unwrap();
    let out = headless(browser)
        .args(["--virtual-time-budget=20000", "--dump-dom"])
        .arg(format!("file://{}", harness.display()))
        .output()
        .unwrap();
    std::fs::remove_file(&harness).unwrap();
    let dom = String::from_utf8_lossy(&out.stdout);
    let start = dom
        .find("<pre id=\"result\">")
        .unwrap_or_else(|| panic!("no result in the dumped DOM: {dom}"))
        + "<pre id=\"result\">".len();
    let end = start + dom[start..].find("</pre>").unwrap();
    // The harness writes JSON as text, which the DOM dump escapes as HTML.
    let text = dom[start..end]
        .replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// Runs in the browser: reads the report's DOM, moves the slider, toggles onion skin.
const HARNESS: &str = r##"<!doctype html><html><body>
<iframe id="f" src="index.html" width="1300" height="1600"></iframe>
<pre id="result">pending</pre>
<script>
var f = document.getElementById("f");
f.addEventListener("load", function () {
  var out = {};
  try {
    var d = f.contentDocument;
    out.title = d.title;
    out.scripts = d.querySelectorAll("script").length;
    out.rows = Array.from(d.querySelectorAll("#summary tr.case-row")).map(function (r) {
      return [r.dataset.case, r.dataset.verdict, r.querySelector("a").getAttribute("href")];
    });
    out.sections = Array.from(d.querySelectorAll("section.case")).map(function (s) { return s.id; });
    out.failed = Array.from(d.querySelectorAll("#case-fox tr.metric.failed")).map(function (r) {
      return r.dataset.metric;
    });
    out.passed = Array.from(d.querySelectorAll("#case-fox tr.metric:not(.failed)")).map(function (r) {
      return r.dataset.metric;
    });
    out.images = Array.from(d.querySelectorAll("#case-fox .figures img")).map(function (i) {
      return {cls: i.className, complete: i.complete, w: i.naturalWidth, h: i.naturalHeight};
    });
    var prompt = Array.from(d.querySelectorAll("#case-tricky table.parameters tr")).find(function (r) {
      return r.querySelector("th").textContent === "prompt";
    });
    out.prompt = prompt ? prompt.querySelector("td").textContent : null;
    var cur = d.querySelector("#case-fox .flip-current");
    var slider = d.querySelector("#case-fox .slider");
    var covered = function () { return cur.getBoundingClientRect().width; };
    out.clip_initial = cur.style.clipPath;
    slider.value = 80; slider.dispatchEvent(new Event("input"));
    out.clip_80 = cur.style.clipPath;
    slider.value = 0; slider.dispatchEvent(new Event("input"));
    out.clip_0 = cur.style.clipPath;
    d.querySelector("#case-fox .onion").click();
    out.onion = {clip: cur.style.clipPath, opacity: cur.style.opacity};
    out.env = Array.from(d.querySelectorAll("#case-fox ul.env li")).map(function (l) { return l.textContent; });
    var dv = d.querySelector("#case-fox .divergence");
    out.divergence = dv ? dv.textContent : null;
    out.step_dots = d.querySelectorAll("#case-fox .steps circle").length;
  } catch (e) { out.error = String(e); }
  document.getElementById("result").textContent = JSON.stringify(out);
});
</script></body></html>"##;

#[test]
fn a_drifting_round_gets_a_report_that_renders_in_chromium() {
    let site = drifting_site();
    let (code, run, stderr) = site.check();
    assert_eq!(code, 1, "a drift exits 1: {stderr}");
    let page = PathBuf::from(run["report"].as_str().expect("check names its report"));
    let run_id = run["run_id"].as_i64().unwrap();
    assert_eq!(
        page,
        site.path(&format!("reports/run-{run_id:06}/index.html")),
        "the report sits in the reports folder, one folder per round"
    );
    assert_eq!(
        case(&run, "fox")["report_page"].as_str().unwrap(),
        format!("{}#case-fox", page.display()),
        "each case links to its section"
    );
    for f in ["baseline.png", "image.png", "diff.png"] {
        assert!(page.parent().unwrap().join("fox").join(f).is_file(), "{f}");
    }
    let html = std::fs::read_to_string(&page).unwrap();
    // Self-contained: nothing is fetched from anywhere (no CDN, no server).
    for remote in ["http://", "https://", "//cdn", "<link "] {
        assert!(!html.contains(remote), "the page references {remote}");
    }
    // The prompt is escaped: neither its script nor its markup reach the page as code.
    assert!(!html.contains("</script><script>document.title"));
    assert!(!html.contains("<b>bold</b>"));
    let index = std::fs::read_to_string(site.path("reports/index.html")).unwrap();
    assert!(
        index.contains(&format!("run-{run_id:06}/index.html")),
        "the reports index lists the round"
    );

    let Some(browser) = chromium() else {
        eprintln!("chromium: NOT RUN (not installed; .ci/run installs Debian's chromium)");
        return;
    };
    let dom = inspect(&browser, &page);
    assert!(dom.get("error").is_none(), "harness failed: {dom}");
    assert_eq!(
        dom["rows"],
        serde_json::json!([
            ["fox", "drift", "#case-fox"],
            ["tricky", "drift", "#case-tricky"]
        ]),
        "{dom}"
    );
    assert_eq!(
        dom["sections"],
        serde_json::json!(["case-fox", "case-tricky"])
    );
    // TIGHT fails every threshold on a drifting run; the others are marked as passing.
    assert_eq!(
        dom["failed"],
        serde_json::json!(["latent max |Δ|", "latent cosine", "SSIM"]),
        "{dom}"
    );
    assert!(dom["passed"].as_array().unwrap().len() >= 3, "{dom}");
    let images = dom["images"].as_array().unwrap();
    assert_eq!(images.len(), 3, "baseline, current, diff: {dom}");
    for (img, cls) in images
        .iter()
        .zip(["img-baseline", "img-current", "img-diff"])
    {
        assert_eq!(img["cls"], cls);
        assert_eq!(img["complete"], true, "{img}");
        assert_eq!(
            (img["w"].as_u64(), img["h"].as_u64()),
            (Some(64), Some(64)),
            "{img}"
        );
    }
    // The slider uncovers the current image from the right; onion skin overlays it at half.
    assert_eq!(dom["clip_initial"], "inset(0px 0px 0px 50%)", "{dom}");
    assert_eq!(dom["clip_80"], "inset(0px 0px 0px 20%)", "{dom}");
    assert_eq!(dom["clip_0"], "inset(0px 0px 0px 100%)", "{dom}");
    assert_eq!(dom["onion"]["clip"], "none", "{dom}");
    assert_eq!(dom["onion"]["opacity"], "0.5", "{dom}");
    // The prompt renders as text, exactly as written; its script never ran.
    assert_eq!(dom["prompt"], TRICKY_PROMPT, "{dom}");
    assert_eq!(dom["scripts"], 1, "only the page's own script: {dom}");
    assert!(
        dom["title"].as_str().unwrap().starts_with("monitor run"),
        "{dom}"
    );
    assert_eq!(
        dom["env"],
        serde_json::json!(["onnxruntime.version: 1.24.4 → 1.31.1"]),
        "{dom}"
    );
    // Where it first differs, how far, and a dot per step of the latents' max |Δ|.
    let fox = common::site::case(&run, "fox");
    let steps = fox["report"]["divergence"]["step_max_abs"]
        .as_array()
        .unwrap()
        .len();
    assert!(steps > 0, "{fox}");
    assert_eq!(dom["step_dots"], steps, "{dom}");
    assert!(
        dom["divergence"]
            .as_str()
            .unwrap()
            .contains("latents over max|Δ|"),
        "{dom}"
    );

    // The screenshot is kept as a test artifact (the README shows one like it).
    let shots = common::repo_path("target/test-artifacts");
    std::fs::create_dir_all(&shots).unwrap();
    let shot = shots.join("report.png");
    let _ = std::fs::remove_file(&shot);
    let o = headless(&browser)
        .args(["--window-size=1300,1500", "--hide-scrollbars"])
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (w, h) = image::image_dimensions(&shot).unwrap();
    assert!(w >= 1000 && h >= 1000, "screenshot {w}x{h}");
    eprintln!("report screenshot: {}", shot.display());
}

#[test]
fn an_identical_round_writes_no_report_but_one_can_be_asked_for() {
    let site = Site::with_cases(None, &[FOX], "");
    site.rebaseline();
    let (code, run, stderr) = site.check();
    assert_eq!(code, 0, "{stderr}");
    assert!(run.get("report").is_none(), "{run}");
    let run_id = run["run_id"].as_i64().unwrap();
    assert!(!site.path(&format!("reports/run-{run_id:06}")).exists());

    let o = site.run(&["report", "--latest"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let page = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
    assert_eq!(
        page,
        site.path(&format!("reports/run-{run_id:06}/index.html"))
    );
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(html.contains("1 case: 1 identical"), "{html}");
    // An identical case has no kept outputs: its section shows metrics, no images.
    assert!(!html.contains("img-current"));

    // An unknown run is a one-line error naming it.
    let o = site.run(&["report", "999"]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("no run 999"), "{err}");
}

#[test]
fn a_report_exports_to_a_folder_of_its_own() {
    let site = drifting_site();
    let (code, run, _) = site.check();
    assert_eq!(code, 1);
    let run_id = run["run_id"].as_i64().unwrap().to_string();
    let out = site.path("ticket-1234");
    let o = site.run(&["report", &run_id, "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let html = std::fs::read_to_string(out.join("index.html")).unwrap();
    // Every image the page shows travels with it.
    for src in html.split("src=\"").skip(1) {
        let rel = src.split('"').next().unwrap().replace("&#x2f;", "/");
        assert!(out.join(&rel).is_file(), "{rel} missing from the export");
    }
    assert!(html.contains("fox&#x2f;baseline.png"));
    // No link back to a reports index that is not there.
    assert!(!html.contains("../index.html"));
    // An existing folder is never overwritten.
    let o = site.run(&["report", &run_id, "--out", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("already exists"));
}

#[test]
fn reports_go_with_their_runs_when_retention_prunes_them() {
    let site = drifting_site();
    let (_, first, _) = site.check();
    let first_id = first["run_id"].as_i64().unwrap();
    let first_dir = site.path(&format!("reports/run-{first_id:06}"));
    assert!(first_dir.join("index.html").is_file());
    // Age the first run past the retention period (90 days by default).
    let db = rusqlite::Connection::open(site.path("monitor.db")).unwrap();
    db.execute(
        "UPDATE runs SET started_at = '2000-01-01T00:00:00Z' WHERE id = ?1",
        [first_id],
    )
    .unwrap();
    drop(db);
    let (code, second, _) = site.check();
    assert_eq!(code, 1);
    let second_id = second["run_id"].as_i64().unwrap();
    assert!(!first_dir.exists(), "the pruned run's report is gone");
    let index = std::fs::read_to_string(site.path("reports/index.html")).unwrap();
    assert!(!index.contains(&format!("run-{first_id:06}")), "{index}");
    assert!(index.contains(&format!("run-{second_id:06}")), "{index}");
}

#[test]
fn alerts_link_to_the_report_under_base_url() {
    let tricky = tricky_case();
    let site = Site::with_cases(
        None,
        &[FOX, &tricky],
        &format!("{TIGHT}report: {{base_url: \"https://monitor.example/reports/\"}}\n"),
    );
    site.rebaseline_with_old_ort(&[]);
    let (code, run, _) = site.check();
    assert_eq!(code, 1);
    let run_id = run["run_id"].as_i64().unwrap();
    assert_eq!(
        case(&run, "tricky")["report_page"],
        format!("https://monitor.example/reports/run-{run_id:06}/index.html#case-tricky")
    );
    // A base_url that is not a web address is a config error naming the key.
    site.edit_config("https://monitor.example/reports/", "/var/www/reports");
    let o = site.run(&["check"]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("report.base_url"), "{err}");
}
