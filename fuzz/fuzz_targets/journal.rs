//! Fuzz target: the baseline store's batch journal (the body is `targets::journal`).
#![no_main]

#[path = "../targets.rs"]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::journal(data));
