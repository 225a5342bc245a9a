//! Seeded initial noise, generated on the CPU bit-identically to a named reference.

use ndarray::ArrayD;

/// Precision the model consumes; noise is rounded the way the reference rounds to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoiseDtype {
    /// float32 models.
    F32,
    /// float16 models: values are rounded to f16 (and held in f32, which represents them exactly).
    F16,
}

/// Errors from a noise source.
#[derive(Debug, thiserror::Error)]
pub enum NoiseError {
    /// Anything a source could not do, with the reason.
    #[error("{0}")]
    Invalid(String),
}

/// A seeded standard-normal stream. Each call continues the stream, as the reference generator does.
pub trait NoiseSource {
    /// Name as used in config and CLI (`numpy`, `torch-cpu`, ...).
    fn name(&self) -> &'static str;
    /// Next draw of `shape` standard-normal values, rounded as the reference rounds to `dtype`.
    fn randn(&mut self, shape: &[usize], dtype: NoiseDtype) -> Result<ArrayD<f32>, NoiseError>;
}
