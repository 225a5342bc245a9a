//! Inputs found by the fuzz targets in `fuzz/` (crashes and hangs, minimised, in
//! `tests/fixtures/fuzz/<target>/`) and the fuzz seeds (`fuzz/seeds/<target>/`), fed to the very
//! bodies the fuzz targets run (`fuzz/targets.rs`): every one must give `Ok` or `Err`, never a
//! panic.
//!
//! Run the fuzzers with `scripts/fuzz.sh`; add each new crash input here as a file.

use std::path::{Path, PathBuf};

use monitor::sd::image::RgbImage;
use monitor::sd::npy::parse_npy;
use monitor::sd::scheduler::SchedulerConfig;
use monitor::sd::tokenizer::ClipTokenizer;

#[path = "../fuzz/targets.rs"]
mod targets;

/// Every file for `target`: regression inputs first, then seeds. Missing folders are empty.
fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out = Vec::new();
    for dir in [
        root.join("tests/fixtures/fuzz").join(target),
        root.join("fuzz/seeds").join(target),
    ] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut paths: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).collect();
        paths.sort();
        for path in paths.into_iter().filter(|p| p.is_file()) {
            let bytes = std::fs::read(&path).unwrap();
            out.push((path, bytes));
        }
    }
    assert!(!out.is_empty(), "no inputs for fuzz target {target}");
    out
}

/// Runs `f` on every input of `target`, reporting each input that panics by its path.
fn each(target: &str, f: impl Fn(&[u8])) {
    let mut panicked = Vec::new();
    for (path, bytes) in inputs(target) {
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&bytes))).is_err() {
            panicked.push(path.display().to_string());
        }
    }
    assert!(panicked.is_empty(), "{target}: panicked on {panicked:?}");
}

#[test]
fn npy() {
    each("npy", targets::npy);
}

#[test]
fn png() {
    each("png", targets::png);
}

#[test]
fn scheduler_config() {
    each("scheduler_config", targets::scheduler_config);
}

#[test]
fn tokenizer() {
    each("tokenizer", targets::tokenizer);
}

#[test]
fn config() {
    each("config", targets::config);
}

#[test]
fn generation() {
    each("generation", targets::generation);
}

#[test]
fn onnx_graph() {
    each("onnx_graph", targets::onnx_graph);
}

#[test]
fn journal() {
    each("journal", targets::journal);
}

#[test]
fn snapshot() {
    each("snapshot", targets::snapshot);
}

#[test]
fn stages() {
    each("stages", targets::stages);
}

#[test]
fn service_answer() {
    each("service_answer", targets::service_answer);
}

/// The seeds meant to be valid stay valid, so the fuzzers start from inputs that get deep.
#[test]
fn valid_seeds_load() {
    let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    let read = |p: &str| std::fs::read(seeds.join(p)).unwrap();
    assert!(parse_npy(&read("npy/f32_1x4x2x2.npy"), Path::new("s")).is_ok());
    assert!(RgbImage::from_png(&read("png/rgb8_2x1.png")).is_ok());
    assert!(RgbImage::from_png(&read("png/palette2_4x1.png")).is_ok());
    // scripts/make_image_only_seed.py: a service's answer, in the generation target's layout.
    let seed = read("generation/image_only");
    let meta_len = usize::from(u16::from_le_bytes([seed[0], seed[1]]));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("metadata.json"), &seed[6..6 + meta_len]).unwrap();
    std::fs::write(dir.path().join("image.png"), &seed[6 + meta_len..]).unwrap();
    let files = monitor::generation::read(dir.path()).unwrap();
    assert!(files.latents.is_none() && files.metadata.is_image_only());
    assert!(monitor::metadata::validate(&files.metadata, "fox").is_ok());
    let sd15 = String::from_utf8(read("scheduler_config/sd15.json")).unwrap();
    assert!(SchedulerConfig::from_json_str(&sd15, "seed").is_ok());
    for name in ["tokenizer_json.bin", "vocab_merges.bin"] {
        let bytes = read(&format!("tokenizer/{name}"));
        let dir = tempfile::tempdir().unwrap();
        if bytes[0] % 2 == 0 {
            std::fs::write(dir.path().join("tokenizer.json"), &bytes[1..]).unwrap();
        } else {
            let split = bytes.iter().position(|&b| b == 0).unwrap();
            std::fs::write(dir.path().join("vocab.json"), &bytes[1..split]).unwrap();
            std::fs::write(dir.path().join("merges.txt"), &bytes[split + 1..]).unwrap();
        }
        let tokenizer =
            ClipTokenizer::from_dir(dir.path()).unwrap_or_else(|e| panic!("{name}: {e}"));
        let ids = tokenizer.encode("ab a").unwrap().ids;
        assert_eq!(ids[..4], [49406, 7, 3, 49407], "{name}");
    }
}
