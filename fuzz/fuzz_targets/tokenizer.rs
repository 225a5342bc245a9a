//! Fuzz target: a model's tokenizer files (the body is `targets::tokenizer`).
#![no_main]

#[path = "../targets.rs"]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::tokenizer(data));
