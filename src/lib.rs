//! `monitor`: a reproducibility watchdog for Stable Diffusion 1.5 ONNX exports.
//!
//! `sd` is the pipeline (knows nothing of monitoring); the rest of the crate builds the monitor on it.

pub mod alert;
pub mod baseline;
pub mod case;
pub mod check;
pub mod cli;
pub mod clock;
pub mod compare;
pub mod config;
pub mod daemon;
pub mod determinism;
pub mod device_lock;
pub mod duration;
pub mod fingerprint;
pub mod fsutil;
pub mod generation;
pub mod history;
pub mod host_compare;
pub mod limits;
pub mod metadata;
pub mod metrics;
pub mod performance;
pub mod process;
pub mod quick;
pub mod rebaseline;
pub mod remediate;
pub mod report;
pub mod resources;
pub mod sd;
pub mod secret;
pub mod service;
pub mod snapshot;
pub mod stage_data;
pub mod status;
pub mod worker;
