//! Generation folders: today's format (`tests/fixtures/generation/v1/`, a baseline written by the
//! monitor before the metadata was typed) and an earlier one (`v1-early/`, whose `baseline`
//! block has no hashes) load, verify and reserialize unchanged; damage is reported as before;
//! writing then reading gives back what was written; new files have today's shape.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{copy_tree, repo, repo_path};
use monitor::baseline::{BaselineStore, NewBaseline};
use monitor::case::CaseSpec;
use monitor::check::parameter_difference;
use monitor::generation::{
    self, GenerationFiles, Metadata, IMAGE_FILE, LATENTS_FILE, METADATA_FILE,
};
use monitor::sd::npy::write_npy_f32;
use serde_json::{json, Value};

/// The v1 fixture's version folder.
fn v1() -> PathBuf {
    repo_path("tests/fixtures/generation/v1/lighthouse/v0001")
}

/// The early-v1 fixture's version folder.
fn v1_early() -> PathBuf {
    repo_path("tests/fixtures/generation/v1-early/lighthouse/v0001")
}

/// A writable copy of a fixture folder.
fn copy_of(dir: &Path) -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let to = t.path().join("lighthouse/v0001");
    copy_tree(dir, &to);
    (t, to)
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// The case the fixtures were generated from (configs/tiny.yaml's lighthouse).
fn lighthouse() -> CaseSpec {
    CaseSpec {
        name: "lighthouse".into(),
        prompt: "a lighthouse on a rocky cliff at dawn, watercolor".into(),
        negative_prompt: None,
        seed: 7,
        steps: 10,
        guidance_scale: 5.0,
        width: 64,
        height: 96,
        scheduler: "ddim".parse().unwrap(),
        noise: "torch-cpu".parse().unwrap(),
        noise_file: None,
        karras: false,
        batch_size: 1,
    }
}

#[test]
fn v1_folder_loads_with_every_field_typed_and_verifies() {
    let GenerationFiles {
        latents,
        image,
        metadata: m,
        stages,
    } = generation::read(&v1()).unwrap();
    // Written before stage tensors: none listed, none read.
    assert!(stages.is_none());
    let latents = latents.expect("a pipeline generation has latents");
    assert_eq!(latents.shape, [1, 4, 12, 8]);
    assert_eq!(latents.values.len(), 4 * 12 * 8);
    assert_eq!((image.width, image.height), (64, 96));

    assert_eq!(m.metadata_version, 1);
    assert_eq!(m.case.as_deref(), Some("lighthouse"));
    let p = m.parameters.as_ref().unwrap();
    assert_eq!(
        p.prompt.as_deref(),
        Some("a lighthouse on a rocky cliff at dawn, watercolor")
    );
    assert_eq!(p.negative_prompt, None);
    assert_eq!(
        (p.seed, p.steps, p.guidance_scale),
        (Some(7), Some(10), Some(5.0))
    );
    assert_eq!((p.width, p.height), (Some(64), Some(96)));
    assert_eq!(p.scheduler.as_deref(), Some("ddim"));
    assert_eq!(p.noise.as_deref(), Some("torch-cpu"));
    assert_eq!(p.karras_sigmas, Some(false));
    assert_eq!(parameter_difference(&lighthouse(), &m), None);

    let model = m.model.as_ref().unwrap();
    assert_eq!(model.path.as_deref(), Some("/work/main/onnx/tiny-sd15"));
    assert_eq!(model.vae_scaling_factor, Some(0.18215));
    assert_eq!(m.model_files().len(), 11);
    assert_eq!(
        m.model_files()["unet/model.onnx"],
        "a112d731cb5e3bba887e46edd1df9c966eb4e9a1754dfa9f55f24c18c94072ae"
    );

    let ort = m.onnxruntime.as_ref().unwrap();
    assert_eq!(ort.version.as_deref(), Some("1.31.1"));
    assert_eq!(ort.library_source.as_deref(), Some("python_package"));
    let ep = m.execution_provider.as_ref().unwrap();
    assert_eq!(ep.execution_provider.as_deref(), Some("cpu"));
    assert_eq!(ep.conv_algo_search.as_deref(), Some("heuristic"));
    assert_eq!(ep.deterministic_compute, Some(true));
    assert_eq!(ep.intra_op_threads, None);
    let env = m.environment.as_ref().unwrap();
    assert_eq!(env.gpu_name, None);
    assert!(env.cpu_features.as_ref().is_some_and(|f| !f.is_empty()));
    assert_eq!(m.noise.as_ref().unwrap().seed, Some(7));
    assert_eq!(m.timesteps.as_ref().map(Vec::len), Some(10));
    assert!(m.timings.as_ref().unwrap().load_s.is_some());
    assert_eq!(
        m.tokens.as_ref().unwrap().prompt.as_ref().map(Vec::len),
        Some(77)
    );

    let out = m.outputs.as_ref().unwrap();
    let lat = out.latents.as_ref().unwrap();
    assert_eq!(lat.shape.as_deref(), Some(&[1, 4, 12, 8][..]));
    let b = m.baseline.as_ref().unwrap();
    assert_eq!(
        (b.case.as_deref(), b.version),
        (Some("lighthouse"), Some(1))
    );
    assert_eq!(b.restored_from, None);
    // The store's hashes and the writer's describe the same files.
    assert_eq!(b.latents_npy_sha256, lat.sha256);
    assert_eq!(b.image_rgb_sha256, out.image.as_ref().unwrap().sha256_rgb);
    assert!(m.extra.is_empty(), "every field of today's format is known");

    monitor::metadata::validate(&m, "lighthouse").unwrap();
    // And the folder is a valid baseline store version.
    let store = BaselineStore::new(repo_path("tests/fixtures/generation/v1"));
    let loaded = store.current("lighthouse").unwrap().unwrap();
    assert_eq!(loaded.metadata, m);
    assert_eq!(store.versions("lighthouse").unwrap()[0].who, "uid 0@vm");
}

#[test]
fn both_formats_reserialize_byte_for_byte() {
    for dir in [v1(), v1_early()] {
        let bytes = std::fs::read(dir.join(METADATA_FILE)).unwrap();
        let m = Metadata::from_slice(&bytes).unwrap();
        let again = m.to_json().unwrap();
        assert!(
            again == bytes,
            "{}: reserialized metadata differs",
            dir.display()
        );
    }
}

#[test]
fn early_v1_without_baseline_hashes_loads_and_verifies_against_outputs() {
    let files = generation::read(&v1_early()).unwrap();
    let b = files.metadata.baseline.as_ref().unwrap();
    assert_eq!(
        (b.latents_npy_sha256.as_ref(), b.image_rgb_sha256.as_ref()),
        (None, None)
    );
    monitor::metadata::validate(&files.metadata, "lighthouse").unwrap();
    // Its hashes come from `outputs`: damage is still found.
    let (_t, dir) = copy_of(&v1_early());
    damage_latents(&dir);
    let e = generation::read(&dir).unwrap_err().to_string();
    assert!(e.contains("baseline damaged"), "{e}");
}

#[test]
fn fields_older_versions_lacked_are_optional_and_unknown_ones_are_kept() {
    let (_t, dir) = copy_of(&v1());
    let path = dir.join(METADATA_FILE);
    let mut v = read_json(&path);
    // What earlier monitors did not write.
    v["parameters"]
        .as_object_mut()
        .unwrap()
        .remove("karras_sigmas");
    v["environment"]
        .as_object_mut()
        .unwrap()
        .remove("cpu_features");
    for k in ["latents_npy_sha256", "image_rgb_sha256"] {
        v["baseline"].as_object_mut().unwrap().remove(k);
    }
    // What later monitors might add.
    v["parameters"]["clip_skip"] = json!(2);
    v["execution_provider"]["cudnn_workspace"] = json!("max");
    v["provenance"] = json!({"host": "ci-7"});
    std::fs::write(&path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();

    let m = generation::read(&dir).unwrap().metadata;
    let p = m.parameters.as_ref().unwrap();
    assert_eq!(p.karras_sigmas, None);
    assert_eq!(p.extra["clip_skip"], json!(2));
    assert_eq!(m.environment.as_ref().unwrap().cpu_features, None);
    assert_eq!(m.extra["provenance"], json!({"host": "ci-7"}));
    // Absent karras_sigmas means none were used: still comparable with the case.
    assert_eq!(parameter_difference(&lighthouse(), &m), None);
    monitor::metadata::validate(&m, "lighthouse").unwrap();
    // Nothing is lost or invented on the way back out.
    assert_eq!(m.to_value(), v);

    // A setting only one side knows is an environment difference.
    let today = generation::read(&v1()).unwrap().metadata;
    let d = monitor::compare::metadata_env_differences(&m, &today);
    let keys: Vec<&str> = d.iter().map(|d| d.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "environment.cpu_features",
            "execution_provider.cudnn_workspace"
        ]
    );
}

#[test]
fn a_missing_field_a_comparison_needs_is_named() {
    let mut v = read_json(&v1().join(METADATA_FILE));
    v["onnxruntime"].as_object_mut().unwrap().remove("version");
    let m = Metadata::from_value(&v).unwrap();
    let e = monitor::metadata::validate(&m, "lighthouse").unwrap_err();
    assert_eq!(e, "onnxruntime.version: missing");
}

/// Changes one latent value, keeping latents.npy a valid array.
fn damage_latents(dir: &Path) {
    let p = dir.join(LATENTS_FILE);
    let mut a = monitor::sd::npy::read_npy(&p).unwrap();
    a.data[5] += 1e-6;
    let mut bytes = Vec::new();
    write_npy_f32(&mut bytes, &a.shape, &a.data).unwrap();
    std::fs::write(&p, bytes).unwrap();
}

#[test]
fn damaged_files_are_reported_as_before() {
    let (t, dir) = copy_of(&v1());
    let store = BaselineStore::new(t.path());

    damage_latents(&dir);
    let lat = dir.join(LATENTS_FILE);
    for e in [
        generation::read(&dir).unwrap_err().to_string(),
        store.load("lighthouse", 1).unwrap_err().to_string(),
    ] {
        let want = format!("{}: baseline damaged: sha256 ", lat.display());
        assert!(e.starts_with(&want), "{e}");
        assert!(
            e.ends_with("… differs from the a9f49ddf290a… recorded in metadata.json"),
            "{e}"
        );
    }
    std::fs::copy(v1().join(LATENTS_FILE), &lat).unwrap();

    let img = dir.join(IMAGE_FILE);
    let mut image = monitor::sd::image::RgbImage::from_png(&std::fs::read(&img).unwrap()).unwrap();
    image.pixels[0] ^= 1;
    std::fs::write(&img, image.to_png().unwrap()).unwrap();
    let e = generation::read(&dir).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!(
            "{}: baseline damaged: sha256 of its RGB pixels ",
            img.display()
        )) && e.ends_with("… differs from the dec03f15a328… recorded in metadata.json"),
        "{e}"
    );
    std::fs::copy(v1().join(IMAGE_FILE), &img).unwrap();

    // Metadata of the wrong type or version: the file and the field are named.
    let meta = dir.join(METADATA_FILE);
    type Edit = fn(&mut Value);
    let edits: [(Edit, &str); 2] = [
        (
            |v| v["parameters"]["seed"] = json!("7"),
            "invalid metadata: parameters.seed: invalid type: string \"7\", expected u64",
        ),
        (
            |v| v["metadata_version"] = json!(2),
            "invalid metadata: metadata_version: 2 is newer than this monitor reads (1)",
        ),
    ];
    for (edit, expect) in edits {
        let mut v = read_json(&v1().join(METADATA_FILE));
        edit(&mut v);
        std::fs::write(&meta, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
        let e = generation::read(&dir).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("{}: {expect}", meta.display())) && !e.contains('\n'),
            "{e}"
        );
    }
    std::fs::copy(v1().join(METADATA_FILE), &meta).unwrap();
    generation::read(&dir).unwrap();
}

#[test]
fn writing_then_reading_round_trips_the_metadata() {
    let fixture = generation::read(&v1()).unwrap();
    let mut run = fixture.metadata.clone();
    run.baseline = None;
    run.outputs = None;

    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("out");
    assert!(!generation::is_complete(&dir));
    let written = generation::write(
        &dir,
        &fixture.latents.as_ref().unwrap().values,
        &fixture.latents.as_ref().unwrap().shape,
        &fixture.image,
        None,
        &run,
    )
    .unwrap();
    assert!(generation::is_complete(&dir));
    let back = generation::read(&dir).unwrap();
    assert_eq!(back.metadata, written);
    // The writer recorded the same outputs as the code that wrote the fixture did.
    assert_eq!(written.outputs, fixture.metadata.outputs);
    assert_eq!(
        written,
        Metadata {
            baseline: None,
            ..fixture.metadata.clone()
        }
    );
    assert_eq!(
        std::fs::read(dir.join(LATENTS_FILE)).unwrap(),
        std::fs::read(v1().join(LATENTS_FILE)).unwrap()
    );

    // Through the store: what was given plus the baseline block.
    let store = BaselineStore::new(t.path().join("store"));
    let v = store
        .write(
            "lighthouse",
            &NewBaseline {
                latents: back.latents.as_ref(),
                image: &back.image,
                metadata: back.metadata.clone(),
                stages: None,
                who: "tester".into(),
                why: "round trip".into(),
                restored_from: None,
            },
        )
        .unwrap();
    let stored = store.load("lighthouse", v).unwrap().metadata;
    let b = stored.baseline.clone().unwrap();
    assert_eq!(
        b.latents_npy_sha256,
        fixture.metadata.baseline.unwrap().latents_npy_sha256
    );
    assert_eq!(
        Metadata {
            baseline: None,
            ..stored
        },
        back.metadata
    );
}

#[test]
fn a_folder_without_its_metadata_is_incomplete() {
    let (_t, dir) = copy_of(&v1());
    assert!(generation::is_complete(&dir));
    std::fs::remove_file(dir.join(METADATA_FILE)).unwrap();
    assert!(!generation::is_complete(&dir));
    let e = generation::read(&dir).unwrap_err().to_string();
    assert!(e.contains("metadata.json: missing"), "{e}");
}

/// Every key path of a JSON document, in order ("a.b", "a.c", ...; array elements not entered).
fn key_paths(v: &Value, prefix: &str, out: &mut Vec<String>) {
    if let Some(o) = v.as_object() {
        for (k, v) in o {
            let p = format!("{prefix}{k}");
            out.push(p.clone());
            key_paths(v, &format!("{p}."), out);
        }
    }
}

#[test]
fn new_generations_have_the_v1_shape() {
    let t = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_monitor"))
        .args([
            "generate",
            "--model",
            "onnx/tiny-sd15",
            "--prompt",
            "a lighthouse on a rocky cliff at dawn, watercolor",
            "--seed",
            "7",
            "--steps",
            "10",
            "--guidance",
            "5",
            "--width",
            "64",
            "--height",
            "96",
            "--scheduler",
            "ddim",
            "--noise",
            "torch-cpu",
            "--ep",
            "cpu",
            "--out",
        ])
        .arg(t.path())
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let new = read_json(&t.path().join(METADATA_FILE));
    let mut old = read_json(&v1().join(METADATA_FILE));
    // A run's output is the fixture less what the store adds.
    old.as_object_mut().unwrap().remove("baseline");
    let (mut a, mut b) = (Vec::new(), Vec::new());
    key_paths(&new, "", &mut a);
    key_paths(&old, "", &mut b);
    // Added since these files: per-stage hashes, optional (absent in older files, which read as
    // "no stage data"; an older monitor keeps the block as an unknown field).
    // Likewise per-call UNet times and the worker's memory (issue 10's performance tracking),
    // and the stage tensors file (issue 11), which an older monitor does not read.
    for added in [
        "stages",
        "timings.unet_step_s",
        "resources",
        "outputs.stages",
    ] {
        assert!(a.iter().any(|k| k == added), "{added} missing: {a:?}");
    }
    a.retain(|k| {
        !["stages", "timings.unet_step_s"].contains(&k.as_str())
            && !k.starts_with("resources")
            && !k.starts_with("outputs.stages")
    });
    assert_eq!(a, b);
    generation::read(t.path()).unwrap();
}

#[test]
fn stage_tensors_are_written_verified_kept_by_the_store_and_restored() {
    use monitor::sd::pipeline::StageTensors;
    use monitor::stage_data::{StoredStages, STAGES_FILE};
    use ndarray::{Array3, Array4};
    let fixture = generation::read(&v1()).unwrap();
    let shape = &fixture.latents.as_ref().unwrap().shape;
    let (h, w) = (shape[2], shape[3]);
    let lat = |k: f32| {
        Array4::from_shape_fn((1, 4, h, w), |(_, c, y, x)| {
            k + (c * 100 + y * 10 + x) as f32
        })
    };
    let stages = StoredStages::from_tensors(&StageTensors {
        text_embeddings: Array3::from_shape_fn((2, 77, 8), |(a, b, c)| (a + b + c) as f32 * 0.01),
        initial_noise: lat(0.5),
        first_noise_pred: Some(lat(-1.0)),
        step_latents: vec![lat(1.0), lat(2.0), lat(3.0)],
    })
    .unwrap();
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("out");
    let mut run = fixture.metadata.clone();
    run.baseline = None;
    generation::write(
        &dir,
        &fixture.latents.as_ref().unwrap().values,
        &fixture.latents.as_ref().unwrap().shape,
        &fixture.image,
        Some(&stages),
        &run,
    )
    .unwrap();
    let back = generation::read(&dir).unwrap();
    assert_eq!(back.stages.as_ref(), Some(&stages));
    // numpy reads the file: one flat float32 array, the listed tensors one after another.
    let listed = &read_json(&dir.join(METADATA_FILE))["outputs"]["stages"];
    assert_eq!(
        listed["tensors"][0],
        json!({"stage": "text_embeddings", "shape": [2, 77, 8]})
    );
    assert_eq!(listed["tensors"].as_array().unwrap().len(), 6);

    // The store keeps the file, verifies it on load and copies it on restore.
    let store = BaselineStore::new(t.path().join("store"));
    let nb = NewBaseline {
        latents: back.latents.as_ref(),
        image: &back.image,
        metadata: back.metadata.clone(),
        stages: back.stages.as_ref(),
        who: "tester".into(),
        why: "stages".into(),
        restored_from: None,
    };
    let v1 = store.write("lighthouse", &nb).unwrap();
    assert_eq!(
        store.load("lighthouse", v1).unwrap().stages.as_ref(),
        Some(&stages)
    );
    // A version written without them does not claim them.
    let v2 = store
        .write(
            "lighthouse",
            &NewBaseline {
                stages: None,
                ..nb.clone()
            },
        )
        .unwrap();
    let b2 = store.load("lighthouse", v2).unwrap();
    assert!(b2.stages.is_none() && !b2.dir.join(STAGES_FILE).exists());
    let v3 = store.restore("lighthouse", v1, "tester", "undo").unwrap();
    assert_eq!(
        store.load("lighthouse", v3).unwrap().stages.as_ref(),
        Some(&stages)
    );

    // Damage is named.
    let f = store
        .version_dir("lighthouse", v1)
        .unwrap()
        .join(STAGES_FILE);
    let mut bytes = std::fs::read(&f).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&f, bytes).unwrap();
    let e = store.load("lighthouse", v1).unwrap_err().to_string();
    assert!(
        e.contains("stages.npy") && e.contains("sha256") && !e.contains('\n'),
        "{e}"
    );
    std::fs::remove_file(&f).unwrap();
    let e = store.load("lighthouse", v1).unwrap_err().to_string();
    assert!(e.contains("stages.npy"), "{e}");
}

#[test]
fn image_only_folders_verify_their_image_and_need_a_service_block() {
    let fixture = generation::read(&v1()).unwrap();
    let mut meta = fixture.metadata.clone();
    meta.baseline = None;
    meta.service = Some(monitor::generation::ServiceRecord {
        kind: Some("a1111".into()),
        ..Default::default()
    });
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("svc");
    generation::write_image_only(&dir, &fixture.image, &meta).unwrap();
    assert!(!dir.join("latents.npy").exists());
    let back = generation::read(&dir).unwrap();
    assert!(back.latents.is_none() && back.metadata.is_image_only());
    assert_eq!(back.image, fixture.image);
    let e = back.pipeline_latents(&dir).unwrap_err();
    assert!(e.contains("image-only"), "{e}");

    // A changed pixel is damage, named by file.
    let mut other = fixture.image.clone();
    other.pixels[0] ^= 1;
    std::fs::write(dir.join("image.png"), other.to_png().unwrap()).unwrap();
    let e = generation::read(&dir).unwrap_err().to_string();
    assert!(
        e.contains("image.png: baseline damaged: sha256 of its RGB pixels"),
        "{e}"
    );

    // Without the service block it is a pipeline folder that lost its latents.
    generation::write_image_only(&dir, &fixture.image, &meta).unwrap();
    let mut text: Value =
        serde_json::from_slice(&std::fs::read(dir.join("metadata.json")).unwrap()).unwrap();
    text.as_object_mut().unwrap().remove("service");
    std::fs::write(dir.join("metadata.json"), text.to_string()).unwrap();
    let e = generation::read(&dir).unwrap_err().to_string();
    assert!(
        e.contains("metadata.json: baseline damaged: no sha256 of latents.npy recorded"),
        "{e}"
    );
    // And the writer refuses to make one.
    meta.service = None;
    let e = generation::write_image_only(&t.path().join("x"), &fixture.image, &meta).unwrap_err();
    assert!(e.to_string().contains("needs a service block"), "{e}");
}
