//! Fuzz target: the UNet graph scanner (the body is `targets::onnx_graph`).
#![no_main]

#[path = "../targets.rs"]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::onnx_graph(data));
