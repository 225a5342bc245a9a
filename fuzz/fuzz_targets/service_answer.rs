//! Fuzz target: a generation service's answer (A1111 JSON, its image, as a template) (the body is `targets::service_answer`).
#![no_main]

#[path = "../targets.rs"]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::service_answer(data));
