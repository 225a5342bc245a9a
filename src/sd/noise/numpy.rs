//! numpy legacy `RandomState(seed).randn`: MT19937 doubles and the polar (Marsaglia) method
//! with one cached value, then a cast to the model dtype as diffusers' ONNX pipeline does
//! (`randn(...).astype(dtype)`: float64 → float32, or float64 → float16 in one rounding).

use ndarray::ArrayD;

use super::mt19937::Mt19937;
use super::{into_array, numel, round_f64_to_f16, NoiseDtype, NoiseError, NoiseSource};

/// numpy legacy `RandomState` normal stream.
#[derive(Debug, Clone)]
pub struct NumpyNoise {
    mt: Mt19937,
    /// The polar method makes two values; numpy keeps the second for the next call
    /// (`has_gauss` / `gauss`), across `randn` calls too.
    cached: Option<f64>,
}

impl NumpyNoise {
    /// `RandomState(seed)`. numpy raises `ValueError` for seeds outside [0, 2^32-1]; so do we.
    pub fn new(seed: u64) -> Result<Self, NoiseError> {
        let seed32 = u32::try_from(seed).map_err(|_| {
            NoiseError::Invalid(format!(
                "seed {seed} is out of range for the numpy noise source (numpy's RandomState accepts 0..=4294967295)"
            ))
        })?;
        Ok(NumpyNoise {
            mt: Mt19937::new(seed32),
            cached: None,
        })
    }

    /// `random_sample()`: 53-bit double from two draws (27 + 26 bits).
    fn next_double(&mut self) -> f64 {
        let a = self.mt.next_u32() >> 5;
        let b = self.mt.next_u32() >> 6;
        (a as f64 * 67_108_864.0 + b as f64) / 9_007_199_254_740_992.0
    }

    /// One standard normal in float64, exactly as `legacy_gauss`.
    pub fn next_gauss(&mut self) -> f64 {
        if let Some(g) = self.cached.take() {
            return g;
        }
        loop {
            let x1 = 2.0 * self.next_double() - 1.0;
            let x2 = 2.0 * self.next_double() - 1.0;
            let r2 = x1 * x1 + x2 * x2;
            if r2 < 1.0 && r2 != 0.0 {
                // `ln` is the platform libm `log`, the same function numpy calls.
                let f = (-2.0 * r2.ln() / r2).sqrt();
                self.cached = Some(f * x1);
                return f * x2;
            }
        }
    }

    /// The float64 values numpy's `randn` returns, in C order (before any dtype cast).
    pub fn randn_f64(&mut self, n: usize) -> Vec<f64> {
        (0..n).map(|_| self.next_gauss()).collect()
    }
}

impl NoiseSource for NumpyNoise {
    fn name(&self) -> &'static str {
        "numpy"
    }

    fn randn(&mut self, shape: &[usize], dtype: NoiseDtype) -> Result<ArrayD<f32>, NoiseError> {
        let n = numel(shape)?;
        let values = self.randn_f64(n);
        let values = match dtype {
            // `as f32` rounds to nearest even, as numpy's astype does.
            NoiseDtype::F32 => values.into_iter().map(|v| v as f32).collect(),
            // Directly from float64: going through f32 could round twice.
            NoiseDtype::F16 => values.into_iter().map(round_f64_to_f16).collect(),
        };
        into_array(shape, values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed0_vector() {
        let mut g = NumpyNoise::new(0).unwrap();
        let v = g.randn_f64(4);
        assert_eq!(
            v,
            [
                1.764052345967664,
                0.4001572083672233,
                0.9787379841057392,
                2.240893199201458
            ]
        );
    }

    #[test]
    fn rejects_large_seed() {
        let err = NumpyNoise::new(1 << 32).unwrap_err().to_string();
        assert!(err.contains("4294967296"), "{err}");
        assert!(NumpyNoise::new(u32::MAX as u64).is_ok());
    }
}
