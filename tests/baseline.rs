//! The baseline store: versions, restore, concurrent writers, damaged files, write failures,
//! stale temp folders, `monitor baselines list|show`, and kill -9 during writes.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::Lcg;
use monitor::baseline::{
    BaselineError, BaselineStore, NewBaseline, IMAGE_FILE, LATENTS_FILE, METADATA_FILE,
};
use monitor::generation::{BaselineRecord, Latents, Metadata};
use monitor::sd::image::RgbImage;
use monitor::sd::npy::write_npy_f32;
use serde_json::json;

/// Synthetic baseline data: latents [1,4,h,w] and an (8w)x(8h) image, varied by `k`.
fn data(k: u32, h: usize, w: usize) -> (Vec<f32>, Vec<usize>, RgbImage) {
    let latents = (0..4 * h * w)
        .map(|i| (i as f32 * 0.37 + k as f32).sin())
        .collect();
    let (iw, ih) = ((w * 8) as u32, (h * 8) as u32);
    let pixels = (0..iw * ih * 3)
        .map(|i| (i.wrapping_mul(13) ^ k) as u8)
        .collect();
    (
        latents,
        vec![1, 4, h, w],
        RgbImage {
            width: iw,
            height: ih,
            pixels,
        },
    )
}

/// Latents as the store takes them.
fn lat(values: &[f32], shape: &[usize]) -> Latents {
    Latents {
        values: values.to_vec(),
        shape: shape.to_vec(),
    }
}

/// Metadata as the store sees it: any object, read as a generation's metadata.
fn metadata(v: serde_json::Value) -> Metadata {
    Metadata::from_value(&v).unwrap()
}

/// The `baseline` block of a loaded version.
fn block(m: &Metadata) -> &BaselineRecord {
    m.baseline.as_ref().expect("baseline block")
}

fn write(store: &BaselineStore, case: &str, k: u32) -> Result<u32, BaselineError> {
    let (latents, shape, image) = data(k, 2, 3);
    store.write(
        case,
        &NewBaseline {
            latents: Some(&lat(&latents, &shape)),
            image: &image,
            metadata: metadata(
                json!({"parameters": {"seed": k, "prompt": "a fox"}, "onnxruntime": {"version": "1.31.1"}}),
            ),
            stages: None,
            who: "tester".to_string(),
            why: format!("write {k}"),
            restored_from: None,
        },
    )
}

/// Every file of a version folder, name → bytes.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

/// Names in a case folder that start with `.tmp-`.
fn temps(case_dir: &Path) -> Vec<String> {
    match fs::read_dir(case_dir) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".tmp-"))
            .collect(),
        Err(_) => Vec::new(),
    }
}

#[test]
fn write_current_load_round_trip() {
    let d = tempfile::tempdir().unwrap();
    let store = BaselineStore::new(d.path().join("baselines"));
    assert!(store.current("fox").unwrap().is_none());
    assert_eq!(store.cases().unwrap(), Vec::<String>::new());

    assert_eq!(write(&store, "fox", 1).unwrap(), 1);
    let (latents, shape, image) = data(1, 2, 3);
    let b = store.current("fox").unwrap().unwrap();
    assert_eq!(b.version, 1);
    assert_eq!(b.dir, d.path().join("baselines/fox/v0001"));
    let got = b.latents.as_ref().unwrap();
    assert_eq!(got.shape, shape);
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&got.values), bits(&latents));
    assert_eq!(b.image, image);
    // Files on disk are exactly what the encoders produce.
    let mut npy = Vec::new();
    write_npy_f32(&mut npy, &shape, &latents).unwrap();
    assert_eq!(fs::read(b.dir.join(LATENTS_FILE)).unwrap(), npy);
    assert_eq!(
        fs::read(b.dir.join(IMAGE_FILE)).unwrap(),
        image.to_png().unwrap()
    );
    // Metadata: what was given plus the baseline key.
    assert_eq!(b.metadata.parameters.as_ref().unwrap().seed, Some(1));
    let bl = block(&b.metadata);
    assert_eq!(bl.version, Some(1));
    assert_eq!(bl.who.as_deref(), Some("tester"));
    assert_eq!(bl.why.as_deref(), Some("write 1"));
    assert_eq!(bl.case.as_deref(), Some("fox"));
    assert!(bl.restored_from.is_none());
    assert!(bl.created_at.as_deref().unwrap().ends_with('Z'));
    let loaded = store.load("fox", 1).unwrap();
    assert_eq!(loaded.metadata, b.metadata);
    assert_eq!(store.cases().unwrap(), vec!["fox".to_string()]);
}

#[test]
fn second_write_is_current_and_first_is_intact_then_restore() {
    let d = tempfile::tempdir().unwrap();
    let store = BaselineStore::new(d.path());
    write(&store, "fox", 1).unwrap();
    let v1_dir = store.version_dir("fox", 1).unwrap();
    let v1 = snapshot(&v1_dir);
    assert_eq!(write(&store, "fox", 2).unwrap(), 2);
    assert_eq!(store.current("fox").unwrap().unwrap().version, 2);
    assert_eq!(snapshot(&v1_dir), v1, "v0001 changed");
    assert_ne!(
        store.load("fox", 2).unwrap().latents,
        store.load("fox", 1).unwrap().latents
    );

    // Undo: v0003 is a copy of v0001.
    assert_eq!(
        store
            .restore("fox", 1, "alice", "v2 was a bad driver")
            .unwrap(),
        3
    );
    let v3 = store.current("fox").unwrap().unwrap();
    assert_eq!(v3.version, 3);
    for f in [LATENTS_FILE, IMAGE_FILE] {
        assert_eq!(
            fs::read(v3.dir.join(f)).unwrap(),
            fs::read(v1_dir.join(f)).unwrap(),
            "{f}"
        );
    }
    let v1_meta = store.load("fox", 1).unwrap().metadata;
    assert_eq!(v3.metadata.parameters, v1_meta.parameters);
    assert_eq!(v3.metadata.parameters.as_ref().unwrap().seed, Some(1));
    assert_eq!(block(&v3.metadata).restored_from, Some(1));
    assert_eq!(block(&v3.metadata).version, Some(3));
    assert_eq!(block(&v3.metadata).who.as_deref(), Some("alice"));
    assert_eq!(snapshot(&v1_dir), v1, "v0001 changed by restore");

    let h = store.versions("fox").unwrap();
    let summary: Vec<_> = h
        .iter()
        .map(|v| (v.version, v.who.as_str(), v.why.as_str(), v.restored_from))
        .collect();
    assert_eq!(
        summary,
        vec![
            (1, "tester", "write 1", None),
            (2, "tester", "write 2", None),
            (3, "alice", "v2 was a bad driver", Some(1)),
        ]
    );
    let e = store.restore("fox", 7, "a", "b").unwrap_err().to_string();
    assert!(e.contains("v0007") && e.contains("does not exist"), "{e}");
}

#[test]
fn concurrent_writers_get_distinct_versions() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().to_path_buf();
    let handles: Vec<_> = (0..4u32)
        .map(|t| {
            let root = root.clone();
            std::thread::spawn(move || {
                let store = BaselineStore::new(root);
                (0..5u32)
                    .map(|i| write(&store, "race", t * 10 + i).unwrap())
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut all: Vec<u32> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    all.sort_unstable();
    assert_eq!(all, (1..=20).collect::<Vec<_>>());
    let store = BaselineStore::new(&root);
    for v in 1..=20 {
        let b = store.load("race", v).unwrap();
        assert_eq!(block(&b.metadata).version, Some(v));
    }
    assert!(temps(&root.join("race")).is_empty());
}

#[test]
fn invalid_case_names_are_rejected_by_name() {
    let d = tempfile::tempdir().unwrap();
    let store = BaselineStore::new(d.path());
    for bad in ["", ".lock", "../x", "a b", "a/b"] {
        let e = write(&store, bad, 1).unwrap_err().to_string();
        assert!(
            e.contains(&format!("{bad:?}")) && e.contains("invalid"),
            "{e}"
        );
        assert!(store.current(bad).is_err());
    }
    assert_eq!(fs::read_dir(d.path()).unwrap().count(), 0);
}

/// Damages v0002 with `damage`, then checks `load`/`current` fail with a message naming
/// `file` and containing `expect`, and that v0001 still loads.
fn damaged(file: &str, expect: &str, damage: impl FnOnce(&Path)) {
    let d = tempfile::tempdir().unwrap();
    let store = BaselineStore::new(d.path());
    write(&store, "fox", 1).unwrap();
    write(&store, "fox", 2).unwrap();
    let dir = store.version_dir("fox", 2).unwrap();
    damage(&dir);
    let path = dir.join(file);
    for e in [
        store.load("fox", 2).unwrap_err().to_string(),
        store.current("fox").unwrap_err().to_string(),
    ] {
        assert!(e.contains(&path.display().to_string()), "{file}: {e}");
        assert!(e.contains(expect), "{file}: expected {expect:?} in {e}");
        assert!(!e.contains('\n'), "{e}");
    }
    store.load("fox", 1).unwrap();
}

#[test]
fn missing_latents() {
    damaged(LATENTS_FILE, "missing", |d| {
        fs::remove_file(d.join(LATENTS_FILE)).unwrap()
    });
}

#[test]
fn corrupt_latents() {
    damaged(LATENTS_FILE, "not a .npy file", |d| {
        fs::write(d.join(LATENTS_FILE), b"garbage").unwrap()
    });
}

#[test]
fn truncated_latents() {
    damaged(LATENTS_FILE, "truncated data", |d| {
        let p = d.join(LATENTS_FILE);
        let b = fs::read(&p).unwrap();
        fs::write(&p, &b[..b.len() - 5]).unwrap()
    });
}

#[test]
fn latents_of_wrong_shape() {
    damaged(LATENTS_FILE, "is not [1, 4, h, w]", |d| {
        let mut npy = Vec::new();
        write_npy_f32(&mut npy, &[1, 3, 2, 3], &[0.0; 18]).unwrap();
        fs::write(d.join(LATENTS_FILE), npy).unwrap()
    });
}

#[test]
fn png_of_wrong_size() {
    damaged(
        IMAGE_FILE,
        "image is 16x16 but the latents (3x2) need 24x16",
        |d| {
            let img = RgbImage {
                width: 16,
                height: 16,
                pixels: vec![7; 16 * 16 * 3],
            };
            fs::write(d.join(IMAGE_FILE), img.to_png().unwrap()).unwrap()
        },
    );
}

#[test]
fn png_undecodable() {
    damaged(IMAGE_FILE, "not a decodable PNG", |d| {
        fs::write(d.join(IMAGE_FILE), b"\x89PNG\r\n\x1a\nbroken").unwrap()
    });
}

#[test]
fn missing_png() {
    damaged(IMAGE_FILE, "missing", |d| {
        fs::remove_file(d.join(IMAGE_FILE)).unwrap()
    });
}

#[test]
fn metadata_invalid_json() {
    damaged(METADATA_FILE, "invalid metadata", |d| {
        fs::write(d.join(METADATA_FILE), b"{\"parameters\": ").unwrap()
    });
}

#[test]
fn metadata_not_an_object() {
    damaged(METADATA_FILE, "not a JSON object", |d| {
        fs::write(d.join(METADATA_FILE), b"[1, 2]").unwrap()
    });
}

#[test]
fn metadata_unreadable() {
    // A folder where the file should be: reading it fails (even as root).
    damaged(METADATA_FILE, "cannot read", |d| {
        let p = d.join(METADATA_FILE);
        fs::remove_file(&p).unwrap();
        fs::create_dir(&p).unwrap();
    });
}

#[test]
fn metadata_missing_is_reported_by_versions_too() {
    let d = tempfile::tempdir().unwrap();
    let store = BaselineStore::new(d.path());
    write(&store, "fox", 1).unwrap();
    let p = store.version_dir("fox", 1).unwrap().join(METADATA_FILE);
    fs::remove_file(&p).unwrap();
    let e = store.versions("fox").unwrap_err().to_string();
    assert!(
        e.contains(&p.display().to_string()) && e.contains("missing"),
        "{e}"
    );
}

/// Asserts a failed write changed nothing: same versions, v0001 byte-identical, no temp left.
fn assert_unchanged(store: &BaselineStore, before: &[(String, Vec<u8>)]) {
    assert_eq!(store.version_numbers("fox").unwrap(), vec![1]);
    assert_eq!(snapshot(&store.version_dir("fox", 1).unwrap()), before);
    assert_eq!(store.current("fox").unwrap().unwrap().version, 1);
    assert!(temps(&store.root().join("fox")).is_empty());
}

#[test]
fn disk_full_while_writing_each_file_changes_nothing() {
    for file in [LATENTS_FILE, IMAGE_FILE, METADATA_FILE] {
        let d = tempfile::tempdir().unwrap();
        let store = BaselineStore::new(d.path());
        write(&store, "fox", 1).unwrap();
        let before = snapshot(&store.version_dir("fox", 1).unwrap());
        let failing = store.clone().fail_write_of(file);
        let e = write(&failing, "fox", 2).unwrap_err().to_string();
        assert!(e.contains(file) && e.contains(".tmp-v0002-"), "{e}");
        assert!(e.contains("No space left on device"), "{e}");
        assert!(e.contains("earlier versions untouched"), "{e}");
        assert_unchanged(&store, &before);
        // The store still works afterwards.
        assert_eq!(write(&store, "fox", 2).unwrap(), 2);
    }
}

#[test]
fn a_file_squatting_on_the_next_version_is_an_error_not_skipped() {
    // A regular file named like a version is not silently ignored: it would hide what is there.
    let d = tempfile::tempdir().unwrap();
    let store = BaselineStore::new(d.path());
    write(&store, "fox", 1).unwrap();
    let before = snapshot(&store.version_dir("fox", 1).unwrap());
    let squat = d.path().join("fox/v0002");
    fs::write(&squat, b"not a version").unwrap();
    for e in [
        write(&store, "fox", 2).unwrap_err().to_string(),
        store.current("fox").unwrap_err().to_string(),
    ] {
        assert!(
            e.contains(&squat.display().to_string()) && e.contains("a file, not a folder"),
            "{e}"
        );
    }
    fs::remove_file(&squat).unwrap();
    assert_unchanged(&store, &before);
}

#[test]
fn a_failed_rename_changes_nothing() {
    let d = tempfile::tempdir().unwrap();
    let store = BaselineStore::new(d.path());
    write(&store, "fox", 1).unwrap();
    let before = snapshot(&store.version_dir("fox", 1).unwrap());
    let e = write(&store.clone().fail_rename_of("fox"), "fox", 2)
        .unwrap_err()
        .to_string();
    assert!(e.contains("v0002") && e.contains("renaming"), "{e}");
    assert_unchanged(&store, &before);
}

// ---- batches: several cases, all or nothing ----

/// A batch of new versions for `cases`, from `data(k)`.
fn batch_data(cases: &[&str], k: u32) -> Vec<(String, Vec<f32>, Vec<usize>, RgbImage)> {
    cases
        .iter()
        .map(|c| {
            let (l, s, i) = data(k, 2, 3);
            (c.to_string(), l, s, i)
        })
        .collect()
}

fn write_batch(
    store: &BaselineStore,
    items: &[(String, Vec<f32>, Vec<usize>, RgbImage)],
) -> Result<Vec<(String, u32)>, BaselineError> {
    let latents: Vec<Latents> = items.iter().map(|(_, l, s, _)| lat(l, s)).collect();
    let batch: Vec<(&str, NewBaseline<'_>)> = items
        .iter()
        .zip(&latents)
        .map(|((c, _, _, i), l)| {
            (
                c.as_str(),
                NewBaseline {
                    latents: Some(l),
                    image: i,
                    metadata: metadata(json!({"parameters": {"prompt": c}})),
                    stages: None,
                    who: "tester".into(),
                    why: "batch".into(),
                    restored_from: None,
                },
            )
        })
        .collect();
    store.write_batch(&batch)
}

#[test]
fn a_batch_is_all_or_nothing_when_a_later_case_fails() {
    let d = tempfile::tempdir().unwrap();
    let store = BaselineStore::new(d.path());
    let cases = ["ant", "bee", "cat"];
    assert_eq!(
        write_batch(&store, &batch_data(&cases, 1)).unwrap(),
        [("ant".into(), 1), ("bee".into(), 1), ("cat".into(), 1)]
    );
    let before = snapshot_tree(d.path());
    // The third case's write fails after the first two were prepared: nothing becomes current.
    let e = write_batch(&store.clone().fail_case("cat"), &batch_data(&cases, 2))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("cat") && e.contains("No space left on device"),
        "{e}"
    );
    assert!(e.contains("no new baseline written"), "{e}");
    assert_eq!(snapshot_tree(d.path()), before, "the store changed");
    // The journal cannot be written (the disk filled up after staging): nothing was committed.
    let e = write_batch(&store.clone().fail_journal(), &batch_data(&cases, 2))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(".journal.json") && e.contains("No space left"),
        "{e}"
    );
    assert_eq!(snapshot_tree(d.path()), before, "the store changed");
    // The rename of the second case fails after the first was renamed: undone.
    let e = write_batch(&store.clone().fail_rename_of("bee"), &batch_data(&cases, 3))
        .unwrap_err()
        .to_string();
    assert!(e.contains("bee") && e.contains("renaming"), "{e}");
    assert_eq!(snapshot_tree(d.path()), before, "the store changed");
    for c in cases {
        assert_eq!(store.version_numbers(c).unwrap(), [1], "{c}");
        assert!(temps(&d.path().join(c)).is_empty(), "{c}");
    }
    // A case named twice is refused before anything is written.
    let mut twice = batch_data(&["ant"], 4);
    twice.extend(batch_data(&["ant"], 5));
    let e = write_batch(&store, &twice).unwrap_err().to_string();
    assert!(e.contains("named twice"), "{e}");
    assert_eq!(snapshot_tree(d.path()), before);
}

#[test]
fn a_batch_interrupted_after_its_journal_is_completed_by_the_next_reader_or_writer() {
    let d = tempfile::tempdir().unwrap();
    let store = BaselineStore::new(d.path());
    write_batch(&store, &batch_data(&["ant", "bee"], 1)).unwrap();
    // What a writer killed between its journal and its last rename leaves: ant's v0002 in
    // place, bee's still in its temp folder, and the journal naming both.
    write_batch(&store, &batch_data(&["ant", "bee"], 2)).unwrap();
    let bee = d.path().join("bee");
    fs::rename(bee.join("v0002"), bee.join(".tmp-v0002-4242")).unwrap();
    fs::write(
        d.path().join(".journal.json"),
        r#"{"entries": [{"case": "ant", "tmp": ".tmp-v0002-4241", "version": 2},
                        {"case": "bee", "tmp": ".tmp-v0002-4242", "version": 2}]}"#,
    )
    .unwrap();
    assert_eq!(store.version_numbers("bee").unwrap(), [1]);
    // A check takes the read lock, which completes the batch first.
    drop(store.read_lock().unwrap());
    assert_eq!(store.version_numbers("bee").unwrap(), [1, 2]);
    assert_eq!(store.current("bee").unwrap().unwrap().version, 2);
    assert!(!d.path().join(".journal.json").exists());

    // The same through a writer of another case.
    fs::rename(bee.join("v0002"), bee.join(".tmp-v0002-4242")).unwrap();
    fs::write(
        d.path().join(".journal.json"),
        r#"{"entries": [{"case": "bee", "tmp": ".tmp-v0002-4242", "version": 2}]}"#,
    )
    .unwrap();
    write(&store, "cat", 1).unwrap();
    assert_eq!(store.version_numbers("bee").unwrap(), [1, 2]);

    // A journal that cannot be read is reported, never guessed at.
    fs::write(d.path().join(".journal.json"), b"{garbage").unwrap();
    let e = write(&store, "cat", 2).unwrap_err().to_string();
    assert!(
        e.contains(".journal.json") && e.contains("move it aside"),
        "{e}"
    );
}

/// Every file under `dir` (locks excluded: taking a lock may create its file).
fn snapshot_tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        for e in fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                walk(base, &p, out);
            } else if !p.ends_with(".lock") {
                let rel = p.strip_prefix(base).unwrap().display().to_string();
                out.push((rel, fs::read(&p).unwrap()));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

#[test]
fn invalid_new_baselines_write_nothing() {
    let d = tempfile::tempdir().unwrap();
    let store = BaselineStore::new(d.path());
    write(&store, "fox", 1).unwrap();
    let before = snapshot(&store.version_dir("fox", 1).unwrap());
    let (latents, shape, image) = data(5, 2, 3);
    let mut short = image.clone();
    short.pixels.pop();
    let wrong_size = RgbImage {
        width: 8,
        height: 8,
        pixels: vec![0; 8 * 8 * 3],
    };
    fn nb<'a>(latents: &'a Latents, image: &'a RgbImage, metadata: Metadata) -> NewBaseline<'a> {
        NewBaseline {
            latents: Some(latents),
            image,
            metadata,
            stages: None,
            who: "t".into(),
            why: "t".into(),
            restored_from: None,
        }
    }
    let good = lat(&latents, &shape);
    let three_d = lat(&latents, &[1, 4, 2]);
    let too_few = lat(&latents[1..], &shape);
    // (Metadata that is not a JSON object can no longer be handed to the store: it is typed.)
    let cases = [
        (
            nb(&good, &short, Metadata::default()),
            "cannot encode image.png",
        ),
        (nb(&good, &wrong_size, Metadata::default()), "need 24x16"),
        (
            nb(&three_d, &image, Metadata::default()),
            "not [1, 4, h, w]",
        ),
        (
            nb(&too_few, &image, Metadata::default()),
            "cannot encode latents.npy",
        ),
        (
            NewBaseline {
                latents: None,
                ..nb(&good, &image, Metadata::default())
            },
            "no latents, and the metadata has no service block",
        ),
    ];
    for (new, expect) in cases {
        let e = store.write("fox", &new).unwrap_err().to_string();
        assert!(e.contains(expect) && e.contains("nothing written"), "{e}");
        assert_unchanged(&store, &before);
    }
}

#[test]
fn stale_temp_folder_is_ignored_then_cleaned() {
    let d = tempfile::tempdir().unwrap();
    let store = BaselineStore::new(d.path());
    write(&store, "fox", 1).unwrap();
    // What a writer killed mid-write leaves: a temp folder with a partial file.
    let stale = d.path().join("fox/.tmp-v0002-999999");
    fs::create_dir(&stale).unwrap();
    fs::write(stale.join(LATENTS_FILE), b"\x93NUMPY\x01\x00").unwrap();
    // A temp-named file too (the cleaner removes files as well as folders).
    fs::write(d.path().join("fox/.tmp-junk"), b"x").unwrap();
    // A case that only has a stale temp folder has no baselines.
    fs::create_dir_all(d.path().join("empty/.tmp-v0001-5")).unwrap();

    assert_eq!(store.current("fox").unwrap().unwrap().version, 1);
    assert_eq!(store.version_numbers("fox").unwrap(), vec![1]);
    assert_eq!(store.versions("fox").unwrap().len(), 1);
    assert_eq!(store.cases().unwrap(), vec!["fox".to_string()]);
    assert!(store.current("empty").unwrap().is_none());

    assert_eq!(write(&store, "fox", 2).unwrap(), 2);
    assert!(temps(&d.path().join("fox")).is_empty());
    store.load("fox", 2).unwrap();
}

// ---- the command line ----

fn monitor(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_monitor"))
        .args(args)
        .output()
        .expect("run monitor")
}

#[test]
fn cli_list_and_show() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("b");
    let r = root.to_str().unwrap();
    // A folder that does not exist is an error (a typo must not look like an empty store)...
    let o = monitor(&["baselines", "list", "--baselines", r]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no such baseline folder"));
    // ...an empty one is an empty store.
    fs::create_dir(&root).unwrap();
    let o = monitor(&["baselines", "list", "--baselines", r]);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("no baselines in"));

    let store = BaselineStore::new(&root);
    write(&store, "fox", 1).unwrap();
    write(&store, "fox", 2).unwrap();
    store.restore("fox", 1, "alice", "undo").unwrap();
    write(&store, "owl", 9).unwrap();

    let o = monitor(&["baselines", "list", "--baselines", r]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[0].starts_with("CASE"), "{out}");
    let fox: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(&fox[..3], ["fox", "v0003", "3"], "{out}");
    assert!(
        lines[1].contains("alice") && lines[1].contains("undo (restores v0001)"),
        "{out}"
    );
    assert!(
        lines[2].starts_with("owl") && lines[2].contains("write 9"),
        "{out}"
    );

    let o = monitor(&["baselines", "show", "fox", "--baselines", r]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("v0003 (of 3, restores v0001)"), "{out}");
    assert!(
        out.contains("seed=1") && out.contains("onnxruntime: 1.31.1"),
        "{out}"
    );
    assert!(
        out.contains("by alice") && out.contains("why:        undo"),
        "{out}"
    );

    let o = monitor(&[
        "baselines",
        "show",
        "fox",
        "--version",
        "2",
        "--json",
        "--baselines",
        r,
    ]);
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v, store.load("fox", 2).unwrap().metadata.to_value());

    // Errors: one line, exit 2, naming the file.
    let meta = root.join("owl/v0001").join(METADATA_FILE);
    fs::write(&meta, b"{").unwrap();
    for args in [
        vec!["baselines", "show", "owl", "--baselines", r],
        vec!["baselines", "list", "--baselines", r],
    ] {
        let o = monitor(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.starts_with("monitor: error: ") && err.contains(&meta.display().to_string()),
            "{err}"
        );
    }
    // list still shows the healthy case.
    let o = monitor(&["baselines", "list", "--baselines", r]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("fox"));

    for (args, expect) in [
        (
            vec!["baselines", "show", "nope", "--baselines", r],
            "has no baselines",
        ),
        (
            vec![
                "baselines",
                "show",
                "fox",
                "--version",
                "9",
                "--baselines",
                r,
            ],
            "v0009 does not exist",
        ),
        (
            vec!["baselines", "show", "../etc", "--baselines", r],
            "\"../etc\" is invalid",
        ),
    ] {
        let o = monitor(&args);
        assert_eq!(o.status.code(), Some(2));
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(expect), "{err}");
    }
}

// ---- kill -9 during writes ----

/// Spawns `monitor baselines stress-write` (an endless stream of writes to one case) 100 times,
/// SIGKILLs it after a seeded random 0-50 ms, and after every kill asserts:
/// - the version folders are exactly v0001..=vN (contiguous from 1), N never decreasing;
/// - every version added since the last check loads completely (all three files present and
///   valid, latents [1,4,16,16], image 128x128, metadata.baseline.version == its number);
/// - at most one `.tmp-*` folder exists (the killed writer's), which is counted as a kill that
///   landed mid-write, and the next writer removes it.
///
/// At the end every version is loaded again, one more writer runs to completion, and no
/// `.tmp-*` is left.
#[test]
fn kill_9_during_writes_leaves_only_complete_baselines() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("b");
    let store = BaselineStore::new(&root);
    let case_dir = root.join("crash");
    let mut rng = Lcg(0x5eed_ba5e);
    let iterations = 100;
    let (mut mid_write, mut exited_early, mut checked) = (0, 0, 0u32);
    let started = Instant::now();
    let check = |v: u32| {
        let b = store
            .load("crash", v)
            .unwrap_or_else(|e| panic!("v{v:04} incomplete after kill: {e}"));
        assert_eq!(b.latents.as_ref().unwrap().shape, [1, 4, 16, 16]);
        assert_eq!((b.image.width, b.image.height), (128, 128));
        assert_eq!(block(&b.metadata).version, Some(v));
    };
    for i in 0..iterations {
        let mut child = Command::new(env!("CARGO_BIN_EXE_monitor"))
            .args([
                "baselines",
                "stress-write",
                "--case",
                "crash",
                "--count",
                "1000000",
            ])
            .arg("--baselines")
            .arg(&root)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rng.next() % 51));
        if child.try_wait().unwrap().is_some() {
            exited_early += 1;
        }
        child.kill().unwrap(); // SIGKILL
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.code().is_none(),
            "iteration {i}: writer exited by itself: {}",
            String::from_utf8_lossy(&out.stderr)
        );

        let versions = store.version_numbers("crash").unwrap();
        let n = versions.len() as u32;
        assert_eq!(versions, (1..=n).collect::<Vec<_>>(), "iteration {i}");
        assert!(n >= checked, "iteration {i}: versions disappeared");
        for v in checked + 1..=n {
            check(v);
        }
        checked = n;
        let t = temps(&case_dir);
        assert!(t.len() <= 1, "iteration {i}: {t:?}");
        if !t.is_empty() {
            mid_write += 1;
        }
    }
    for v in 1..=checked {
        check(v);
    }
    let o = monitor(&[
        "baselines",
        "stress-write",
        "--case",
        "crash",
        "--count",
        "1",
        "--baselines",
        root.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(store.latest_version("crash").unwrap(), Some(checked + 1));
    check(checked + 1);
    assert!(temps(&case_dir).is_empty());
    eprintln!(
        "crash test: {iterations} kills in {:.1}s, {checked} complete versions, {mid_write} kills left a temp folder (mid-write), {exited_early} writers had exited before the kill",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(exited_early, 0);
    assert!(
        mid_write > 0,
        "no kill landed mid-write; the test proves nothing"
    );
}
