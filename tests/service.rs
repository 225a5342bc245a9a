//! `monitor service probe` against fake AUTOMATIC1111 and ComfyUI servers on loopback (the real
//! request/response shapes): the image that comes back is the server's, bit for bit; a perturbed
//! image and a swapped model are seen; a server that is down, slow, failing, malformed, answering
//! with a JPEG, too large or redirecting elsewhere is a one-line error without the secret.

mod common;

use common::sd_servers::{dead_url, image_for, Api, FakeService, Mode};
use common::site::Site;
use monitor::sd::model::sha256_hex;
use serde_json::Value;

const FOX: &str = "{name: fox, prompt: \"a red fox\", negative_prompt: \"blurry\", seed: 7, steps: 4, guidance_scale: 7.5, width: 64, height: 48, scheduler: euler-a, noise: torch-cpu}";
const OWL: &str = "{name: owl, prompt: \"an owl\", seed: 9, steps: 3, width: 32, height: 32, scheduler: lms, karras: true, noise: numpy}";
const SECRET: &str = "Bearer s3cret-token-value";

fn site(service_yaml: &str) -> Site {
    let site = Site::with_cases(None, &[FOX, OWL], &format!("service: {service_yaml}\n"));
    std::fs::copy(
        common::repo_path("configs/comfyui-workflow.json"),
        site.path("comfyui-workflow.json"),
    )
    .unwrap();
    site
}

/// `monitor service probe --json`: exit code and the per-case documents.
fn probe(site: &Site) -> (i32, Vec<Value>, String) {
    let o = site
        .command(&["service", "probe", "--json"])
        .env("SD_TOKEN", SECRET)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    let v: Vec<Value> = serde_json::from_slice(&o.stdout).unwrap_or_default();
    let all = format!("{}{stderr}", String::from_utf8_lossy(&o.stdout));
    assert!(!all.contains("s3cret"), "the secret leaked: {all}");
    (o.status.code().unwrap(), v, stderr)
}

fn sha_of_expected(seed: u64, w: u32, h: u32, prompt: &str) -> String {
    sha256_hex(&image_for(seed, w, h, prompt).pixels)
}

#[test]
fn a1111_images_come_back_bit_for_bit_and_changes_are_seen() {
    let server = FakeService::start(Api::A1111);
    let site = site(&format!(
        "{{kind: a1111, url: \"{}\", auth: \"${{SD_TOKEN}}\"}}",
        server.url()
    ));
    let (code, v, err) = probe(&site);
    assert_eq!(code, 0, "{err}\n{v:?}");
    let fox = &v[0];
    assert_eq!(
        fox["pixels_sha256"],
        sha_of_expected(7, 64, 48, "a red fox"),
        "{fox}"
    );
    assert_eq!(
        (fox["width"].as_u64(), fox["height"].as_u64()),
        (Some(64), Some(48))
    );
    assert_eq!(fox["sampler"], "Euler a");
    assert_eq!(v[1]["sampler"], "LMS Karras");
    assert_eq!(fox["info"]["a1111.sd_model_hash"], "6ce0161689");
    assert_eq!(fox["info"]["a1111.version"], "v1.10.1");
    // What the server received: the case's parameters, the secret in the auth header.
    let req = &server.seen()[0];
    assert_eq!(
        (req.method.as_str(), req.path.as_str()),
        ("POST", "/sdapi/v1/txt2img")
    );
    for (k, want) in [
        ("prompt", Value::from("a red fox")),
        ("negative_prompt", "blurry".into()),
        ("seed", 7.into()),
        ("steps", 4.into()),
        ("cfg_scale", 7.5.into()),
        ("width", 64.into()),
        ("height", 48.into()),
        ("sampler_name", "Euler a".into()),
        ("batch_size", 1.into()),
    ] {
        assert_eq!(req.body[k], want, "{k}: {}", req.body);
    }
    let auth = req
        .headers
        .iter()
        .find(|(n, _)| n == "authorization")
        .map(|(_, v)| v.as_str());
    assert_eq!(auth, Some(SECRET));

    // Same request, same pixels; a perturbed server, other pixels; a swapped model, named.
    let (_, again, _) = probe(&site);
    assert_eq!(again[0]["pixels_sha256"], fox["pixels_sha256"]);
    server.set_mode(Mode::Perturbed);
    let (code, p, _) = probe(&site);
    assert_eq!(code, 0);
    assert_ne!(p[0]["pixels_sha256"], fox["pixels_sha256"]);
    server.set_mode(Mode::Normal);
    server.set_model_hash("e1441589a6");
    let (_, m, _) = probe(&site);
    assert_eq!(m[0]["info"]["a1111.sd_model_hash"], "e1441589a6");
    assert_eq!(m[0]["pixels_sha256"], fox["pixels_sha256"]);

    // --out keeps the image and what the service said.
    let out = site.path("probe");
    let o = site
        .command(&[
            "service",
            "probe",
            "--case",
            "fox",
            "--out",
            out.to_str().unwrap(),
        ])
        .env("SD_TOKEN", SECRET)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let png = std::fs::read(out.join("fox/image.png")).unwrap();
    let img = monitor::sd::image::RgbImage::from_png(&png).unwrap();
    assert_eq!(
        sha256_hex(&img.pixels),
        sha_of_expected(7, 64, 48, "a red fox")
    );
    let info: Value =
        serde_json::from_slice(&std::fs::read(out.join("fox/info.json")).unwrap()).unwrap();
    assert_eq!(info["info"]["a1111.sd_model_hash"], "e1441589a6");
}

#[test]
fn comfyui_runs_the_filled_workflow_and_fetches_its_image() {
    let server = FakeService::start(Api::ComfyUi);
    let site = site(&format!(
        "{{kind: comfyui, url: \"{}\", workflow: comfyui-workflow.json, poll_interval: 50ms}}",
        server.url()
    ));
    let (code, v, err) = probe(&site);
    assert_eq!(code, 0, "{err}\n{v:?}");
    assert_eq!(
        v[0]["pixels_sha256"],
        sha_of_expected(7, 64, 48, "a red fox"),
        "{v:?}"
    );
    assert_eq!(v[1]["pixels_sha256"], sha_of_expected(9, 32, 32, "an owl"));
    assert_eq!(
        v[0]["info"]["comfyui.ckpt_name"],
        "v1-5-pruned-emaonly.safetensors"
    );
    assert_eq!(v[0]["info"]["comfyui.comfyui_version"], "0.3.40");
    let seen = server.seen();
    let queued: Vec<&Value> = seen
        .iter()
        .filter(|s| s.path == "/prompt")
        .map(|s| &s.body["prompt"])
        .collect();
    assert_eq!(queued.len(), 2);
    // Whole placeholders became typed values; the KSampler got ComfyUI's names.
    let k = &queued[0]["3"]["inputs"];
    assert_eq!(
        (k["seed"].as_u64(), k["steps"].as_u64(), k["cfg"].as_f64()),
        (Some(7), Some(4), Some(7.5))
    );
    assert_eq!(
        (k["sampler_name"].as_str(), k["scheduler"].as_str()),
        (Some("euler_ancestral"), Some("normal"))
    );
    assert_eq!(queued[1]["3"]["inputs"]["scheduler"], "karras");
    assert_eq!(queued[0]["5"]["inputs"]["width"], 64);
    assert_eq!(queued[0]["7"]["inputs"]["text"], "blurry");
    // It waited for the run: /history was asked until it was done, then /view.
    let polls = seen
        .iter()
        .filter(|s| s.path.starts_with("/history/p1"))
        .count();
    assert!(polls >= 2, "{polls}");
    assert!(seen
        .iter()
        .any(|s| s.path.starts_with("/view?filename=ComfyUI_p1_.png")));

    server.set_mode(Mode::Perturbed);
    let (_, p, _) = probe(&site);
    assert_ne!(p[0]["pixels_sha256"], v[0]["pixels_sha256"]);
}

#[test]
fn a_service_that_fails_in_any_way_is_a_one_line_error() {
    let server = FakeService::start(Api::A1111);
    let base = |url: &str, extra: &str| {
        site(&format!(
            "{{kind: a1111, url: \"{url}\", auth: \"${{SD_TOKEN}}\", timeout: 1s{extra}}}"
        ))
    };
    let ok = base(&server.url(), ", max_response_mb: 1");
    let cases: Vec<(Site, Option<Mode>, &str)> = vec![
        (base(&dead_url(), ""), None, "connection refused"),
        (
            base(&server.url(), ""),
            Some(Mode::Slow(std::time::Duration::from_secs(3))),
            "no image within 1s (service.timeout)",
        ),
        (
            base(&server.url(), ""),
            Some(Mode::Error500),
            "HTTP 500: Internal Server Error RuntimeError: CUDA out of memory",
        ),
        (
            base(&server.url(), ""),
            Some(Mode::Malformed),
            "the answer is not JSON",
        ),
        (
            base(&server.url(), ""),
            Some(Mode::Jpeg),
            "not a PNG: it is a JPEG",
        ),
        (
            ok,
            Some(Mode::Oversized(3 << 20)),
            "over the 1 MiB limit (service.max_response_mb)",
        ),
        (
            base(&server.url(), ""),
            Some(Mode::RedirectElsewhere("http://127.0.0.2:9".into())),
            "redirected to another host (127.0.0.2); not followed",
        ),
    ];
    for (site, mode, want) in cases {
        if let Some(m) = mode {
            server.set_mode(m);
        }
        let (code, v, err) = probe(&site);
        assert_eq!(code, 2, "{want}: {v:?} {err}");
        let e = v[0]["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{want}: {v:?}"));
        assert!(
            e.contains(want) && !e.contains('\n'),
            "want {want:?}, got {e:?}"
        );
        server.set_mode(Mode::Normal);
    }
}

#[test]
fn service_config_mistakes_are_named_before_any_request() {
    let server = FakeService::start(Api::ComfyUi);
    for (yaml, want) in [
        (
            format!("{{kind: comfyui, url: \"{}\"}}", server.url()),
            "service.workflow: required for kind comfyui",
        ),
        (
            "{kind: a1111, url: \"ftp://host\"}".to_string(),
            "service.url: must be an http or https URL",
        ),
        (
            format!(
                "{{kind: a1111, url: \"{}\", auth: x, auth_file: y}}",
                server.url()
            ),
            "give auth or auth_file, not both",
        ),
        (
            format!(
                "{{kind: a1111, url: \"{}\", auth: \"${{NOT_SET_ANYWHERE}}\"}}",
                server.url()
            ),
            "service.auth: environment variable NOT_SET_ANYWHERE is not set",
        ),
        (
            format!(
                "{{kind: http-json, url: \"{}\", request: comfyui-workflow.json}}",
                server.url()
            ),
            "service.image_pointer: required",
        ),
        (
            format!(
                "{{kind: a1111, url: \"{}\", samplers: {{plms: PLMS}}}}",
                server.url()
            ),
            "service.samplers.plms",
        ),
    ] {
        let s = site(&yaml);
        let o = s.run(&["service", "probe"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{yaml}: {err}");
        assert!(
            err.contains(want) && err.lines().count() == 1,
            "{yaml}: want {want:?}: {err}"
        );
    }
    // An unknown placeholder in the template is named with the file.
    let s = site(&format!(
        "{{kind: comfyui, url: \"{}\", workflow: wf.json}}",
        server.url()
    ));
    std::fs::write(
        s.path("wf.json"),
        r#"{"3": {"inputs": {"seed": "{{sede}}"}}}"#,
    )
    .unwrap();
    let err = String::from_utf8_lossy(&s.run(&["service", "probe"]).stderr).into_owned();
    assert!(
        err.contains("wf.json has unknown placeholders {{sede}}"),
        "{err}"
    );
    // PNDM has no ComfyUI sampler of its name: the case says so and the others run.
    let s = Site::with_cases(
        None,
        &["{name: plms, prompt: p, seed: 1, steps: 2, width: 32, height: 32, scheduler: pndm}"],
        &format!(
            "service: {{kind: comfyui, url: \"{}\", workflow: wf.json}}\n",
            server.url()
        ),
    );
    std::fs::copy(
        common::repo_path("configs/comfyui-workflow.json"),
        s.path("wf.json"),
    )
    .unwrap();
    let (code, v, _) = probe(&s);
    assert_eq!(code, 2);
    assert!(
        v[0]["error"]
            .as_str()
            .unwrap()
            .contains("set service.samplers.pndm"),
        "{v:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Service cases (`target: service`) through check, rebaseline, run --once, history and metrics.

/// A service case: the same request as FOX, asked of the service.
const SVC: &str = "{name: svc, prompt: \"a red fox\", negative_prompt: \"blurry\", seed: 7, steps: 4, guidance_scale: 7.5, width: 64, height: 48, scheduler: euler-a, noise: torch-cpu, target: service}";
/// A pipeline case on the tiny model beside it.
const CANARY: &str = "{name: canary, prompt: \"a lighthouse\", seed: 1, steps: 2, width: 32, height: 32, scheduler: pndm, noise: numpy}";

/// A site with the pipeline canary and the service case against `service_yaml`, `extra` after.
fn service_site(service_yaml: &str, extra: &str) -> Site {
    let site = Site::with_cases(
        None,
        &[CANARY, SVC],
        &format!("service: {service_yaml}\n{extra}"),
    );
    std::fs::copy(
        common::repo_path("configs/comfyui-workflow.json"),
        site.path("comfyui-workflow.json"),
    )
    .unwrap();
    site
}

/// `monitor ARGS` with the service's secret in the environment; the secret must not leak.
fn run_with_secret(site: &Site, args: &[&str]) -> std::process::Output {
    let o = site.command(args).env("SD_TOKEN", SECRET).output().unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!all.contains("s3cret"), "the secret leaked: {all}");
    o
}

fn check_json(site: &Site) -> (i32, Value, String) {
    common::site::parse_check(run_with_secret(site, &["check", "--json"]))
}

fn rebaseline(site: &Site) {
    let o = run_with_secret(
        site,
        &["rebaseline", "--reason", "service baselines", "--yes"],
    );
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

fn webhook_alerts(peer: &common::peers::HttpPeer) -> Vec<Value> {
    peer.requests()
        .iter()
        .filter_map(|r| serde_json::from_slice(&r.body).ok())
        .collect()
}

#[test]
fn a1111_service_cases_are_baselined_checked_alerted_and_restarted_like_any_case() {
    use common::site::{case, verdicts};
    let server = FakeService::start(Api::A1111);
    let webhook = common::peers::HttpPeer::start(vec![]);
    let restarts = tempfile::NamedTempFile::new().unwrap();
    let site = service_site(
        &format!(
            "{{kind: a1111, url: \"{}\", auth: \"${{SD_TOKEN}}\"}}",
            server.url()
        ),
        &format!(
            "alerts: {{retry_initial: 200ms, webhook: {{url: \"{}/hook\"}}}}\nremediation: {{restart: {{command: [sh, -c, \"echo restarted >> {}\"]}}, recheck_delay: 100ms}}\n",
            webhook.base_url(),
            restarts.path().display()
        ),
    );

    // The service's baseline is its image alone, with what the service said made it.
    rebaseline(&site);
    let v1 = site.path("baselines/svc/v0001");
    assert!(v1.join("image.png").is_file() && !v1.join("latents.npy").exists());
    let meta: Value =
        serde_json::from_slice(&std::fs::read(v1.join("metadata.json")).unwrap()).unwrap();
    assert_eq!(meta["parameters"]["target"], "service");
    assert_eq!(meta["parameters"]["sampler"], "Euler a");
    assert_eq!(meta["service"]["kind"], "a1111");
    assert_eq!(
        meta["service"]["info"]["a1111"]["sd_model_hash"],
        "6ce0161689"
    );
    assert_eq!(
        meta["outputs"]["image"]["sha256_rgb"],
        sha_of_expected(7, 64, 48, "a red fox")
    );
    assert!(site.path("baselines/canary/v0001/latents.npy").is_file());

    // Same answer: identical, judged on the image alone.
    let (code, v, err) = check_json(&site);
    assert_eq!(code, 0, "{err}\n{v}");
    assert_eq!(verdicts(&v), ["identical", "identical"]);
    let svc = case(&v, "svc");
    assert_eq!(svc["details"]["target"], "service");
    assert!(svc["report"]["latents"].is_null(), "{svc}");
    assert_eq!(svc["report"]["image"]["ssim"], 1.0);

    // A model swapped behind the same name: the environment differences name its hash.
    server.set_model_hash("e1441589a6");
    let (code, v, _) = check_json(&site);
    assert_eq!(code, 0);
    let diffs = case(&v, "svc")["report"]["env_differences"].clone();
    assert!(
        diffs
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["key"] == "service.info.a1111.sd_model_hash"
                && d["baseline"] == "6ce0161689"
                && d["run"] == "e1441589a6"),
        "{diffs}"
    );
    server.set_model_hash("6ce0161689");

    // One level on one pixel: within tolerance, the heatmap kept.
    server.set_mode(Mode::Perturbed);
    let (code, v, _) = check_json(&site);
    assert_eq!(code, 0);
    let svc = case(&v, "svc");
    assert_eq!(svc["verdict"], "within_tolerance", "{svc}");
    let kept = std::path::PathBuf::from(svc["artifacts"].as_str().unwrap());
    assert!(kept.join("diff.png").is_file() && kept.join("baseline.png").is_file());
    // The report's section says whose image it is and shows no latent rows for it.
    let page = v["report"]
        .as_str()
        .expect("a report for a non-identical round");
    let html = std::fs::read_to_string(page).unwrap();
    let section = &html[html.find("id=\"case-svc\"").expect("svc's section")..];
    assert!(
        section.contains("the generation service's image"),
        "{section}"
    );
    assert!(!section.contains("latent max |Δ|"), "{section}");

    // A real drift: the round alerts and restarts the service, as for the pipeline.
    server.set_mode(Mode::Drifted);
    let o = run_with_secret(&site, &["run", "--once"]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let alerts = webhook_alerts(&webhook);
    let firing = alerts
        .iter()
        .find(|a| a["kind"] == "firing")
        .unwrap_or_else(|| panic!("no firing alert: {alerts:?}"));
    assert!(
        firing["title"].as_str().unwrap().contains("DRIFT"),
        "{firing}"
    );
    assert!(firing.to_string().contains("svc"), "{firing}");
    assert!(
        std::fs::read_to_string(restarts.path())
            .unwrap()
            .contains("restarted"),
        "no restart on a confirmed service drift"
    );
    // History and metrics carry the verdict, marked as the service's.
    let rows = site.history();
    let svc_row = rows
        .iter()
        .find(|r| r["run_kind"] == "check" && r["case_name"] == "svc")
        .unwrap_or_else(|| panic!("no check of svc in the history: {rows:?}"));
    assert_eq!(svc_row["verdict"], "drift", "{svc_row}");
    assert_eq!(svc_row["details"]["target"], "service", "{svc_row}");
    let prom = site.path("monitor.prom");
    let o = run_with_secret(
        &site,
        &["check", "--metrics-textfile", prom.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(1));
    let text = std::fs::read_to_string(&prom).unwrap();
    assert!(
        text.contains("monitor_case_verdict{case=\"svc\",target=\"service\",verdict=\"drift\"} 1"),
        "{text}"
    );
    assert!(
        text.contains(
            "monitor_case_verdict{case=\"canary\",target=\"pipeline\",verdict=\"identical\"} 1"
        ),
        "{text}"
    );

    // Accepting the drifted image is a rebaseline like any other; it then checks identical.
    rebaseline(&site);
    let (code, v, _) = check_json(&site);
    assert_eq!((code, verdicts(&v)), (0, vec!["identical".to_string(); 2]));
    assert_eq!(case(&v, "svc")["baseline_version"], 2);

    // Undo: v1 restored as v3 (image-only, verified), and the healthy service matches it.
    let o = run_with_secret(
        &site,
        &[
            "rebaseline",
            "--case",
            "svc",
            "--restore",
            "1",
            "--reason",
            "undo",
            "--yes",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v3 = site.path("baselines/svc/v0003");
    assert!(v3.join("image.png").is_file() && !v3.join("latents.npy").exists());
    server.set_mode(Mode::Normal);
    let (code, v, _) = check_json(&site);
    assert_eq!(code, 0, "{v}");
    assert_eq!(
        (
            case(&v, "svc")["verdict"].as_str(),
            case(&v, "svc")["baseline_version"].as_u64()
        ),
        (Some("identical"), Some(3))
    );
}

#[test]
fn a_service_that_does_not_answer_properly_is_an_error_never_drift_and_never_restarted() {
    use common::site::case;
    let server = FakeService::start(Api::A1111);
    let restarts = tempfile::NamedTempFile::new().unwrap();
    let site = service_site(
        &format!(
            "{{kind: a1111, url: \"{}\", auth: \"${{SD_TOKEN}}\", timeout: 1s, max_response_mb: 1}}",
            server.url()
        ),
        &format!(
            "remediation: {{restart: {{command: [sh, -c, \"echo restarted >> {}\"]}}, recheck_delay: 100ms}}\n",
            restarts.path().display()
        ),
    );
    rebaseline(&site);
    for (mode, want) in [
        (
            Mode::Slow(std::time::Duration::from_secs(3)),
            "no image within 1s (service.timeout)",
        ),
        (
            Mode::Error500,
            "HTTP 500: Internal Server Error RuntimeError: CUDA out of memory",
        ),
        (Mode::Malformed, "the answer is not JSON"),
        (Mode::Jpeg, "not a PNG: it is a JPEG"),
        (
            Mode::Oversized(3 << 20),
            "over the 1 MiB limit (service.max_response_mb)",
        ),
    ] {
        server.set_mode(mode);
        let (code, v, err) = check_json(&site);
        assert_eq!(code, 2, "{want}: {err}\n{v}");
        let svc = case(&v, "svc");
        assert_eq!(svc["verdict"], "error", "{svc}");
        let e = svc["error"].as_str().unwrap();
        assert!(
            e.contains(want) && !e.contains('\n'),
            "want {want:?}, got {e:?}"
        );
        // The pipeline's own case is judged as usual beside it.
        assert_eq!(case(&v, "canary")["verdict"], "identical");
    }
    // A round with a failing service: error, and nothing restarted.
    server.set_mode(Mode::Error500);
    let o = run_with_secret(&site, &["run", "--once"]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    site.edit_config(&server.url(), &dead_url());
    let (code, v, _) = check_json(&site);
    assert_eq!(code, 2);
    let e = case(&v, "svc")["error"].as_str().unwrap().to_string();
    assert!(e.contains("connection refused") && !e.contains('\n'), "{e}");
    let o = run_with_secret(&site, &["run", "--once"]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(std::fs::read_to_string(restarts.path()).unwrap(), "");
}

#[test]
fn comfyui_service_cases_check_identical_and_see_drift() {
    use common::site::{case, verdicts};
    let server = FakeService::start(Api::ComfyUi);
    let site = service_site(
        &format!(
            "{{kind: comfyui, url: \"{}\", workflow: comfyui-workflow.json, poll_interval: 20ms}}",
            server.url()
        ),
        "",
    );
    rebaseline(&site);
    let meta: Value = serde_json::from_slice(
        &std::fs::read(site.path("baselines/svc/v0001/metadata.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(meta["service"]["kind"], "comfyui");
    assert_eq!(
        meta["service"]["info"]["comfyui"]["ckpt_name"],
        "v1-5-pruned-emaonly.safetensors"
    );
    assert_eq!(meta["parameters"]["sampler"], "euler_ancestral");
    let (code, v, err) = check_json(&site);
    assert_eq!(code, 0, "{err}");
    assert_eq!(verdicts(&v), ["identical", "identical"]);
    server.set_mode(Mode::Drifted);
    let (code, v, _) = check_json(&site);
    assert_eq!(code, 1);
    let svc = case(&v, "svc");
    assert_eq!(svc["verdict"], "drift", "{svc}");
    let failed: Vec<&str> = svc["report"]["failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["check"].as_str().unwrap())
        .collect();
    assert_eq!(failed, ["ssim_min"]);
    // An edited workflow is a different request: the environment differences say so.
    server.set_mode(Mode::Normal);
    let wf = site.path("comfyui-workflow.json");
    let text = std::fs::read_to_string(&wf).unwrap();
    std::fs::write(
        &wf,
        text.replacen("\"denoise\": 1.0", "\"denoise\": 0.99", 1),
    )
    .unwrap();
    let (_, v, _) = check_json(&site);
    let diffs = case(&v, "svc")["report"]["env_differences"].to_string();
    assert!(diffs.contains("service.template_sha256"), "{diffs}");
}

#[test]
fn service_case_config_mistakes_are_named() {
    for (cases, extra, want) in [
        (SVC, "", "cases[0].target: target service needs a `service:` section"),
        (
            "{name: a, prompt: p, seed: 1, sampler: Euler}",
            "",
            "cases[0].sampler: sampler is the name sent to the generation service; it needs target: service",
        ),
        (
            "{name: a, prompt: p, seed: 1, parity: true}",
            "",
            "cases[0].parity: parity compares a service case with the pipeline",
        ),
        (
            "{name: a, prompt: p, seed: 1, target: servise}",
            "",
            "unknown target \"servise\"; use pipeline or service",
        ),
        (
            "{name: a, prompt: p, seed: 1, target: service, batch_size: 2}",
            "service: {kind: a1111, url: \"http://127.0.0.1:9\"}\n",
            "cases[0].batch_size: batch_size 2 is the pipeline's batch invariance check",
        ),
    ] {
        let site = Site::with_cases(None, &[cases], extra);
        let o = site.run(&["check"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(err.contains(want), "want {want:?}: {err}");
    }
    // A case moved from the pipeline to the service needs a new baseline, not a drift verdict.
    let server0 = FakeService::start(Api::A1111);
    let site = Site::with_cases(
        None,
        &[CANARY],
        &format!("service: {{kind: a1111, url: \"{}\"}}\n", server0.url()),
    );
    rebaseline(&site);
    site.edit_config("noise: numpy}", "noise: numpy, target: service}");
    let (code, v, _) = check_json(&site);
    let e = common::site::case(&v, "canary")["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(code, 2, "{v}");
    assert!(
        e.contains("no longer matches baseline v0001: target \"pipeline\" → \"service\"")
            && e.contains("monitor rebaseline --case canary"),
        "{e}"
    );
    // Commands that replay the pipeline say a service case is not theirs.
    let server = FakeService::start(Api::A1111);
    let site = service_site(&format!("{{kind: a1111, url: \"{}\"}}", server.url()), "");
    for (args, what) in [
        (vec!["check", "--quick", "--case", "svc"], "the quick check"),
        (
            vec!["verify-determinism", "--runs", "2", "--case", "svc"],
            "a determinism test",
        ),
        (
            vec!["snapshot", "--out", "snap", "--case", "svc"],
            "a snapshot",
        ),
    ] {
        let o = site.run(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains(&format!(
                "case svc targets the generation service; {what} runs the monitor's own pipeline only"
            )),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn a_stopping_monitor_gives_up_a_slow_request_at_once() {
    let server = FakeService::start(Api::A1111);
    server.set_mode(Mode::Slow(std::time::Duration::from_secs(20)));
    let section: monitor::service::ServiceConfig = serde_yaml::from_str(&format!(
        "{{kind: a1111, url: \"{}\", timeout: 60s}}",
        server.url()
    ))
    .unwrap();
    let service =
        monitor::service::Service::from_config(&section, std::path::Path::new(".")).unwrap();
    let config = monitor::config::Config::load(
        &site("{kind: a1111, url: \"http://127.0.0.1:9\"}").path("monitor.yaml"),
    )
    .unwrap();
    let req = monitor::service::ServiceRequest::of(&config.cases[0]);
    let cancel = monitor::worker::Cancel::new();
    let stopper = {
        let c = cancel.clone();
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(300));
            c.cancel();
        })
    };
    let start = std::time::Instant::now();
    let e = service.generate_until(&req, &cancel).unwrap_err();
    stopper.join().unwrap();
    assert!(e.contains("cancelled"), "{e}");
    assert!(
        start.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn a_service_that_does_not_repeat_itself_is_refused_a_baseline() {
    let server = FakeService::start(Api::A1111);
    server.set_mode(Mode::Unstable);
    let site = service_site(&format!("{{kind: a1111, url: \"{}\"}}", server.url()), "");
    let o = run_with_secret(&site, &["rebaseline", "--reason", "first", "--yes"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_ne!(o.status.code(), Some(0), "{out}");
    assert!(
        out.contains("svc                  error: the generation service did not return the same image twice for this case (1 of 1 repeated requests differ, max |Δ pixel| 1)"),
        "{out}"
    );
    assert!(!site.path("baselines/svc").exists());
    // --runs 1 stores what it got, as for the pipeline.
    let o = run_with_secret(
        &site,
        &["rebaseline", "--reason", "first", "--runs", "1", "--yes"],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(site.path("baselines/svc/v0001/image.png").is_file());
}

#[test]
fn parity_reports_how_far_the_service_is_from_the_pipeline_and_never_decides_the_verdict() {
    use common::site::{case, verdicts};
    let server = FakeService::start(Api::A1111);
    // The same parameters twice: once asked of the service (with parity), once of the pipeline
    // alone, whose stored image is the independent reference for the parity numbers.
    let params = "prompt: \"a red fox\", seed: 7, steps: 3, width: 64, height: 48, scheduler: euler, noise: torch-cpu";
    let site = Site::with_cases(
        None,
        &[
            &format!("{{name: svc, {params}, target: service, parity: true}}"),
            &format!("{{name: same, {params}}}"),
        ],
        &format!("service: {{kind: a1111, url: \"{}\"}}\n", server.url()),
    );
    rebaseline(&site);
    let (code, v, err) = check_json(&site);
    assert_eq!(code, 0, "{err}");
    assert_eq!(verdicts(&v), ["identical", "identical"]);
    let parity = &case(&v, "svc")["details"]["parity"];
    let pipeline = site.store().current("same").unwrap().unwrap().image;
    let want =
        monitor::compare::image_metrics(&image_for(7, 64, 48, "a red fox"), &pipeline).unwrap();
    assert_eq!(parity["ssim"].as_f64(), Some(want.ssim), "{parity}");
    assert_eq!(parity["psnr_db"].as_f64(), Some(want.psnr_db), "{parity}");
    assert_eq!(parity["pixels_differing"], want.pixels_differing);
    assert!(
        want.ssim < 0.5,
        "the fake service and the tiny model agree? {}",
        want.ssim
    );
    // The plain output says it is informational.
    let o = run_with_secret(&site, &["check"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{text}");
    assert!(
        text.contains(
            "parity with the pipeline (informational, samplers and precisions differ): SSIM"
        ),
        "{text}"
    );
}

#[test]
fn a_full_disk_during_a_service_rebaseline_writes_nothing_and_loses_nothing() {
    use common::site::{case, verdicts};
    let server = FakeService::start(Api::A1111);
    let site = service_site(&format!("{{kind: a1111, url: \"{}\"}}", server.url()), "");
    rebaseline(&site);
    let baselines = site.path("baselines");
    let before = common::site::snapshot(&baselines);
    server.set_mode(Mode::Drifted);
    // No space left: the service's image, the version's first file, cannot be written.
    let cmd = site.command(&[
        "rebaseline",
        "--case",
        "svc",
        "--reason",
        "accept drift",
        "--yes",
    ]);
    let Some(o) = common::site::on_full_disk(&baselines, 0, cmd) else {
        println!("FAULT | full disk under the baselines, service rebaseline | NOT RUN: no mount namespace here | - |");
        return;
    };
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.contains("/svc/.tmp-v0002-")
            && last.contains("/image.png: writing baseline file failed: No space left on device")
            && last.contains("(no new baseline written; earlier versions untouched)"),
        "{err}"
    );
    // The store is as it was: no half-written version, no temp folder, v1 still verifies.
    assert_eq!(common::site::snapshot(&baselines), before);
    server.set_mode(Mode::Normal);
    let (code, v, _) = check_json(&site);
    assert_eq!((code, verdicts(&v)), (0, vec!["identical".to_string(); 2]));
    assert_eq!(case(&v, "svc")["baseline_version"], 1);
}
