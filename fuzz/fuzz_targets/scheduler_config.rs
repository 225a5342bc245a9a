//! Fuzz target: `scheduler_config.json` text, and stepping every scheduler it configures (the body is `targets::scheduler_config`).
#![no_main]

#[path = "../targets.rs"]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::scheduler_config(data));
