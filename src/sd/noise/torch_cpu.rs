//! torch CPU `randn` for float32 on x86-64 with AVX2 (every current server; AVX-512 machines
//! run the same kernel), seeded with `manual_seed`.
//!
//! torch has two paths, chosen by the element count of the draw:
//! * fewer than 16 values: a scalar float64 Box-Muller per value that keeps its second value
//!   (`r·sinθ`) *in the generator*. The cache survives later draws of ≥ 16 values (which never
//!   look at it) and is used by the next small draw.
//! * 16 or more: `normal_fill`: fill every slot with a 24-bit uniform, transform blocks of 16
//!   with the AVX2 kernel (Cephes `log256_ps`/`sincos256_ps` from `avx_mathfun.h`, compiled with
//!   FMA contraction), and if the count is not a multiple of 16, redraw 16 uniforms into the
//!   last 16 slots and transform those again. The per-lane recipe below reproduces that kernel
//!   bit-for-bit; a plain libm formula would agree on only ~61% of the values.
//!
//! float16: we generate float32 and round to f16. torch's own CPU float16 noise changed between
//! releases (2.11 and 2.15 disagree for draws of ≥ 16 values while float32 agrees), so there is
//! no single reference to match; f32-then-cast is what a float32 generator plus `.half()` gives
//! on every version.

#![allow(clippy::excessive_precision)] // Cephes constants kept digit-for-digit

use ndarray::ArrayD;

use super::mt19937::Mt19937;
use super::{f32_draw, NoiseDtype, NoiseError, NoiseSource};

/// torch CPU generator state: MT19937 plus the cached double normal sample.
#[derive(Debug, Clone)]
pub struct TorchCpuNoise {
    mt: Mt19937,
    /// `next_double_normal_sample` of torch's `CPUGeneratorImpl`; cleared by seeding.
    cached: Option<f64>,
}

impl TorchCpuNoise {
    /// `Generator("cpu").manual_seed(seed)`: torch keeps only the low 32 bits, so `5` and
    /// `5 + 2^32` give the same stream.
    pub fn new(seed: u64) -> Self {
        TorchCpuNoise {
            mt: Mt19937::new(seed as u32),
            cached: None,
        }
    }

    /// `random64()`: first draw in the high half.
    fn random64(&mut self) -> u64 {
        let hi = self.mt.next_u32() as u64;
        let lo = self.mt.next_u32() as u64;
        (hi << 32) | lo
    }

    /// `uniform_real_distribution<double>(0, 1)`: 53 low bits of `random64()`.
    fn uniform64(&mut self) -> f64 {
        (self.random64() & ((1u64 << 53) - 1)) as f64 * (1.0 / 9_007_199_254_740_992.0)
    }

    /// `uniform_real_distribution<float>(0, 1)`: 24 low bits of one draw.
    fn uniform32(&mut self) -> f32 {
        (self.mt.next_u32() & 0x00ff_ffff) as f32 * (1.0 / 16_777_216.0)
    }

    /// `normal_distribution<double>` with mean 0, std 1 (the scalar path).
    fn normal64(&mut self) -> f64 {
        if let Some(c) = self.cached.take() {
            // torch computes `cached * std + mean`; `+ 0.0` keeps its -0 → +0 behaviour.
            return c + 0.0;
        }
        let u1 = self.uniform64();
        let u2 = self.uniform64();
        let r = (-2.0 * (-u2).ln_1p()).sqrt();
        let theta = 2.0 * std::f64::consts::PI * u1;
        self.cached = Some(r * theta.sin());
        r * theta.cos() + 0.0
    }

    /// float32 values of one `randn` call of `n` elements, C order.
    pub fn randn_f32(&mut self, n: usize) -> Vec<f32> {
        if n < 16 {
            return (0..n).map(|_| self.normal64() as f32).collect();
        }
        let mut data: Vec<f32> = (0..n).map(|_| self.uniform32()).collect();
        normal_fill(&mut data);
        if !n.is_multiple_of(16) {
            // torch recomputes the last 16 values from 16 fresh uniforms (overlapping the
            // last full block), rather than handling a short tail.
            let tail = &mut data[n - 16..];
            for slot in tail.iter_mut() {
                *slot = self.uniform32();
            }
            normal_fill_16(tail);
        }
        data
    }
}

impl NoiseSource for TorchCpuNoise {
    fn name(&self) -> &'static str {
        "torch-cpu"
    }

    fn randn(&mut self, shape: &[usize], dtype: NoiseDtype) -> Result<ArrayD<f32>, NoiseError> {
        f32_draw(shape, dtype, |n| self.randn_f32(n))
    }
}

// Cephes constants, written as in avx_mathfun.h so they can be checked against it; each
// literal is rounded to f32 exactly as the C compiler rounds the header's `float` constants.
const SQRTHF: f32 = std::f32::consts::FRAC_1_SQRT_2; // 0.707106781186547524
const LOG_P: [f32; 9] = [
    7.037_683_629_2E-2,
    -1.151_461_031_0E-1,
    1.167_699_874_0E-1,
    -1.242_014_084_6E-1,
    1.424_932_278_7E-1,
    -1.666_805_766_5E-1,
    2.000_071_476_5E-1,
    -2.499_999_399_3E-1,
    3.333_333_117_4E-1,
];
const LOG_Q1: f32 = -2.121_944_40e-4;
const LOG_Q2: f32 = 0.693_359_375;
const FOPI: f32 = 1.273_239_544_735_16; // 4/π
const DP1: f32 = -0.785_156_25;
const DP2: f32 = -2.418_756_484_985_351_562_5e-4;
const DP3: f32 = -3.774_894_977_445_941_08e-8;
const SIN_P: [f32; 3] = [-1.951_529_589_1E-4, 8.332_160_873_6E-3, -1.666_665_461_1E-1];
const COS_P: [f32; 3] = [
    2.443_315_711_809_948E-5,
    -1.388_731_625_493_765E-3,
    4.166_664_568_298_827E-2,
];
const TWO_PI: f32 = std::f32::consts::TAU; // 6.2831855, torch's `2 * pi` as float

/// `log256_ps` for one lane, with the fused multiply-adds the compiled kernel uses.
#[inline(always)]
fn log_lane(x: f32) -> f32 {
    let mut x = x.max(f32::MIN_POSITIVE);
    let bits = x.to_bits();
    let e_i = (bits >> 23) as i32 - 127;
    x = f32::from_bits((bits & !0x7f80_0000) | 0.5f32.to_bits());
    let mut e = e_i as f32 + 1.0;
    let tmp = if x < SQRTHF {
        e -= 1.0;
        x
    } else {
        0.0
    };
    x -= 1.0;
    x += tmp;
    let z = x * x;
    let mut y = LOG_P[0];
    for &p in &LOG_P[1..] {
        y = y.mul_add(x, p);
    }
    y *= x;
    y = y.mul_add(z, e * LOG_Q1);
    y = (-z).mul_add(0.5, y);
    x += y;
    e.mul_add(LOG_Q2, x)
}

/// `sincos256_ps` for one lane: (sin, cos).
#[inline(always)]
fn sincos_lane(theta: f32) -> (f32, f32) {
    let mut sign_sin = theta.to_bits() & 0x8000_0000;
    let mut x = theta.abs();
    let y = x * FOPI;
    let mut k = y as i32; // truncation, as _mm256_cvttps_epi32 (y is small and non-negative)
    k = (k + 1) & !1;
    let y = k as f32;
    let swap_sin = ((k & 4) as u32) << 29;
    let poly_mask = (k & 2) == 0;
    x = y.mul_add(DP1, x);
    x = y.mul_add(DP2, x);
    x = y.mul_add(DP3, x);
    let sign_cos = ((!(k.wrapping_sub(2)) & 4) as u32) << 29;
    sign_sin ^= swap_sin;
    let z = x * x;
    let tmp = z * 0.5;
    let mut yc = COS_P[0].mul_add(z, COS_P[1]);
    yc = yc.mul_add(z, COS_P[2]);
    yc *= z;
    yc = yc.mul_add(z, -tmp);
    yc += 1.0;
    let mut ys = SIN_P[0].mul_add(z, SIN_P[1]);
    ys = ys.mul_add(z, SIN_P[2]);
    ys *= z;
    ys = ys.mul_add(x, x);
    let (s, c) = if poly_mask { (ys, yc) } else { (yc, ys) };
    (
        f32::from_bits(s.to_bits() ^ sign_sin),
        f32::from_bits(c.to_bits() ^ sign_cos),
    )
}

/// Transforms every full block of 16; dispatches to a copy compiled with hardware FMA when the
/// CPU has it (`mul_add` is otherwise a libm call). Results are identical either way.
fn normal_fill(data: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports FMA, checked just above.
        unsafe { normal_fill_fma(data) };
        return;
    }
    normal_fill_portable(data);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma")]
unsafe fn normal_fill_fma(data: &mut [f32]) {
    normal_fill_portable(data);
}

#[inline(always)]
fn normal_fill_portable(data: &mut [f32]) {
    for block in data.chunks_exact_mut(16) {
        normal_fill_16(block);
    }
}

/// `normal_fill_16_AVX2` (mean 0, std 1): lanes j and j+8 become one Box-Muller pair.
#[inline(always)]
fn normal_fill_16(d: &mut [f32]) {
    for j in 0..8 {
        let r = (-2.0 * log_lane(1.0 - d[j])).sqrt();
        let theta = TWO_PI * d[j + 8];
        let (s, c) = sincos_lane(theta);
        // torch stores fma(n, std, mean) = n + 0 (only -0 changes, to +0).
        d[j] = r * c + 0.0;
        d[j + 8] = r * s + 0.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_keeps_low_32_bits() {
        let a = TorchCpuNoise::new(5).randn_f32(40);
        let b = TorchCpuNoise::new(5 + (1u64 << 32)).randn_f32(40);
        assert_eq!(a, b);
    }

    #[test]
    fn cephes_close_to_libm() {
        for i in 1..1000 {
            let x = i as f32 / 1000.0;
            assert!((log_lane(x) - x.ln()).abs() < 1e-6);
            let (s, c) = sincos_lane(x * TWO_PI);
            assert!((s - (x * TWO_PI).sin()).abs() < 1e-6 && (c - (x * TWO_PI).cos()).abs() < 1e-6);
        }
    }
}
