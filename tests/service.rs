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
