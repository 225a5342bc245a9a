//! The drift-source matrix: for each way outputs can change, change that one thing on the tiny
//! model and check that the full check gives the right verdict and first differing stage, that
//! `check --quick` detects it, and that the environment diff names it when it is an environment
//! fact. Prints the matrix (`cargo test --release --test drift_matrix -- --nocapture | grep
//! MATRIX`), which the README shows.

mod common;

use std::path::{Path, PathBuf};

use common::site::{case, parse_check, Site};
use common::{copy_tree, old_ort_lib, repo_path};
use serde_json::Value;

const FOX: &str = "{name: fox, prompt: \"a red fox\", seed: 1, steps: 4, width: 64, height: 64, scheduler: pndm, noise: numpy}";

/// Changes a copy of the model in place.
type Edit = fn(&Path);

/// One changed thing and what must come of it.
struct Source {
    name: &'static str,
    /// Full check verdict.
    verdict: &'static str,
    /// Start of the full check's `diverged_at`.
    stage: &'static str,
    /// An environment key the diff must name (None: not an environment fact).
    env_key: Option<&'static str>,
}

/// Flips the lowest mantissa bit of the first float in `bytes[start..end]` whose magnitude is
/// in [1e-3, 1e3] (a weight that matters, changed by exactly one ulp).
fn flip_one_ulp(bytes: &mut [u8], start: usize, end: usize) {
    let at = (start..end)
        .step_by(4)
        .find(|&i| {
            let x = f32::from_le_bytes(bytes[i..i + 4].try_into().unwrap()).abs();
            (1e-3..1e3).contains(&x)
        })
        .expect("a float of ordinary magnitude");
    let before = f32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
    bytes[at] ^= 1;
    let after = f32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
    assert_eq!(before.to_bits().abs_diff(after.to_bits()), 1);
}

/// One ulp of the initializer `name` stored inline in an ONNX file: its `raw_data` (field 9)
/// follows its `name` (field 8) in the serialized TensorProto.
fn flip_initializer(onnx: &Path, name: &str) {
    let mut bytes = std::fs::read(onnx).unwrap();
    let needle = name.as_bytes();
    // The name also occurs as node inputs; the initializer's is the one raw_data follows
    // (tag 0x4A: field 9, length-delimited).
    let at = bytes
        .windows(needle.len() + 1)
        .position(|w| &w[..needle.len()] == needle && w[needle.len()] == 0x4A)
        .unwrap_or_else(|| panic!("no initializer {name} with raw_data in {}", onnx.display()))
        + needle.len();
    let (mut len, mut shift, mut i) = (0usize, 0, at + 1);
    loop {
        let b = bytes[i];
        len |= usize::from(b & 0x7f) << shift;
        shift += 7;
        i += 1;
        if b & 0x80 == 0 {
            break;
        }
    }
    flip_one_ulp(&mut bytes, i, i + len);
    std::fs::write(onnx, bytes).unwrap();
}

fn model_copy(dir: &Path) -> PathBuf {
    let m = dir.join("model");
    copy_tree(&repo_path("onnx/tiny-sd15"), &m);
    m
}

/// `monitor ARGS --config <site>/CONFIG`, run in the repo root.
fn monitor(site: &Site, args: &[&str], config: &str) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_monitor"))
        .args(args)
        .arg("--config")
        .arg(site.path(config))
        .current_dir(common::repo())
        .output()
        .unwrap()
}

/// Quick check alone: (its JSON for the case, exit code).
fn quick(site: &Site, config: &str) -> (Value, i32) {
    let o = monitor(
        site,
        &["check", "--quick", "--no-follow-up", "--json"],
        config,
    );
    let code = o.status.code().unwrap_or(-1);
    let v: Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stderr)));
    (v["quick"]["cases"][0].clone(), code)
}

fn full(site: &Site, config: &str) -> Value {
    let o = monitor(site, &["check", "--json"], config);
    let (_, v, err) = parse_check(o);
    assert!(!v.is_null(), "{err}");
    case(&v, "fox").clone()
}

/// Writes `config` beside the site's own with `from` replaced by `to`.
fn variant(site: &Site, name: &str, from: &str, to: &str) {
    let text = std::fs::read_to_string(site.path("monitor.yaml")).unwrap();
    assert!(text.contains(from), "{from}");
    std::fs::write(site.path(name), text.replacen(from, to, 1)).unwrap();
}

/// What the full check's diff names: environment keys, and changed model files.
fn named(full: &Value) -> Vec<String> {
    let keys = full["report"]["env_differences"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| d["key"].as_str().unwrap_or("?").to_string());
    let files = full["report"]["model_changes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| format!("model file {}", m["file"].as_str().unwrap_or("?")));
    keys.chain(files).collect()
}

fn row(source: &Source, full: &Value, quick: &Value, quick_code: i32) -> String {
    let env = named(full);
    let diverged = full["report"]["diverged_at"].as_str().unwrap_or("-");
    let quick_said = match quick["outcome"].as_str() {
        Some("differs") => format!("yes: {}", quick["stage"].as_str().unwrap_or("?")),
        Some("same") => "NO".to_string(),
        other => format!("{other:?}"),
    };
    let d = &full["report"]["divergence"];
    let line = format!(
        "MATRIX | {} | {} | {} | {} | {} | {} | {} |",
        source.name,
        full["verdict"].as_str().unwrap_or("?"),
        diverged,
        magnitude(d),
        over_limit(d),
        quick_said,
        if env.is_empty() {
            "-".into()
        } else {
            env.join(", ")
        }
    );
    check_divergence(source, full, &line);
    // The quick check measures the same stage on its replay.
    let qd = &quick["divergence"];
    // (The VAE's is its tile's decode, `decoded_tile`, in the quick check.)
    assert!(
        qd["stage"]
            .as_str()
            .is_some_and(|s| s.starts_with(diverged)),
        "{line}\n{quick}"
    );
    if !["tokens", "decoded"].contains(&source.stage) {
        assert!(
            qd["max_abs"].as_f64().is_some_and(|m| m > 0.0),
            "{line}\n{quick}"
        );
    }
    assert_eq!(full["verdict"], source.verdict, "{line}\n{full}");
    assert!(diverged.starts_with(source.stage), "{line}");
    assert_eq!(
        quick["outcome"], "differs",
        "the quick check missed it: {line}\n{quick}"
    );
    assert!(
        quick["stage"].as_str().unwrap().starts_with(source.stage),
        "quick names another stage: {line}"
    );
    assert_eq!(quick_code, 1, "{line}");
    if let Some(k) = source.env_key {
        assert!(env.iter().any(|e| e == k), "env diff lacks {k}: {line}");
    }
    if source.verdict == "model_changed" {
        assert!(env.iter().any(|e| e.starts_with("model file ")), "{line}");
    }
    line
}

/// `3.1e-7 (2.0e-7 rel.)` at the first differing stage, or its note.
fn magnitude(d: &Value) -> String {
    match (d["max_abs"].as_f64(), d["relative"].as_f64()) {
        (Some(m), Some(r)) => {
            let on = d["measured_on"]
                .as_str()
                .filter(|o| Some(*o) != d["stage"].as_str());
            format!(
                "{m:.1e} ({r:.1e} rel.){}",
                on.map_or(String::new(), |o| format!(" on {o}"))
            )
        }
        _ => d["note"].as_str().unwrap_or("-").to_string(),
    }
}

/// `step 1 of 5` (the latents' max |Δ| first above the latent threshold), or `never (≤ limit)`.
fn over_limit(d: &Value) -> String {
    let n = d["step_max_abs"].as_array().map_or(0, Vec::len);
    match d["exceeded_at_step"].as_u64() {
        Some(s) => format!("step {s} of {n}"),
        None if n > 0 => format!(
            "never (≤ {:.0e})",
            d["latent_limit"].as_f64().unwrap_or(0.0)
        ),
        None => "-".into(),
    }
}

/// The magnitudes must agree with what was measured independently: the last step's latents are
/// the final latents (their max |Δ| is `report.latents.max_abs`, computed by the comparison
/// code); a VAE-only change leaves every step at 0 and measures the image in the levels the
/// image comparison counts; a differing hash comes with a nonzero magnitude.
fn check_divergence(source: &Source, full: &Value, line: &str) {
    let d = &full["report"]["divergence"];
    let steps: Vec<f64> = d["step_max_abs"]
        .as_array()
        .unwrap_or_else(|| panic!("no step trajectory: {line}\n{full}"))
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    // PNDM with 4 steps makes 5 UNet calls.
    assert_eq!(steps.len(), 5, "{line}");
    let last = *steps.last().unwrap();
    let final_max = full["report"]["latents"]["max_abs"].as_f64().unwrap();
    assert!(
        (last - final_max).abs() <= 1e-12 * final_max.max(1.0),
        "{line}: {last} vs {final_max}"
    );
    let limit = d["latent_limit"].as_f64().unwrap();
    let first_over = steps.iter().position(|&m| m > limit).map(|i| i as u64 + 1);
    assert_eq!(d["exceeded_at_step"].as_u64(), first_over, "{line}");
    match source.stage {
        "tokens" => assert!(
            d["note"]
                .as_str()
                .is_some_and(|n| n.ends_with("ids differ") && !n.starts_with("0 ")),
            "{line}"
        ),
        "decoded" => {
            assert!(steps.iter().all(|&m| m == 0.0), "{line}");
            assert_eq!(d["measured_on"], "image", "{line}");
            assert_eq!(
                d["max_abs"].as_f64(),
                full["report"]["image"]["max_level_diff"].as_f64(),
                "{line}"
            );
        }
        _ => {
            assert!(
                d["max_abs"].as_f64().is_some_and(|m| m > 0.0),
                "{line}\n{d}"
            );
            assert!(
                d["relative"]
                    .as_f64()
                    .is_some_and(|r| r > 0.0 && r.is_finite()),
                "{line}"
            );
            // A change before the loop moves the latents from the first step on.
            assert!(steps[0] > 0.0, "{line}");
        }
    }
}

#[test]
fn every_drift_source_is_caught_by_the_full_and_the_quick_check() {
    let mut lines = vec![
        "MATRIX | source | full check | diverged_at | magnitude there | latents over the limit from | quick detected | environment diff |"
            .to_string(),
        "MATRIX |---|---|---|---|---|---|---|".to_string(),
    ];
    // Sources that edit a copy of the model: its files change, so the full verdict is
    // model_changed, and the stage says which network.
    let model_edits: [(Source, Edit); 5] = [
        (
            Source {
                name: "UNet weight +1 ulp (unet/weights.pb, conv_in)",
                verdict: "model_changed",
                stage: "step 1 noise_pred",
                env_key: None,
            },
            |m| {
                // unet.conv_in.weight is the first external tensor (offset 0, 2304 bytes).
                let p = m.join("unet/weights.pb");
                let mut b = std::fs::read(&p).unwrap();
                flip_one_ulp(&mut b, 0, 2304);
                std::fs::write(p, b).unwrap();
            },
        ),
        (
            Source {
                name: "text-encoder weight +1 ulp (position embedding)",
                verdict: "model_changed",
                stage: "text_embeddings",
                env_key: None,
            },
            |m| {
                flip_initializer(
                    &m.join("text_encoder/model.onnx"),
                    "text.embeddings.position_embedding.weight",
                )
            },
        ),
        (
            Source {
                name: "VAE-decoder weight +1 ulp (conv_in)",
                verdict: "model_changed",
                stage: "decoded",
                env_key: None,
            },
            |m| {
                flip_initializer(
                    &m.join("vae_decoder/model.onnx"),
                    "vae.decoder.conv_in.weight",
                )
            },
        ),
        (
            Source {
                name: "tokenizer vocab edited (ids of red and fox swapped)",
                verdict: "model_changed",
                stage: "tokens",
                env_key: None,
            },
            |m| {
                let p = m.join("tokenizer/vocab.json");
                let mut v: serde_json::Map<String, Value> =
                    serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
                let (red, fox) = (v["red</w>"].clone(), v["fox</w>"].clone());
                v.insert("red</w>".into(), fox);
                v.insert("fox</w>".into(), red);
                std::fs::write(p, serde_json::to_vec(&v).unwrap()).unwrap();
            },
        ),
        (
            Source {
                name: "scheduler config edited (steps_offset 1 → 0)",
                verdict: "model_changed",
                stage: "timesteps",
                env_key: None,
            },
            |m| {
                let p = m.join("scheduler/scheduler_config.json");
                let t = std::fs::read_to_string(&p).unwrap();
                assert!(t.contains("\"steps_offset\": 1"));
                std::fs::write(p, t.replace("\"steps_offset\": 1", "\"steps_offset\": 0")).unwrap();
            },
        ),
    ];
    for (source, edit) in model_edits {
        let dir = tempfile::tempdir().unwrap();
        let model = model_copy(dir.path());
        let site = Site::with_cases(Some(&model), &[FOX], "");
        site.rebaseline();
        edit(&model);
        let f = full(&site, "monitor.yaml");
        if source.stage == "decoded" {
            // Only the decoder changed: the latents are the baseline's, bit for bit.
            assert_eq!(f["report"]["latents"]["max_abs"], 0.0, "{f}");
        }
        let (q, code) = quick(&site, "monitor.yaml");
        lines.push(row(&source, &f, &q, code));
    }

    // Sources in the environment or the case: same model files, so the full verdict is judged
    // on the outputs (drift under thresholds that call any bit drift).
    let tight = "thresholds: {latent_max_abs: 0.0, latent_cosine_min: 1.0, ssim_min: 1.0}\n";
    let site = Site::with_cases(None, &[FOX], tight);
    site.rebaseline();
    let env_variants = [
        (
            Source {
                name: "ONNX Runtime 1.24.4 instead of 1.31.1 (PyPI)",
                verdict: "drift",
                stage: "text_embeddings",
                env_key: Some("onnxruntime.version"),
            },
            "old-ort.yaml",
            "cases:",
            format!(
                "onnxruntime: {{library: {}}}\ncases:",
                old_ort_lib().display()
            ),
        ),
        (
            Source {
                name: "graph optimization level (all → disable)",
                verdict: "drift",
                stage: "step 1 noise_pred",
                env_key: Some("execution_provider.graph_optimization"),
            },
            "graph-opt.yaml",
            "threads: 1}",
            "threads: 1, graph_optimization: disable}".to_string(),
        ),
    ];
    for (source, file, from, to) in &env_variants {
        variant(&site, file, from, to);
        let f = full(&site, file);
        let (q, code) = quick(&site, file);
        lines.push(row(source, &f, &q, code));
    }

    // Thread count: measured, not assumed. Whatever it does, the quick check must agree with
    // the full one.
    variant(&site, "threads.yaml", "threads: 1}", "threads: 2}");
    let f = full(&site, "threads.yaml");
    let (q, _) = quick(&site, "threads.yaml");
    let full_same = f["verdict"] == "identical";
    let quick_same = q["outcome"] == "same";
    assert_eq!(full_same, quick_same, "threads: full {f}\nquick {q}");
    let env = named(&f);
    assert!(
        env.iter()
            .any(|e| e == "execution_provider.intra_op_threads"),
        "{f}"
    );
    lines.push(format!(
        "MATRIX | intra-op threads 1 → 2 | {} | {} | {} | {} | {} | {} |",
        f["verdict"].as_str().unwrap_or("?"),
        f["report"]["diverged_at"].as_str().unwrap_or("-"),
        magnitude(&f["report"]["divergence"]),
        over_limit(&f["report"]["divergence"]),
        if quick_same {
            "no change to detect".to_string()
        } else {
            format!("yes: {}", q["stage"])
        },
        env.join(", ")
    ));

    // The noise source: the same case reading another noise file from the same path (the
    // parameters are equal; the initial latents are not).
    let dir = tempfile::tempdir().unwrap();
    let noise = dir.path().join("noise.npy");
    let draw = |seed: &str| {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_monitor"))
            .args([
                "noise", "--source", "numpy", "--seed", seed, "--shape", "1,4,8,8", "--out",
            ])
            .arg(&noise)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    draw("5");
    let with_file = format!(
        "{{name: fox, prompt: \"a red fox\", seed: 1, steps: 4, width: 64, height: 64, scheduler: pndm, noise: file, noise_file: {}}}",
        noise.display()
    );
    let site = Site::with_cases(None, &[&with_file], tight);
    site.rebaseline();
    draw("6");
    let f = full(&site, "monitor.yaml");
    let (q, code) = quick(&site, "monitor.yaml");
    lines.push(row(
        &Source {
            name: "noise source (another draw in the noise file)",
            verdict: "drift",
            stage: "initial_noise",
            env_key: None,
        },
        &f,
        &q,
        code,
    ));

    for l in &lines {
        println!("{l}");
    }
}

fn flip_unet(m: &Path) {
    let p = m.join("unet/weights.pb");
    let mut b = std::fs::read(&p).unwrap();
    flip_one_ulp(&mut b, 0, 2304);
    std::fs::write(p, b).unwrap();
}

fn differing(q: &Value) -> Vec<String> {
    q["differing"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

/// Turns the site's fox baseline into one made before stage tensors: no `stages.npy`, and no
/// record of it in `metadata.json`.
fn strip_stage_tensors(site: &Site) {
    let v = site.path("baselines/fox/v0001");
    std::fs::remove_file(v.join("stages.npy")).unwrap();
    let p = v.join("metadata.json");
    let mut m: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    m["outputs"]
        .as_object_mut()
        .unwrap()
        .remove("stages")
        .unwrap();
    std::fs::write(&p, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
}

#[test]
fn the_quick_check_feeds_each_network_its_baseline_s_inputs_and_names_each_that_changed() {
    let dir = tempfile::tempdir().unwrap();
    let model = model_copy(dir.path());
    let site = Site::with_cases(Some(&model), &[FOX], "");
    site.rebaseline();
    assert!(site.path("baselines/fox/v0001/stages.npy").is_file());
    let te = |m: &Path| {
        flip_initializer(
            &m.join("text_encoder/model.onnx"),
            "text.embeddings.position_embedding.weight",
        )
    };
    let vae = |m: &Path| {
        flip_initializer(
            &m.join("vae_decoder/model.onnx"),
            "vae.decoder.conv_in.weight",
        )
    };
    // One network at a time joins the changed ones; each is judged on the baseline's inputs, so
    // the UNet is not blamed for the text encoder's change, nor the VAE for the UNet's.
    te(&model);
    let (q, _) = quick(&site, "monitor.yaml");
    assert_eq!(differing(&q), ["text_embeddings"], "{q}");
    flip_unet(&model);
    let (q, _) = quick(&site, "monitor.yaml");
    assert_eq!(
        differing(&q),
        ["text_embeddings", "step 1 noise_pred"],
        "{q}"
    );
    vae(&model);
    let (q, _) = quick(&site, "monitor.yaml");
    assert_eq!(
        differing(&q),
        ["text_embeddings", "step 1 noise_pred", "decoded_tile"],
        "{q}"
    );
    let text = String::from_utf8_lossy(
        &monitor(
            &site,
            &["check", "--quick", "--no-follow-up"],
            "monitor.yaml",
        )
        .stdout,
    )
    .into_owned();
    assert!(
        text.contains("these differ: text_embeddings, step 1 noise_pred, decoded_tile"),
        "{text}"
    );

    // The same text-encoder change against a baseline without stage tensors: the UNet runs on
    // the recomputed embeddings, so its output differs too, and only the first stage is the
    // cause. The full check still names the stage, without magnitudes it has no data for.
    let dir = tempfile::tempdir().unwrap();
    let model = model_copy(dir.path());
    let site = Site::with_cases(Some(&model), &[FOX], "");
    site.rebaseline();
    strip_stage_tensors(&site);
    te(&model);
    let (q, _) = quick(&site, "monitor.yaml");
    assert_eq!(
        differing(&q),
        ["text_embeddings", "step 1 noise_pred"],
        "{q}"
    );
    let f = full(&site, "monitor.yaml");
    assert_eq!(f["report"]["diverged_at"], "text_embeddings", "{f}");
    let d = &f["report"]["divergence"];
    assert_eq!(d["note"], "no stage tensors in the baseline", "{f}");
    assert!(
        d.get("max_abs").is_none() && d["step_max_abs"] == serde_json::json!([]),
        "{d}"
    );
}

#[test]
fn above_the_tile_size_the_quick_check_decodes_only_the_tile_and_still_sees_a_vae_change() {
    // 320×256 pixels: 40×32 latents, larger than the 32×32 tile.
    const WIDE: &str = "{name: fox, prompt: \"a red fox\", seed: 1, steps: 2, width: 320, height: 256, scheduler: pndm, noise: numpy}";
    let dir = tempfile::tempdir().unwrap();
    let model = model_copy(dir.path());
    let site = Site::with_cases(Some(&model), &[WIDE], "");
    site.rebaseline();
    let meta: Value = serde_json::from_slice(
        &std::fs::read(site.path("baselines/fox/v0001/metadata.json")).unwrap(),
    )
    .unwrap();
    let names: Vec<&str> = meta["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stage"].as_str().unwrap())
        .collect();
    assert_eq!(
        names[names.len() - 3..],
        ["decoded", "image", "decoded_tile"]
    );
    // The tile is its own decode here, not the whole one's hash.
    let sha = |n: &str| {
        meta["stages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["stage"] == n)
            .unwrap()["sha256"]
            .clone()
    };
    assert_ne!(sha("decoded"), sha("decoded_tile"));
    assert!(meta["timings"]["vae_tile_s"].as_f64().unwrap() > 0.0);

    let (q, code) = quick(&site, "monitor.yaml");
    assert_eq!((q["outcome"].as_str(), code), (Some("same"), 0), "{q}");
    // tokens, text_embeddings, initial_noise, timesteps, step 1 noise_pred and latents, and the
    // tile: no whole decode.
    assert_eq!(q["stages_compared"], 7, "{q}");
    assert!(q["vae_s"].as_f64().unwrap() < meta["timings"]["vae_s"].as_f64().unwrap() * 2.0);

    flip_initializer(
        &model.join("vae_decoder/model.onnx"),
        "vae.decoder.conv_in.weight",
    );
    let (q, code) = quick(&site, "monitor.yaml");
    assert_eq!(
        (q["stage"].as_str(), code),
        (
            Some("decoded_tile (model file changed: vae_decoder/model.onnx)"),
            1
        ),
        "{q}"
    );
    assert_eq!(differing(&q), ["decoded_tile"]);
}
