//! Fuzz target: a generation folder (metadata.json, latents.npy, image.png) (the body is `targets::generation`).
#![no_main]

#[path = "../targets.rs"]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::generation(data));
