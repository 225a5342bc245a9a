//! ONNX Runtime's optimized-model cache: sessions loaded from it give bit-identical outputs to
//! sessions built from the model on this host; an entry is keyed by every setting and file, is
//! confirmed against the model files' sha256 before its sessions count, and is rebuilt (never
//! trusted) when it is damaged or was made for other bytes.

mod common;

use std::path::Path;

use common::copy_tree;
use common::site::{case, parse_check, Site, TIGHT};
use serde_json::Value;

const FOX: &str = "{name: fox, prompt: \"a red fox\", negative_prompt: \"blurry\", seed: 1, steps: 4, width: 64, height: 64, scheduler: pndm, noise: numpy}";

fn check(site: &Site) -> Value {
    let (code, v, err) = parse_check(site.run(&["check", "--json"]));
    assert!(!v.is_null(), "{err}");
    let _ = code;
    case(&v, "fox").clone()
}

fn cache_said(c: &Value) -> String {
    c["performance"]["session_cache"]
        .as_str()
        .unwrap_or("(absent)")
        .to_string()
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn cached_sessions_give_the_bits_of_uncached_ones_and_stale_entries_are_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    copy_tree(&common::repo_path("onnx/tiny-sd15"), &model);
    let site = Site::with_cases(Some(&model), &[FOX], TIGHT);
    let cache = site.path("session-cache");
    // The baseline comes from sessions built from the model itself.
    site.edit_config("threads: 1}", "threads: 1, session_cache: false}");
    site.rebaseline();
    assert!(entries(&cache).is_empty());
    let c = check(&site);
    assert_eq!(
        (c["verdict"].as_str(), cache_said(&c).as_str()),
        (Some("identical"), "(absent)")
    );

    // First cached check writes one entry per network; the second loads them. Both are
    // identical to the uncached baseline under thresholds that call any bit drift.
    site.edit_config("session_cache: false}", "session_cache: true}");
    let c = check(&site);
    assert_eq!(c["verdict"], "identical", "{c}");
    assert_eq!(cache_said(&c), "3 written");
    let names = entries(&cache);
    assert_eq!(names.len(), 3, "{names:?}");
    for (n, prefix) in names.iter().zip(["text_encoder-", "unet-", "vae_decoder-"]) {
        assert!(n.starts_with(prefix), "{names:?}");
        for f in ["key.json", "model.onnx", "weights.bin"] {
            assert!(cache.join(n).join(f).is_file(), "{n}/{f}");
        }
    }
    let c = check(&site);
    assert_eq!(c["verdict"], "identical", "{c}");
    assert_eq!(cache_said(&c), "3 loaded");

    // Every setting is part of the key: another graph optimization level gets entries of its
    // own (and its sessions, built from the model, are not the `all` ones).
    site.edit_config("threads: 1,", "threads: 1, graph_optimization: basic,");
    let c = check(&site);
    assert_eq!(cache_said(&c), "3 written");
    assert_eq!(entries(&cache).len(), 6);
    site.edit_config("threads: 1, graph_optimization: basic,", "threads: 1,");

    // A damaged entry is not trusted: its session fails to load and is rebuilt from the model.
    let unet_entry = cache.join(names.iter().find(|n| n.starts_with("unet-")).unwrap());
    let graph = unet_entry.join("model.onnx");
    let bytes = std::fs::read(&graph).unwrap();
    std::fs::write(&graph, &bytes[..bytes.len() / 2]).unwrap();
    let c = check(&site);
    assert_eq!(c["verdict"], "identical", "{c}");
    assert_eq!(cache_said(&c), "2 loaded, 1 written");

    // A UNet weight changed by one ulp with the file's size and time kept: the cheap key finds
    // the old entry, the sha256 refuses it, and the sessions are rebuilt from the new bytes.
    let weights = model.join("unet/weights.pb");
    let mtime = std::fs::metadata(&weights).unwrap().modified().unwrap();
    let mut w = std::fs::read(&weights).unwrap();
    let at = (0..2304)
        .step_by(4)
        .find(|&i| {
            let x = f32::from_le_bytes(w[i..i + 4].try_into().unwrap()).abs();
            (1e-3..1e3).contains(&x)
        })
        .unwrap();
    w[at] ^= 1;
    std::fs::write(&weights, &w).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&weights)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let stale = check(&site);
    assert_eq!(stale["verdict"], "model_changed", "{stale}");
    assert_eq!(cache_said(&stale), "stale for unet: rebuilt from the model");
    // What ran was the new weights: the same outputs as a run without any cache.
    site.edit_config("session_cache: true}", "session_cache: false}");
    let uncached = check(&site);
    for k in ["max_abs", "cosine"] {
        assert_eq!(
            stale["report"]["latents"][k], uncached["report"]["latents"][k],
            "{k}: {stale}\n{uncached}"
        );
    }
    assert!(stale["report"]["latents"]["max_abs"].as_f64().unwrap() > 0.0);
    // The next cached check writes the entry for the new bytes and loads the others.
    site.edit_config("session_cache: false}", "session_cache: true}");
    let c = check(&site);
    assert_eq!(cache_said(&c), "2 loaded, 1 written");
    assert_eq!(c["report"]["latents"], uncached["report"]["latents"]);

    // Two entries per network are kept, by last use: a third setting evicts the least recently
    // used one (basic), not the one in use. A temp folder of a dead writer is swept.
    std::fs::create_dir(cache.join(".tmp-unet-0123-4000000000")).unwrap();
    site.edit_config("threads: 1,", "threads: 1, graph_optimization: extended,");
    let c = check(&site);
    assert_eq!(cache_said(&c), "3 written");
    let names = entries(&cache);
    assert_eq!(names.len(), 6, "{names:?}");
    let mut levels: Vec<String> = names
        .iter()
        .filter(|n| n.starts_with("unet-"))
        .map(|n| {
            let k: Value =
                serde_json::from_slice(&std::fs::read(cache.join(n).join("key.json")).unwrap())
                    .unwrap();
            k["settings"]["graph_optimization"]
                .as_str()
                .unwrap_or("all")
                .to_string()
        })
        .collect();
    levels.sort();
    assert_eq!(levels, ["all", "extended"]);
}

#[test]
fn the_cache_is_on_by_default_on_cpu_and_a_cache_folder_that_cannot_be_written_is_a_warning() {
    let site = Site::with_cases(None, &[FOX], "");
    site.rebaseline();
    assert_eq!(entries(&site.path("session-cache")).len(), 3);
    // A file where the folder should be: the check runs, without the cache, and says so.
    let site = Site::with_cases(None, &[FOX], "");
    std::fs::write(site.path("session-cache"), b"not a folder").unwrap();
    site.rebaseline();
    let o = site.run(&["check", "--json"]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(err.contains("session cache not used"), "{err}");
    let (_, v, _) = parse_check(o);
    assert_eq!(case(&v, "fox")["verdict"], "identical", "{v}");
}

#[test]
fn a_full_disk_under_the_cache_costs_only_the_cache() {
    let site = Site::with_cases(None, &[FOX], TIGHT);
    site.edit_config("threads: 1}", "threads: 1, session_cache: false}");
    site.rebaseline();
    site.edit_config("session_cache: false}", "session_cache: true}");
    let cache = site.path("session-cache");
    std::fs::create_dir(&cache).unwrap();
    // 16 KiB free: ONNX Runtime cannot write a single optimized graph with its weights.
    let Some(o) = common::site::on_full_disk(&cache, 16 << 10, site.command(&["check", "--json"]))
    else {
        println!(
            "FAULT | full disk under the session cache | NOT RUN: no mount namespace here | - |"
        );
        return;
    };
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    let (code, v, _) = parse_check(o);
    assert_eq!(code, 0, "{err}\n{v}");
    let c = case(&v, "fox");
    assert_eq!(c["verdict"], "identical", "{c}");
    // ONNX Runtime's write of the optimized graph fails, so each session is built again
    // without the cache (before the fallback, the check failed with an error).
    assert_eq!(
        err.matches("session cache not written for").count(),
        3,
        "{err}"
    );
    // Nothing half-written was left as an entry, and no temp folder stays behind.
    let left = entries(&cache);
    assert!(
        left.iter()
            .all(|n| cache.join(n).join("key.json").is_file()),
        "{left:?}"
    );
    assert!(left.iter().all(|n| !n.starts_with(".tmp-")), "{left:?}");
}
