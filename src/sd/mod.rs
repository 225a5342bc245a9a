//! The Stable Diffusion 1.5 ONNX pipeline: tokenizer, noise, schedulers, ONNX Runtime sessions.
//!
//! Nothing in here knows about baselines, alerts or history, so it can be reused and tested alone.

pub mod image;
pub mod memory;
pub mod model;
pub mod noise;
pub mod npy;
pub mod onnx_graph;
pub mod pipeline;
pub mod runtime;
pub mod scheduler;
pub mod session_cache;
pub mod tokenizer;
