//! `monitor tokenize`: the ids the text encoder would be fed, to debug prompts and truncation.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use serde_json::json;

use crate::sd::model::ModelDir;
use crate::sd::tokenizer::{ClipTokenizer, EOS_ID};

/// Flags of `monitor tokenize`.
#[derive(Debug, Args)]
pub struct TokenizeArgs {
    /// SD1.5 ONNX export folder (its tokenizer/ is used).
    #[arg(long, value_name = "DIR")]
    model: PathBuf,
    /// Print JSON: all 77 ids, the untruncated length and whether it was truncated.
    #[arg(long)]
    json: bool,
    /// The text to tokenize.
    text: String,
}

/// Runs the command.
pub fn run(a: TokenizeArgs) -> Result<u8> {
    let dir = ModelDir::open(&a.model)?;
    let tok = ClipTokenizer::from_dir(&dir.tokenizer)
        .with_context(|| format!("loading tokenizer of {}", a.model.display()))?;
    let enc = tok.encode(&a.text)?;
    if a.json {
        let v = json!({"ids": enc.ids, "untruncated_len": enc.untruncated_len, "truncated": enc.truncated});
        println!("{v}");
    } else {
        // Plain output stops at the end token: the padding after it is always 49407.
        let end = enc
            .ids
            .iter()
            .skip(1)
            .position(|&i| i == EOS_ID)
            .map_or(enc.ids.len(), |p| p + 2);
        let ids: Vec<String> = enc.ids[..end].iter().map(u32::to_string).collect();
        println!("{}", ids.join(" "));
    }
    if enc.truncated {
        eprintln!(
            "monitor: warning: text is {} tokens; only the first 77 are used",
            enc.untruncated_len
        );
    }
    Ok(0)
}
