//! Fuzz target: a snapshot tar from another host (the body is `targets::snapshot`).
#![no_main]

#[path = "../targets.rs"]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::snapshot(data));
