//! `monitor`: a reproducibility watchdog for Stable Diffusion 1.5 ONNX exports.
//!
//! `sd` is the pipeline (knows nothing of monitoring); the rest of the crate builds the monitor on it.

pub mod cli;
pub mod clock;
pub mod fsutil;
pub mod history;
pub mod sd;
