//! Fuzz target: stages.npy and its record in metadata.json (the body is `targets::stages`).
#![no_main]

#[path = "../targets.rs"]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::stages(data));
