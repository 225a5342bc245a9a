//! CLIP tokenizer (SD1.5 = openai/clip-vit-large-patch14 vocabulary), ids identical to CLIPTokenizerFast.
//!
//! Stable Diffusion 1.5 feeds the text encoder exactly [`MAX_LENGTH`] ids: `<|startoftext|>`, at most
//! 75 BPE tokens, `<|endoftext|>`, then `<|endoftext|>` as padding. diffusers gets them from
//! `CLIPTokenizerFast(prompt, padding="max_length", max_length=77, truncation=True)`; this module
//! reproduces that call with the same `tokenizers` machinery the Python class is built on, so the ids
//! match bit for bit (checked against a transformers-generated fixture in `tests/tokenizer.rs`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use tokenizers::models::bpe::{Merges, Vocab, BPE};
use tokenizers::normalizers::replace::ReplacePattern;
use tokenizers::normalizers::{Lowercase, Replace, Sequence as NormalizerSequence, NFC};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::roberta::RobertaProcessing;
use tokenizers::{
    AddedToken, PaddingDirection, PaddingParams, PaddingStrategy, SplitDelimiterBehavior,
    Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy,
};

/// Number of ids the SD1.5 text encoder takes: BOS + up to 75 tokens + EOS, padded.
pub const MAX_LENGTH: usize = 77;

/// Beginning-of-sequence token (CLS in the Roberta post-processor).
pub const BOS_TOKEN: &str = "<|startoftext|>";
/// End-of-sequence token; also the unknown token and the padding token for SD1.5.
pub const EOS_TOKEN: &str = "<|endoftext|>";
/// Id of [`BOS_TOKEN`] in the CLIP vocabulary.
pub const BOS_ID: u32 = 49406;
/// Id of [`EOS_TOKEN`] in the CLIP vocabulary (also used for padding).
pub const EOS_ID: u32 = 49407;

/// The pre-tokenizer regex of transformers 5's `CLIPTokenizer` (= `CLIPTokenizerFast`).
///
/// transformers 4's `CLIPConverter` used the same pattern without the two special-token
/// alternatives. The ids are the same either way: the alternatives only fire on text that becomes a
/// special token after lowercasing (e.g. `<|ENDOFTEXT|>`; added tokens are matched before
/// normalization), and the ByteLevel step's GPT-2 regex then splits that piece into `<|`,
/// `endoftext`, `|>` exactly as the older pattern does (fixture case `endoftext_uppercase`).
const CLIP_SPLIT_REGEX: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// Why a tokenizer could not be loaded or a prompt could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// The tokenizer folder itself is missing (or is not a folder).
    #[error("tokenizer folder {0} does not exist or is not a directory")]
    MissingDir(PathBuf),
    /// A file the tokenizer needs is missing from the folder.
    #[error("{path}: file missing ({why})")]
    MissingFile {
        /// The file that was looked for.
        path: PathBuf,
        /// What it is needed for.
        why: &'static str,
    },
    /// A file exists but could not be read.
    #[error("{path}: cannot read: {source}")]
    Io {
        /// The file that failed.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A JSON file (vocab.json, tokenizer.json) is not valid JSON or has the wrong shape.
    #[error("{path}: not valid JSON for a tokenizer: {source}")]
    Json {
        /// The file that failed.
        path: PathBuf,
        /// The parser's error, with line and column.
        source: serde_json::Error,
    },
    /// A file parsed but its contents are not a usable CLIP tokenizer.
    #[error("{path}: {message}")]
    Invalid {
        /// The file (or folder) at fault.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The `tokenizers` pipeline failed on a prompt.
    #[error("tokenizer from {source_path} failed to encode prompt: {message}")]
    Encode {
        /// Where the tokenizer was loaded from.
        source_path: PathBuf,
        /// The pipeline's error.
        message: String,
    },
}

/// The ids for one prompt, in the shape the SD1.5 text encoder wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// Exactly [`MAX_LENGTH`] ids: BOS, at most 75 tokens, EOS, then EOS padding.
    pub ids: Vec<u32>,
    /// True when the prompt had more than 75 tokens and the tail was dropped.
    pub truncated: bool,
    /// Length before truncation and padding, including BOS and EOS (≥ 2).
    pub untruncated_len: usize,
}

/// CLIP BPE tokenizer for SD1.5, equivalent to Hugging Face's `CLIPTokenizerFast` called with
/// `padding="max_length", max_length=77, truncation=True`.
#[derive(Clone)]
pub struct ClipTokenizer {
    /// Truncates to 77 and pads to 77: the ids the model sees.
    fixed: Tokenizer,
    /// Same pipeline without truncation or padding, only to report the untruncated length
    /// (reconstructing it from `fixed`'s overflow pieces would depend on stride details).
    full: Tokenizer,
    /// tokenizer.json, or the folder when built from vocab.json + merges.txt.
    source: PathBuf,
    /// The exact files read, for metadata.
    files: Vec<PathBuf>,
}

impl std::fmt::Debug for ClipTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipTokenizer")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl ClipTokenizer {
    /// Load from a model's `tokenizer/` folder: `tokenizer.json` if present, else `vocab.json` +
    /// `merges.txt` (the pipeline is then built the way transformers builds `CLIPTokenizerFast`).
    pub fn from_dir(dir: &Path) -> Result<Self, TokenizerError> {
        if !dir.is_dir() {
            return Err(TokenizerError::MissingDir(dir.to_path_buf()));
        }
        let json = dir.join("tokenizer.json");
        if json.is_file() {
            let tok = load_tokenizer_json(&json)?;
            Self::finish(tok, json.clone(), vec![json])
        } else {
            let vocab = dir.join("vocab.json");
            let merges = dir.join("merges.txt");
            let tok = build_from_vocab_merges(&vocab, &merges)?;
            Self::finish(tok, dir.to_path_buf(), vec![vocab, merges])
        }
    }

    /// Load from a tokenizer.json file directly (no fallback).
    pub fn from_tokenizer_json(path: &Path) -> Result<Self, TokenizerError> {
        let tok = load_tokenizer_json(path)?;
        Self::finish(tok, path.to_path_buf(), vec![path.to_path_buf()])
    }

    /// Encode a prompt to exactly [`MAX_LENGTH`] ids.
    ///
    /// Literal `<|startoftext|>` / `<|endoftext|>` in the prompt become the special ids, as in
    /// `CLIPTokenizerFast` (they are added tokens matched before normalization, so only the exact
    /// lowercase spelling counts).
    pub fn encode(&self, text: &str) -> Result<Encoded, TokenizerError> {
        let err = |e: tokenizers::Error| TokenizerError::Encode {
            source_path: self.source.clone(),
            message: e.to_string(),
        };
        let fixed = self.fixed.encode(text, true).map_err(err)?;
        let full = self.full.encode(text, true).map_err(err)?;
        let ids = fixed.get_ids().to_vec();
        let untruncated_len = full.get_ids().len();
        if ids.len() != MAX_LENGTH {
            // Cannot happen with the padding/truncation set in `finish`; guard the model input shape.
            return Err(TokenizerError::Encode {
                source_path: self.source.clone(),
                message: format!("produced {} ids instead of {MAX_LENGTH}", ids.len()),
            });
        }
        Ok(Encoded {
            ids,
            truncated: untruncated_len > MAX_LENGTH,
            untruncated_len,
        })
    }

    /// Where the tokenizer came from: the tokenizer.json file, or the folder holding vocab.json +
    /// merges.txt (see [`ClipTokenizer::files`] for the exact files).
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// The exact files read: `[tokenizer.json]` or `[vocab.json, merges.txt]`.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Set SD1.5's padding/truncation and check the special tokens, whichever way it was loaded.
    fn finish(
        mut full: Tokenizer,
        source: PathBuf,
        files: Vec<PathBuf>,
    ) -> Result<Self, TokenizerError> {
        let invalid = |message: String| TokenizerError::Invalid {
            path: source.clone(),
            message,
        };
        // A tokenizer.json may carry its own truncation/padding (usually null for CLIP); the model
        // contract is fixed, so always set them here rather than trust the file.
        full.with_padding(None);
        full.with_truncation(None)
            .map_err(|e| invalid(format!("cannot disable truncation: {e}")))?;

        for (token, want) in [(BOS_TOKEN, BOS_ID), (EOS_TOKEN, EOS_ID)] {
            match full.token_to_id(token) {
                Some(id) if id == want => {}
                got => {
                    return Err(invalid(format!(
                        "special token {token} has id {got:?}, expected {want} (not the SD1.5 CLIP vocabulary?)"
                    )))
                }
            }
        }
        // The post-processor must add BOS/EOS; a tokenizer.json without it would silently give
        // the text encoder unframed ids.
        let empty = full
            .encode("", true)
            .map_err(|e| invalid(format!("cannot encode the empty prompt: {e}")))?;
        if empty.get_ids() != [BOS_ID, EOS_ID] {
            return Err(invalid(format!(
                "empty prompt encodes to {:?}, expected [{BOS_ID}, {EOS_ID}] (post-processor missing?)",
                empty.get_ids()
            )));
        }

        let mut fixed = full.clone();
        // HF applies truncation with special tokens counted: max_length 77 leaves 75 content
        // tokens, and the post-processor then adds BOS/EOS (the tokenizers crate subtracts the
        // post-processor's added tokens from max_length).
        fixed
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length: MAX_LENGTH,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(|e| invalid(format!("cannot set truncation: {e}")))?;
        fixed.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::Fixed(MAX_LENGTH),
            direction: PaddingDirection::Right,
            pad_to_multiple_of: None,
            pad_id: EOS_ID,
            pad_type_id: 0,
            pad_token: EOS_TOKEN.to_string(),
        }));
        Ok(Self {
            fixed,
            full,
            source,
            files,
        })
    }
}

fn read_to_string(path: &Path, why: &'static str) -> Result<String, TokenizerError> {
    if !path.is_file() {
        return Err(TokenizerError::MissingFile {
            path: path.to_path_buf(),
            why,
        });
    }
    std::fs::read_to_string(path).map_err(|source| TokenizerError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn load_tokenizer_json(path: &Path) -> Result<Tokenizer, TokenizerError> {
    let text = read_to_string(path, "tokenizer.json")?;
    // Parse as plain JSON first so a corrupt file reports line/column instead of a generic
    // "data did not match any variant" from the typed deserializer.
    let value = match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(value) => value,
        Err(source) => {
            return Err(TokenizerError::Json {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    check_bpe_merges(&value).map_err(|message| TokenizerError::Invalid {
        path: path.to_path_buf(),
        message,
    })?;
    text.parse::<Tokenizer>()
        .map_err(|e| TokenizerError::Invalid {
            path: path.to_path_buf(),
            message: format!("not a Hugging Face tokenizer.json: {e}"),
        })
}

/// Rejects a BPE merge whose second symbol is shorter than the model's
/// `continuing_subword_prefix` (or splits a character where the prefix ends): tokenizers 0.22.2
/// slices that prefix off without a check and panics while building the model (found by
/// `fuzz/fuzz_targets/tokenizer.rs`). Merges are read the way tokenizers reads them (`["a", "b"]`
/// pairs, or legacy `"a b"` strings); anything else is left for its own parser to report.
fn check_bpe_merges(tokenizer: &serde_json::Value) -> Result<(), String> {
    let model = &tokenizer["model"];
    let Some(prefix) = model["continuing_subword_prefix"].as_str() else {
        return Ok(());
    };
    let Some(merges) = model["merges"].as_array() else {
        return Ok(());
    };
    for (i, merge) in merges.iter().enumerate() {
        let second = match merge {
            serde_json::Value::Array(pair) => pair.get(1).and_then(|b| b.as_str()),
            serde_json::Value::String(line) if !line.starts_with("#version") => {
                match line.split(' ').collect::<Vec<_>>()[..] {
                    [_, b] => Some(b),
                    _ => None,
                }
            }
            _ => None,
        };
        if let Some(b) = second.filter(|b| b.get(prefix.len()..).is_none()) {
            return Err(format!(
                "model.merges[{i}]: second symbol {b:?} is too short to start with the \
                 continuing_subword_prefix {prefix:?}"
            ));
        }
    }
    Ok(())
}

fn read_vocab(path: &Path) -> Result<Vocab, TokenizerError> {
    let text = read_to_string(path, "vocab.json is needed when there is no tokenizer.json")?;
    let map: HashMap<String, u32> =
        serde_json::from_str(&text).map_err(|source| TokenizerError::Json {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(map.into_iter().collect())
}

/// Parse merges.txt the way `tokenizers`' `BPE::read_file` does: `#version` lines are skipped, every
/// other line is exactly two space-separated symbols, and line order is merge rank.
fn read_merges(path: &Path) -> Result<Merges, TokenizerError> {
    let text = read_to_string(path, "merges.txt is needed when there is no tokenizer.json")?;
    let mut merges = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.starts_with("#version") {
            continue;
        }
        match line.split(' ').collect::<Vec<_>>()[..] {
            [a, b] => merges.push((a.to_string(), b.to_string())),
            _ => {
                return Err(TokenizerError::Invalid {
                    path: path.to_path_buf(),
                    message: format!(
                        "line {}: expected two space-separated symbols, got {line:?}",
                        i + 1
                    ),
                })
            }
        }
    }
    Ok(merges)
}

/// Build the pipeline of transformers' `CLIPTokenizer` (fast) from vocab.json + merges.txt.
fn build_from_vocab_merges(
    vocab_path: &Path,
    merges_path: &Path,
) -> Result<Tokenizer, TokenizerError> {
    let vocab = read_vocab(vocab_path)?;
    let merges = read_merges(merges_path)?;
    let internal = |what: &str, e: tokenizers::Error| TokenizerError::Invalid {
        path: vocab_path.to_path_buf(),
        message: format!("{what}: {e}"),
    };

    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .unk_token(EOS_TOKEN.to_string())
        // Python passes continuing_subword_prefix="" (not None); both are no-ops, keep it identical.
        .continuing_subword_prefix(String::new())
        .end_of_word_suffix("</w>".to_string())
        .fuse_unk(false)
        .build()
        .map_err(|e| TokenizerError::Invalid {
            path: merges_path.to_path_buf(),
            message: format!("merges do not fit vocab.json {}: {e}", vocab_path.display()),
        })?;
    let mut tok = Tokenizer::new(bpe);

    // NFC, then every whitespace run (incl. tabs/newlines) becomes one space, then lowercase.
    let replace = Replace::new(ReplacePattern::Regex(r"\s+".to_string()), " ")
        .map_err(|e| internal("whitespace regex", e))?;
    tok.with_normalizer(Some(NormalizerSequence::new(vec![
        NFC.into(),
        replace.into(),
        Lowercase.into(),
    ])));

    // Keep only the regex matches (invert + Removed): whitespace disappears, so BPE words never
    // carry a space and "</w>" marks word ends instead.
    let split = Split::new(
        SplitPattern::Regex(CLIP_SPLIT_REGEX.to_string()),
        SplitDelimiterBehavior::Removed,
        true,
    )
    .map_err(|e| internal("CLIP split regex", e))?;
    // Python's ByteLevel(add_prefix_space=False) keeps the defaults trim_offsets=True, use_regex=True.
    // use_regex matters: its GPT-2 regex re-splits a "<|endoftext|>" piece produced by the Split
    // above (from "<|ENDOFTEXT|>"); with use_regex=false that piece would be BPE'd whole.
    let byte_level = ByteLevel::new(false, true, true);
    tok.with_pre_tokenizer(Some(PreTokenizerSequence::new(vec![
        split.into(),
        byte_level.into(),
    ])));
    tok.with_decoder(Some(ByteLevel::default()));
    tok.with_post_processor(Some(
        RobertaProcessing::new(
            (EOS_TOKEN.to_string(), EOS_ID),
            (BOS_TOKEN.to_string(), BOS_ID),
        )
        .trim_offsets(false)
        .add_prefix_space(false),
    ));
    // transformers registers bos/eos/unk/pad as special added tokens (normalized=false): a literal
    // "<|endoftext|>" in a prompt is cut out before normalization and maps to its id.
    tok.add_special_tokens(&[
        AddedToken::from(BOS_TOKEN, true),
        AddedToken::from(EOS_TOKEN, true),
    ]);
    Ok(tok)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(prefix: &str, merges: serde_json::Value) -> serde_json::Value {
        serde_json::json!({"model": {"continuing_subword_prefix": prefix, "merges": merges}})
    }

    #[test]
    fn merges_too_short_for_the_subword_prefix_are_refused() {
        for (prefix, merges) in [
            ("##", serde_json::json!([["a", "##b"], ["a", "#"]])),
            ("##", serde_json::json!(["a ##b", "a #"])),
            // Long enough in bytes, but the prefix ends inside "é".
            ("ab", serde_json::json!([["x", "aé"]])),
        ] {
            let err = check_bpe_merges(&model(prefix, merges)).unwrap_err();
            assert!(err.starts_with("model.merges[1]") || err.starts_with("model.merges[0]"));
            assert!(err.contains("continuing_subword_prefix"), "{err}");
        }
    }

    #[test]
    fn well_formed_or_unrelated_merges_pass() {
        for value in [
            model(
                "##",
                serde_json::json!([["a", "##b"], "#version: 0.2", "a ##c"]),
            ),
            model("", serde_json::json!([["a", ""]])),
            serde_json::json!({"model": {"merges": [["a", ""]]}}),
            serde_json::json!({"model": {"continuing_subword_prefix": "##", "merges": [1, ["a"], "a b c"]}}),
            serde_json::json!([1, 2]),
        ] {
            assert_eq!(check_bpe_merges(&value), Ok(()), "{value}");
        }
    }
}
