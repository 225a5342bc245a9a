//! Fuzz target: PNG bytes of a baseline image (the body is `targets::png`).
#![no_main]

#[path = "../targets.rs"]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::png(data));
