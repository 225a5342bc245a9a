//! CLIP tokenizer vs. Hugging Face: every prompt in tests/fixtures/tokenizer/cases.json (written by
//! scripts/make_tokenizer_fixture.py with transformers' CLIPTokenizerFast) must give the same 77 ids,
//! truncation flag and untruncated length through both loading paths.

use std::path::{Path, PathBuf};
use std::time::Instant;

use monitor::sd::tokenizer::{ClipTokenizer, TokenizerError, MAX_LENGTH};
use serde::Deserialize;

#[derive(Deserialize)]
struct Fixture {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    prompt: String,
    ids: Vec<u32>,
    untruncated_len: usize,
    truncated: bool,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// vocab.json + merges.txt only.
fn vocab_merges_dir() -> PathBuf {
    root().join("onnx/tiny-sd15/tokenizer")
}

/// Also has tokenizer.json, which takes precedence.
fn tokenizer_json_dir() -> PathBuf {
    root().join("onnx/tiny-sd15-int64/tokenizer")
}

fn fixture() -> Vec<Case> {
    let path = root().join("tests/fixtures/tokenizer/cases.json");
    let text = std::fs::read_to_string(&path).expect("read fixture");
    let f: Fixture = serde_json::from_str(&text).expect("parse fixture");
    f.cases
}

fn check_all(tok: &ClipTokenizer) {
    let cases = fixture();
    assert!(
        cases.len() >= 30,
        "fixture has only {} prompts",
        cases.len()
    );
    let mut failures = Vec::new();
    for c in &cases {
        let got = tok.encode(&c.prompt).expect("encode");
        assert_eq!(got.ids.len(), MAX_LENGTH, "{}", c.name);
        if got.ids != c.ids
            || got.truncated != c.truncated
            || got.untruncated_len != c.untruncated_len
        {
            failures.push(format!(
                "{} ({:?}):\n  want {:?} len {} trunc {}\n  got  {:?} len {} trunc {}",
                c.name,
                c.prompt,
                c.ids,
                c.untruncated_len,
                c.truncated,
                got.ids,
                got.untruncated_len,
                got.truncated
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} prompts differ from CLIPTokenizerFast (source {}):\n{}",
        failures.len(),
        cases.len(),
        tok.source().display(),
        failures.join("\n")
    );
}

#[test]
fn fixture_matches_via_vocab_and_merges() {
    let tok = ClipTokenizer::from_dir(&vocab_merges_dir()).expect("load");
    assert_eq!(tok.source(), vocab_merges_dir().as_path());
    assert_eq!(tok.files().len(), 2);
    check_all(&tok);
}

#[test]
fn fixture_matches_via_tokenizer_json() {
    let tok = ClipTokenizer::from_dir(&tokenizer_json_dir()).expect("load");
    assert_eq!(
        tok.source(),
        tokenizer_json_dir().join("tokenizer.json").as_path()
    );
    check_all(&tok);
}

#[test]
fn known_published_ids_for_a_photo_of_a_cat() {
    let mut want = vec![49406, 320, 1125, 539, 320, 2368, 49407];
    want.resize(MAX_LENGTH, 49407);
    for dir in [vocab_merges_dir(), tokenizer_json_dir()] {
        let got = ClipTokenizer::from_dir(&dir)
            .unwrap()
            .encode("a photo of a cat")
            .unwrap();
        assert_eq!(got.ids, want, "{}", dir.display());
        assert!(!got.truncated);
        assert_eq!(got.untruncated_len, 7);
    }
}

#[test]
fn long_prompt_keeps_bos_75_tokens_eos() {
    let tok = ClipTokenizer::from_dir(&vocab_merges_dir()).unwrap();
    let got = tok.encode(&["cat"; 100].join(" ")).unwrap();
    assert!(got.truncated);
    assert_eq!(got.untruncated_len, 102);
    assert_eq!(got.ids[0], 49406);
    assert!(got.ids[1..76].iter().all(|&id| id == 2368), "{:?}", got.ids);
    assert_eq!(got.ids[76], 49407);
}

fn err_of(dir: &Path) -> String {
    match ClipTokenizer::from_dir(dir) {
        Ok(_) => panic!("{} loaded but should not", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn missing_folder_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-tokenizer");
    let e = ClipTokenizer::from_dir(&missing).unwrap_err();
    assert!(matches!(e, TokenizerError::MissingDir(_)), "{e:?}");
    assert!(e.to_string().contains("no-such-tokenizer"), "{e}");
}

#[test]
fn folder_with_only_vocab_names_merges_txt() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        vocab_merges_dir().join("vocab.json"),
        dir.path().join("vocab.json"),
    )
    .unwrap();
    let msg = err_of(dir.path());
    assert!(
        msg.contains("merges.txt") && msg.contains("missing"),
        "{msg}"
    );
}

#[test]
fn empty_folder_names_vocab_json() {
    let dir = tempfile::tempdir().unwrap();
    let msg = err_of(dir.path());
    assert!(
        msg.contains("vocab.json") && msg.contains("missing"),
        "{msg}"
    );
}

#[test]
fn corrupt_tokenizer_json_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("tokenizer.json"),
        "{\"version\": \"1.0\", \"model\": ",
    )
    .unwrap();
    let msg = err_of(dir.path());
    assert!(
        msg.contains("tokenizer.json") && msg.contains("JSON"),
        "{msg}"
    );
}

#[test]
fn valid_json_that_is_not_a_tokenizer_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tokenizer.json"), "{\"hello\": 1}").unwrap();
    let msg = err_of(dir.path());
    assert!(msg.contains("tokenizer.json"), "{msg}");
}

#[test]
fn corrupt_vocab_json_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("vocab.json"), "[1, 2").unwrap();
    std::fs::copy(
        vocab_merges_dir().join("merges.txt"),
        dir.path().join("merges.txt"),
    )
    .unwrap();
    let msg = err_of(dir.path());
    assert!(msg.contains("vocab.json") && msg.contains("JSON"), "{msg}");
}

#[test]
fn bad_merges_line_names_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        vocab_merges_dir().join("vocab.json"),
        dir.path().join("vocab.json"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("merges.txt"),
        "#version: 0.2\ni n\nthree symbols here\n",
    )
    .unwrap();
    let msg = err_of(dir.path());
    assert!(
        msg.contains("merges.txt") && msg.contains("line 3"),
        "{msg}"
    );
}

/// A tokenizer.json whose special tokens do not have the SD1.5 ids (what the tokenizer-files
/// script produced under transformers 5 before it was fixed: a 2-token vocabulary) is rejected.
#[test]
fn tokenizer_json_with_wrong_special_ids_is_rejected() {
    let text = std::fs::read_to_string(tokenizer_json_dir().join("tokenizer.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["model"]["vocab"] = serde_json::json!({"<|startoftext|>": 0, "<|endoftext|>": 2});
    v["model"]["merges"] = serde_json::json!([]);
    v["added_tokens"][0]["id"] = 0.into();
    v["added_tokens"][1]["id"] = 2.into();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tokenizer.json"), v.to_string()).unwrap();
    let msg = err_of(dir.path());
    assert!(
        msg.contains("tokenizer.json") && msg.contains("49406"),
        "{msg}"
    );
}

/// Load time of each path; run with `cargo test --release --test tokenizer -- --ignored --nocapture`.
#[test]
#[ignore]
fn load_timing() {
    for dir in [vocab_merges_dir(), tokenizer_json_dir()] {
        let mut best = f64::INFINITY;
        for _ in 0..5 {
            let t = Instant::now();
            let tok = ClipTokenizer::from_dir(&dir).unwrap();
            best = best.min(t.elapsed().as_secs_f64() * 1e3);
            std::hint::black_box(tok);
        }
        let tok = ClipTokenizer::from_dir(&dir).unwrap();
        let t = Instant::now();
        for _ in 0..100 {
            std::hint::black_box(
                tok.encode("a beautiful landscape painting of mountains at sunset")
                    .unwrap(),
            );
        }
        let enc_us = t.elapsed().as_secs_f64() * 1e6 / 100.0;
        eprintln!(
            "{}: load {best:.1} ms (best of 5), encode {enc_us:.1} us",
            dir.display()
        );
    }
}
