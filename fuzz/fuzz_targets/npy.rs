//! Fuzz target: `.npy` bytes (the body is `targets::npy`).
#![no_main]

#[path = "../targets.rs"]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::npy(data));
