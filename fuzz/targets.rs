//! The body of every fuzz target, one function per reader of untrusted bytes. The libFuzzer
//! binaries in `fuzz_targets/` call these, and `tests/fuzz_regressions.rs` feeds them every crash
//! input and seed, so a regression test runs exactly what the fuzzer ran. Each must give a value
//! or an error for any input: never a panic, a hang, or an allocation the input does not pay for.
#![allow(dead_code)]

use std::path::Path;
use std::sync::OnceLock;

use monitor::sd::noise::{NoiseDtype, NoiseError, NoiseSource};
use monitor::sd::scheduler::{build, Latents, SchedulerConfig, SchedulerKind};
use monitor::sd::tokenizer::{ClipTokenizer, MAX_LENGTH};
use ndarray::{ArrayD, IxDyn};

/// `.npy` bytes as read for noise files and latents.
pub fn npy(data: &[u8]) {
    if let Ok(array) = monitor::sd::npy::parse_npy(data, Path::new("fuzz.npy")) {
        let count: usize = array.shape.iter().product();
        assert_eq!(array.data.len(), count);
        if let Some(wide) = &array.data_f64 {
            assert_eq!(wide.len(), count);
        }
    }
}

/// PNG bytes as read for baseline images: a hostile header (huge dimensions, bad chunks) must
/// give an error.
pub fn png(data: &[u8]) {
    if let Ok(img) = monitor::sd::image::RgbImage::from_png(data) {
        assert_eq!(
            img.pixels.len() as u64,
            u64::from(img.width) * u64::from(img.height) * 3
        );
    }
}

/// Zeros for ancestral step noise: the values do not matter, only that the step runs.
struct ZeroNoise;

impl NoiseSource for ZeroNoise {
    fn name(&self) -> &'static str {
        "fuzz-zeros"
    }

    fn randn(&mut self, shape: &[usize], _dtype: NoiseDtype) -> Result<ArrayD<f32>, NoiseError> {
        Ok(ArrayD::zeros(IxDyn(shape)))
    }
}

/// `scheduler_config.json` text: every config that parses must build every scheduler's
/// timesteps and sigmas and step through them.
pub fn scheduler_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = SchedulerConfig::from_json_str(text, "fuzz") else {
        return;
    };
    // The config file allows at most 1000 steps; large step counts over huge training ranges only
    // repeat the same arithmetic more slowly, so the full range is tried on small models only.
    let t = config.num_train_timesteps;
    let mut step_counts = vec![1, 2, 3, 7, 50];
    if t <= 1000 {
        step_counts.push(t);
    }
    for steps in step_counts {
        for kind in SchedulerKind::ALL {
            let Ok(mut scheduler) = build(kind, &config, steps) else {
                continue;
            };
            let _ = scheduler.init_noise_sigma();
            let calls = scheduler.timesteps().len();
            if calls > 64 {
                continue;
            }
            let mut sample = Latents::from_elem((1, 1, 1, 2), 0.5);
            for i in 0..calls {
                let input = scheduler.scale_model_input(sample.clone(), i);
                match scheduler.step(&input, i, &sample, &mut ZeroNoise) {
                    Ok(next) => sample = next,
                    Err(_) => break,
                }
            }
        }
    }
}

/// One scratch folder per process, reused for every input of the file-based targets (their
/// files are replaced before each run).
fn scratch() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("temp dir"))
        .path()
}

/// A model's `tokenizer/` folder. The first byte picks the files: even → the rest is
/// tokenizer.json; odd → vocab.json and merges.txt separated by the first NUL byte.
pub fn tokenizer(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let dir = scratch().join("tokenizer");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    let result = if mode % 2 == 0 {
        let path = dir.join("tokenizer.json");
        std::fs::write(&path, rest).expect("write tokenizer.json");
        // Both entry points: from_dir finds the file, from_tokenizer_json takes it directly.
        let _ = ClipTokenizer::from_tokenizer_json(&path);
        ClipTokenizer::from_dir(&dir)
    } else {
        let split = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        let (vocab, merges) = rest.split_at(split);
        std::fs::write(dir.join("vocab.json"), vocab).expect("write vocab.json");
        std::fs::write(dir.join("merges.txt"), merges.get(1..).unwrap_or(&[]))
            .expect("write merges.txt");
        ClipTokenizer::from_dir(&dir)
    };
    if let Ok(tokenizer) = result {
        for prompt in [
            "a photo of an astronaut riding a horse",
            "",
            "<|endoftext|> Ünïcödé 123",
        ] {
            if let Ok(encoded) = tokenizer.encode(prompt) {
                assert_eq!(encoded.ids.len(), MAX_LENGTH);
            }
        }
    }
}

/// The monitor's YAML config: parsing, then validating.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match monitor::config::Config::parse(text, Path::new("fuzz.yaml")) {
        Ok(config) => {
            for error in config.validate(text) {
                let _ = error.to_string();
            }
        }
        Err(error) => {
            let _ = error.to_string();
        }
    }
}

/// A generation folder as `check` reads a baseline or a run's output: metadata.json (parsed, its
/// recorded hashes checked, then validated for the comparison), latents.npy and image.png. The
/// input is split into the three files by a 2-byte and a 4-byte little-endian length up front.
pub fn generation(data: &[u8]) {
    if data.len() < 6 {
        return;
    }
    let meta_len = usize::from(u16::from_le_bytes([data[0], data[1]]));
    let npy_len = u32::from_le_bytes([data[2], data[3], data[4], data[5]]) as usize;
    let rest = &data[6..];
    let meta_end = meta_len.min(rest.len());
    let npy_end = meta_end.saturating_add(npy_len).min(rest.len());
    let dir = scratch().join("generation");
    std::fs::create_dir_all(&dir).expect("mkdir");
    for (name, bytes) in [
        ("metadata.json", &rest[..meta_end]),
        ("latents.npy", &rest[meta_end..npy_end]),
        ("image.png", &rest[npy_end..]),
    ] {
        std::fs::write(dir.join(name), bytes).expect("write");
    }
    match monitor::generation::read(&dir) {
        Ok(files) => {
            if let Some(l) = &files.latents {
                let n: usize = l.shape.iter().product();
                assert_eq!(l.values.len(), n);
            }
            let _ = monitor::metadata::validate(&files.metadata, "fox");
        }
        Err(e) => assert!(!e.to_string().contains('\n'), "{e}"),
    }
    // The metadata reader and the validator alone, on whatever the metadata part holds.
    match monitor::generation::Metadata::from_slice(&rest[..meta_end]) {
        Ok(m) => {
            let _ = monitor::metadata::validate(&m, "fox");
        }
        Err(e) => assert!(!e.contains('\n'), "{e}"),
    }
}

/// The UNet graph scanner, which walks the protobuf bytes of `unet/model.onnx`.
pub fn onnx_graph(data: &[u8]) {
    if let Ok(g) = monitor::sd::onnx_graph::scan_unet_bytes(data) {
        for (w, h) in [(512, 512), (96, 72), (8, 8), (2048, 8)] {
            let _ = g.check_size(w, h);
        }
        assert!(g.latent_multiple() >= 1);
    }
}

/// The baseline store's batch journal, read by every writer and check to complete a batch whose
/// writer died: completed or refused, and a committed version folder is never touched.
pub fn journal(data: &[u8]) {
    let root = scratch().join("journal");
    let _ = std::fs::remove_dir_all(&root);
    // A committed version and a staged one, as a real interrupted batch leaves them.
    std::fs::create_dir_all(root.join("fox/v0001")).expect("mkdir");
    std::fs::write(root.join("fox/v0001/keep"), b"v1").expect("write");
    std::fs::create_dir_all(root.join("fox/.tmp-v0002-7")).expect("mkdir");
    std::fs::write(root.join(".journal.json"), data).expect("write");
    let _ = monitor::baseline::BaselineStore::new(&root).recover();
    assert_eq!(
        std::fs::read(root.join("fox/v0001/keep")).expect("v0001 survives"),
        b"v1"
    );
}

/// A snapshot tar from another host (`monitor compare`, `check --against`): extracted with plain
/// names and bounded sizes only, then verified; any damage is a one-line error.
pub fn snapshot(data: &[u8]) {
    let path = scratch().join("snapshot.tar");
    std::fs::write(&path, data).expect("write");
    match monitor::snapshot::Snapshot::open(&path) {
        Ok(s) => {
            for (name, b) in &s.cases {
                assert!(monitor::baseline::validate_case(name).is_ok());
                if let Some(l) = &b.latents {
                    let n: usize = l.shape.iter().product();
                    assert_eq!(l.values.len(), n);
                }
            }
        }
        Err(e) => assert!(!format!("{e:#}").contains('\n'), "{e:#}"),
    }
}

/// `stages.npy` with the record `metadata.json` gives it (the record's JSON, then the file's
/// bytes; the record's sha256 is set to the bytes' own, so the parser gets past it): a hostile
/// tensor list (huge or overflowing shapes, more than the file holds) must give an error, and
/// what parses must be readable tensor by tensor.
pub fn stages(data: &[u8]) {
    if data.len() < 2 {
        return;
    }
    let n = usize::from(u16::from_le_bytes([data[0], data[1]])).min(data.len() - 2);
    let (json, bytes) = data[2..].split_at(n);
    let Ok(mut record) = serde_json::from_slice::<monitor::stage_data::StagesRecord>(json) else {
        return;
    };
    record.sha256 = Some(monitor::sd::model::sha256_hex(bytes));
    match monitor::stage_data::StoredStages::parse(bytes.to_vec(), &record, Path::new("stages.npy"))
    {
        Ok(s) => {
            for t in &record.tensors {
                let (shape, values) = s.get(&t.stage).expect("a listed tensor");
                assert_eq!(values.len(), shape.iter().product::<usize>());
                let _ = (s.array3(&t.stage), s.array4(&t.stage));
            }
            let _ = s.step_latents();
        }
        Err(e) => assert!(!e.contains('\n'), "{e}"),
    }
}

/// A generation service's answer: an A1111 txt2img JSON document (base64 image, `info` as a JSON
/// string), the image it carries, and the same bytes as a request template.
pub fn service_answer(data: &[u8]) {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    match monitor::service::parse_a1111_answer(&v) {
        Ok((png, _info)) => {
            if let Err(e) = monitor::service::decode_png(&png) {
                assert!(!e.contains('\n'), "{e}");
            }
        }
        Err(e) => assert!(!e.contains('\n'), "{e}"),
    }
    let _ = monitor::service::placeholders(&v);
    let req = monitor::service::ServiceRequest {
        prompt: "a \"fox\"".into(),
        negative_prompt: String::new(),
        seed: 1,
        steps: 2,
        cfg: 7.5,
        width: 64,
        height: 64,
        scheduler: SchedulerKind::Pndm,
        karras: false,
        sampler: None,
    };
    let _ = monitor::service::fill(&v, &req, "PLMS");
}
