//! Seeded initial noise, generated on the CPU bit-identically to a named reference.
//!
//! Sources (names as used in config and CLI):
//! * `numpy`: `np.random.RandomState(seed).randn(*shape)` cast to the model dtype (diffusers'
//!   ONNX pipeline). Bit-exact.
//! * `torch-cpu`: `torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed))`
//!   float32 on an x86-64 host with AVX2. Bit-exact.
//! * `torch-cuda`: the same with a CUDA generator. Philox is exact; the GPU's hardware sine is
//!   not reproducible on a CPU, so values agree to a few 1e-7 absolute, not bit-for-bit.
//! * `file`: a `.npy` supplied by the user. Exact by construction.
//!
//! Per-step noise (ancestral samplers): diffusers draws it from the same generator after the
//! initial latents, one `randn(latents.shape)` per step, so torch sources just keep drawing.
//! numpy cannot: diffusers' ONNX pipeline hands no numpy generator to the scheduler (the
//! scheduler draws from torch's global RNG), so a numpy + ancestral run can never match
//! diffusers. See [`NoiseKind::supports_step_noise`]; callers should reject that combination.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use ndarray::ArrayD;
use sha2::{Digest, Sha256};

mod cuda_sin_table;
pub mod file;
pub mod mt19937;
pub mod numpy;
pub mod torch_cpu;
pub mod torch_cuda;

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

    /// Whether this source can continue diffusers' stream with per-step (ancestral) noise: by
    /// default [`NoiseKind::supports_step_noise`] of [`Self::name`]. Sources that are no
    /// [`NoiseKind`] (e.g. test replays of recorded draws) are trusted to supply it.
    fn supports_step_noise(&self) -> bool {
        self.name()
            .parse::<NoiseKind>()
            .map_or(true, NoiseKind::supports_step_noise)
    }
}

/// Which reference generator to reproduce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NoiseKind {
    /// numpy legacy `RandomState.randn` (diffusers' ONNX pipeline).
    Numpy,
    /// torch CPU generator, x86-64 AVX2 kernels.
    TorchCpu,
    /// torch CUDA generator (Philox4x32-10 + curand Box-Muller), H100 launch geometry.
    TorchCuda,
    /// Values read from a `.npy` file.
    File,
}

impl NoiseKind {
    /// All kinds, in documentation order.
    pub const ALL: [NoiseKind; 4] = [
        NoiseKind::Numpy,
        NoiseKind::TorchCpu,
        NoiseKind::TorchCuda,
        NoiseKind::File,
    ];

    /// Name as used in config and CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            NoiseKind::Numpy => "numpy",
            NoiseKind::TorchCpu => "torch-cpu",
            NoiseKind::TorchCuda => "torch-cuda",
            NoiseKind::File => "file",
        }
    }

    /// Whether this source can reproduce diffusers' per-step noise (ancestral samplers).
    ///
    /// `numpy`: no. diffusers' ONNX pipeline draws the initial latents from numpy but the
    /// scheduler's per-step noise from torch's global RNG, which no seed here controls.
    /// `file`: no, a file holds only the initial latents. torch sources: yes, by drawing
    /// `randn(latents.shape)` once per step after the initial latents.
    pub fn supports_step_noise(self) -> bool {
        matches!(self, NoiseKind::TorchCpu | NoiseKind::TorchCuda)
    }
}

impl fmt::Display for NoiseKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for NoiseKind {
    type Err = NoiseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        NoiseKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                NoiseError::Invalid(format!(
                "unknown noise source {s:?}; expected one of: numpy, torch-cpu, torch-cuda, file"
            ))
            })
    }
}

/// Builds a source. `seed` is interpreted as the reference does: numpy rejects seeds above
/// `u32::MAX` (as `RandomState` does), torch CPU keeps the low 32 bits (as `manual_seed` does),
/// torch CUDA uses all 64 bits. `file` needs `file` and ignores the seed.
pub fn build(
    kind: NoiseKind,
    seed: u64,
    file: Option<&Path>,
) -> Result<Box<dyn NoiseSource>, NoiseError> {
    Ok(match kind {
        NoiseKind::Numpy => Box::new(numpy::NumpyNoise::new(seed)?),
        NoiseKind::TorchCpu => Box::new(torch_cpu::TorchCpuNoise::new(seed)),
        NoiseKind::TorchCuda => Box::new(torch_cuda::TorchCudaNoise::new(seed)),
        NoiseKind::File => {
            let path = file.ok_or_else(|| {
                NoiseError::Invalid("noise source `file` needs the path of a .npy file".to_string())
            })?;
            Box::new(file::FileNoise::open(path)?)
        }
    })
}

/// SHA-256 (lowercase hex) of the values as f32 little-endian bytes, in the order given (pass
/// `array.iter()` for C order). Recorded in run metadata to identify the exact noise used.
pub fn sha256_f32<'a>(values: impl IntoIterator<Item = &'a f32>) -> String {
    let mut hasher = Sha256::new();
    // Buffered: hashing 4 bytes per call is several times slower on large latents.
    let mut buf = Vec::with_capacity(4096);
    for v in values {
        buf.extend_from_slice(&v.to_le_bytes());
        if buf.len() >= 4096 {
            hasher.update(&buf);
            buf.clear();
        }
    }
    hasher.update(&buf);
    super::model::hex(&hasher.finalize())
}

/// Number of elements of `shape`, or an error on overflow.
pub(crate) fn numel(shape: &[usize]) -> Result<usize, NoiseError> {
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| NoiseError::Invalid(format!("noise shape {shape:?} has too many elements")))
}

/// Wraps C-order values into an array of `shape` (lengths are the caller's invariant).
pub(crate) fn into_array(shape: &[usize], values: Vec<f32>) -> Result<ArrayD<f32>, NoiseError> {
    ArrayD::from_shape_vec(ndarray::IxDyn(shape), values)
        .map_err(|e| NoiseError::Invalid(format!("noise shape {shape:?}: {e}")))
}

/// f32 → nearest f16 (ties to even), returned as the f32 it represents exactly.
pub fn round_f32_to_f16(x: f32) -> f32 {
    half::f16::from_f32(x).to_f32()
}

/// f64 → nearest f16 (ties to even) in ONE rounding, returned as f32 (exact).
///
/// Not `half::f16::from_f64`: with F16C it goes through f32 (double rounding) and its software
/// fallback truncates the low 32 mantissa bits, both of which can differ from numpy's
/// `astype(np.float16)` on a float64 array.
pub fn round_f64_to_f16(x: f64) -> f32 {
    f16_bits_to_f32(f64_to_f16_bits(x))
}

fn f16_bits_to_f32(bits: u16) -> f32 {
    half::f16::from_bits(bits).to_f32()
}

/// Correctly rounded f64 → binary16 bits.
pub(crate) fn f64_to_f16_bits(x: f64) -> u16 {
    let sign = ((x.to_bits() >> 48) & 0x8000) as u16;
    let a = x.abs();
    if a.is_nan() {
        return sign | 0x7e00;
    }
    // 65520 = largest f16 (65504) plus half an ulp: it and above round to infinity.
    if a >= 65520.0 {
        return sign | 0x7c00;
    }
    const MIN_NORMAL: f64 = 6.103_515_625e-5; // 2^-14
    if a < MIN_NORMAL {
        // Subnormal: units of 2^-24. Scaling by a power of two is exact, so this is one rounding.
        // A result of 1024 is exactly the encoding of the smallest normal, as it should be.
        let q = (a * 16_777_216.0).round_ties_even();
        return sign | q as u16;
    }
    // Normal: a = m * 2^(e-10) with m in [1024, 2048).
    let e = ((a.to_bits() >> 52) & 0x7ff) as i32 - 1023;
    let scaled = a * f64::powi(2.0, 10 - e);
    let mut m = scaled.round_ties_even() as u32;
    let mut e16 = e + 15;
    if m == 2048 {
        m = 1024;
        e16 += 1;
    }
    // e16 <= 30 here because a < 65520.
    sign | ((e16 as u16) << 10) | (m - 1024) as u16
}

/// One draw of a float32 generator as `randn` returns it: torch generates float32 and casts to
/// float16 for fp16 models, so both torch sources share this.
pub(crate) fn f32_draw(
    shape: &[usize],
    dtype: NoiseDtype,
    draw: impl FnOnce(usize) -> Vec<f32>,
) -> Result<ArrayD<f32>, NoiseError> {
    let mut values = draw(numel(shape)?);
    if dtype == NoiseDtype::F16 {
        for v in values.iter_mut() {
            *v = round_f32_to_f16(*v);
        }
    }
    into_array(shape, values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for k in NoiseKind::ALL {
            assert_eq!(k.to_string().parse::<NoiseKind>().unwrap(), k);
        }
        assert!("torch".parse::<NoiseKind>().is_err());
    }

    #[test]
    fn f64_to_f16_single_rounding() {
        // 1 + 2^-11 + 2^-40 is just above the midpoint between 1 and the next f16; via f32 it
        // would first become exactly the midpoint and then tie to even (1.0).
        let x = 1.0 + 2f64.powi(-11) + 2f64.powi(-40);
        assert_eq!(round_f64_to_f16(x), 1.0 + 2f32.powi(-10));
        assert_eq!(round_f64_to_f16(1.0 + 2f64.powi(-11)), 1.0);
        assert_eq!(round_f64_to_f16(-2.5), -2.5);
        assert_eq!(round_f64_to_f16(65519.0), 65504.0);
        assert_eq!(round_f64_to_f16(65520.0), f32::INFINITY);
        assert_eq!(round_f64_to_f16(2f64.powi(-25)), 0.0);
        assert_eq!(round_f64_to_f16(2f64.powi(-25) * 1.5), 2f32.powi(-24));
        assert_eq!(round_f64_to_f16(-0.0).to_bits(), (-0.0f32).to_bits());
        // Agrees with half's (exact-input) f32 path where no double rounding is possible.
        for i in 0..100_000u32 {
            let v = (i as f32 - 50_000.0) * 0.000_731;
            assert_eq!(
                round_f64_to_f16(v as f64).to_bits(),
                round_f32_to_f16(v).to_bits(),
                "{v}"
            );
        }
    }

    #[test]
    fn sha256_of_known_bytes() {
        // sha256 of the 4 bytes 00 00 80 3f (1.0f32 little-endian).
        let h = sha256_f32(&[1.0f32]);
        assert_eq!(h.len(), 64);
        assert_eq!(
            h,
            "e00e5eb9444182f352323374ef4e08ebcb784725fdd4fd612d7730540b3e0c8c"
        );
    }
}
