//! torch CUDA `randn` (float32) emulated on the CPU: Philox4x32-10 counters laid out as torch's
//! `distribution_nullary_kernel` uses them, and curand's Box-Muller (`curand_normal4`).
//!
//! The random bits are exact. The values are not all bit-identical to a GPU's: curand computes
//! the sine with the hardware approximation `__sincosf` (MUFU.SIN, abs error ~2^-21.4), whose
//! exact rounding is undocumented. We compute the rest as the GPU does (f32 arithmetic, the
//! fused multiply-adds nvcc emits, CUDA's `logf` algorithm, IEEE `sqrtf`) and model the sine
//! unit from H100 data; see [`gpu_sincos`]. Measured against an H100 (tests/noise.rs): max abs
//! error 4.8e-7, ~90% of values bit-identical (a plain f64 emulation: 3.6e-6 and ~16%).
//!
//! Launch geometry matters: torch picks `T = 256 * grid` threads with
//! `grid = min(ceil(n/256), SMs * maxThreadsPerSM / 256)`. For n ≤ T (every SD1.5 latent up to
//! far beyond 1024², T = 270336 on an H100) element i uses Philox counter `(offset/4, 0, i, 0)`
//! and nothing depends on the GPU. Larger draws interleave 4 values per thread with stride T,
//! so they depend on the GPU model; we use H100 numbers (132 SMs, 2048 threads per SM).

use ndarray::ArrayD;

use super::cuda_sin_table::SIN_TABLE;
use super::{f32_draw, NoiseDtype, NoiseError, NoiseSource};

/// Streaming multiprocessors of the GPU whose launch geometry we reproduce (H100 SXM).
pub const H100_SMS: u64 = 132;
/// Maximum resident threads per SM on an H100.
pub const H100_MAX_THREADS_PER_SM: u64 = 2048;
const BLOCK: u64 = 256;

/// torch CUDA generator: 64-bit seed and Philox offset (in 32-bit draws).
#[derive(Debug, Clone)]
pub struct TorchCudaNoise {
    seed: u64,
    offset: u64,
}

impl TorchCudaNoise {
    /// `Generator("cuda").manual_seed(seed)`: all 64 bits form the Philox key.
    pub fn new(seed: u64) -> Self {
        TorchCudaNoise { seed, offset: 0 }
    }

    /// Threads in torch's launch for `n` elements on an H100: `T = 256 * grid`.
    pub fn threads_for(n: u64) -> u64 {
        let max_grid = H100_SMS * (H100_MAX_THREADS_PER_SM / BLOCK);
        let grid = n.div_ceil(BLOCK).clamp(1, max_grid);
        BLOCK * grid
    }

    /// float32 values of one `randn` call of `n` elements, C order.
    pub fn randn_f32(&mut self, n: usize) -> Vec<f32> {
        let n64 = n as u64;
        let key = [self.seed as u32, (self.seed >> 32) as u32];
        let t = Self::threads_for(n64);
        // Each thread calls curand_normal4 (4 Philox words, one counter step) per loop pass.
        let passes = n64.div_ceil(4 * t).max(1);
        let mut out = vec![0f32; n];
        fill(&mut out, self.offset / 4, key, t);
        if n > 0 {
            self.offset += 4 * passes;
        }
        out
    }
}

/// Fills `out` with one draw; dispatches to a copy compiled with hardware FMA when the CPU has
/// it (`mul_add` is otherwise a libm call). Results are identical either way: an fma is an fma.
fn fill(out: &mut [f32], base: u64, key: [u32; 2], t: u64) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports FMA, checked just above.
        unsafe { fill_fma(out, base, key, t) };
        return;
    }
    fill_portable(out, base, key, t);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma")]
unsafe fn fill_fma(out: &mut [f32], base: u64, key: [u32; 2], t: u64) {
    fill_portable(out, base, key, t);
}

#[inline(always)]
fn fill_portable(out: &mut [f32], base: u64, key: [u32; 2], t: u64) {
    for (i, slot) in out.iter_mut().enumerate() {
        let i = i as u64;
        let thread = i % t;
        let pass = i / (4 * t);
        let lane = (i / t) % 4;
        let ctr = base + pass;
        let w = philox4x32_10(
            [
                ctr as u32,
                (ctr >> 32) as u32,
                thread as u32,
                (thread >> 32) as u32,
            ],
            key,
        );
        *slot = match lane {
            0 => box_muller(w[0], w[1]).0,
            1 => box_muller(w[0], w[1]).1,
            2 => box_muller(w[2], w[3]).0,
            _ => box_muller(w[2], w[3]).1,
        } + 0.0; // torch stores fma(x, std, mean): only -0 changes (to +0)
    }
}

impl NoiseSource for TorchCudaNoise {
    fn name(&self) -> &'static str {
        "torch-cuda"
    }

    fn randn(&mut self, shape: &[usize], dtype: NoiseDtype) -> Result<ArrayD<f32>, NoiseError> {
        f32_draw(shape, dtype, |n| self.randn_f32(n))
    }
}

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

/// Philox4x32-10 block function (Salmon et al.; curand's `curand_Philox4x32_10`).
#[inline(always)]
pub fn philox4x32_10(mut c: [u32; 4], mut k: [u32; 2]) -> [u32; 4] {
    for round in 0..10 {
        let p0 = M0 as u64 * c[0] as u64;
        let p1 = M1 as u64 * c[2] as u64;
        let (hi0, lo0) = ((p0 >> 32) as u32, p0 as u32);
        let (hi1, lo1) = ((p1 >> 32) as u32, p1 as u32);
        c = [hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0];
        if round < 9 {
            k = [k[0].wrapping_add(W0), k[1].wrapping_add(W1)];
        }
    }
    c
}

/// curand `_curand_box_muller` on the device: (s·sin v, s·cos v).
#[inline(always)]
pub fn box_muller(x: u32, y: u32) -> (f32, f32) {
    // nvcc contracts `x * C + D` into one fma; the u32 → f32 conversion rounds to nearest.
    const INV_2POW32: f32 = 1.0 / 4_294_967_296.0; // 2^-32, exact
    const HALF_INV: f32 = 0.5 / 4_294_967_296.0; // 2^-33, exact
    let two_pi_inv = f32::from_bits(0x30c9_0fdb); // 2π·2^-32
    let two_pi_half_inv = f32::from_bits(0x3049_0fdb); // 2π·2^-33
    let u = (x as f32).mul_add(INV_2POW32, HALF_INV);
    let v = (y as f32).mul_add(two_pi_inv, two_pi_half_inv);
    let s = (-2.0 * logf(u)).sqrt();
    let (sn, cs) = gpu_sincos(v);
    (s * sn, s * cs)
}

/// `logf` as CUDA computes it, we believe: the algorithm N. Juffa (NVIDIA) published (≤ 0.85
/// ulp, not correctly rounded; differs from a correctly rounded log for ~7.5% of our inputs),
/// step for step with fused multiply-adds. Not verified against CUDA's source, but the H100 data
/// supports it: using it instead of a correctly rounded log raised the bit-identical share by
/// 2.2 points. For u in (0, 1], always a normal float here (no subnormal/special handling).
#[inline(always)]
#[allow(clippy::excessive_precision)] // constants kept as published, for checking
fn logf(a: f32) -> f32 {
    let bits = a.to_bits() as i32;
    let e = bits.wrapping_sub(0.666_666_7f32.to_bits() as i32) & (0xff80_0000u32 as i32);
    let mut m = f32::from_bits(bits.wrapping_sub(e) as u32);
    let i = e as f32 * 1.192_092_9e-7; // 2^-23: e holds the exponent shifted left by 23
    m -= 1.0;
    let s = m * m;
    let mut r = -0.130_310_059f32;
    let mut t = 0.140_869_141f32;
    r = r.mul_add(s, -0.121_483_512);
    t = t.mul_add(s, 0.139_814_854);
    r = r.mul_add(s, -0.166_846_126);
    t = t.mul_add(s, 0.200_120_345);
    r = r.mul_add(s, -0.249_996_200);
    r = t.mul_add(m, r);
    r = r.mul_add(m, 0.333_331_972);
    r = r.mul_add(m, -0.5);
    r = r.mul_add(s, m);
    i.mul_add(0.693_147_182, r)
}

/// Model of `__sincosf(v)` on an H100: (sin v, cos v).
///
/// `__sinf` compiles to `FMUL.RZ t, v, 1/2π` (round toward zero) and `MUFU.SIN t`, a table +
/// quadratic interpolator. Modelled from the H100 data (scripts/fit_cuda_sin_table.py):
/// quadrant q = ⌊4t⌋, 23-bit position X within it; odd quadrants use the one's complement of X
/// (so a quarter-turn reflection is off by one unit, which the data shows clearly); quadrants
/// 2 and 3 negate; the core is a quadratic per 1/64 of a quadrant with fitted coefficients.
/// cos v = sin of the next quadrant. About 90% of final values come out bit-identical (the
/// hardware's fixed-point coefficients are not public); the rest differ by an ulp or two.
#[inline(always)]
pub fn gpu_sincos(v: f32) -> (f32, f32) {
    let mut t = mul_rz(v, 0.159_154_94) as f64; // 1/2π as f32
    t -= t.floor(); // the unit works on the fractional turn
    let q = (t * 4.0).floor() as u32; // 0..=3
    let x = ((t * 4.0 - q as f64) * 8_388_608.0).floor() as u32; // 23-bit fixed point
    (quadrant_sin(q, x), quadrant_sin((q + 1) & 3, x))
}

/// sin(π/2·(q + X/2^23)) as the hardware evaluates it (see [`gpu_sincos`]).
#[inline(always)]
fn quadrant_sin(q: u32, x: u32) -> f32 {
    const LOW_BITS: u32 = 17;
    let xe = if q & 1 == 1 { (1 << 23) - 1 - x } else { x };
    let c = SIN_TABLE[(xe >> LOW_BITS) as usize];
    let xl = (xe & ((1 << LOW_BITS) - 1)) as f64 / (1u32 << LOW_BITS) as f64;
    let core = c[0] + c[1] * xl + c[2] * xl * xl; // same expression as the fitting script
    let core = if q >= 2 { -core } else { core };
    core as f32
}

/// f32 product rounded toward zero (the product of two f32 is exact in f64).
#[inline(always)]
fn mul_rz(a: f32, b: f32) -> f32 {
    let exact = a as f64 * b as f64;
    let r = exact as f32;
    if (r as f64).abs() > exact.abs() {
        f32::from_bits(r.to_bits() - 1)
    } else {
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn philox_known_answer() {
        // Random123 known-answer tests for philox4x32_10.
        assert_eq!(
            philox4x32_10([0, 0, 0, 0], [0, 0]),
            [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]
        );
        assert_eq!(
            philox4x32_10([0xffffffff; 4], [0xffffffff; 2]),
            [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]
        );
        assert_eq!(
            philox4x32_10(
                [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
                [0xa4093822, 0x299f31d0]
            ),
            [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]
        );
    }

    #[test]
    fn launch_geometry() {
        assert_eq!(TorchCudaNoise::threads_for(16384), 16384);
        assert_eq!(TorchCudaNoise::threads_for(3), 256);
        assert_eq!(TorchCudaNoise::threads_for(10_000_000), 270_336);
    }

    #[test]
    fn sincos_model_is_close() {
        for i in 0..10_000 {
            let v = i as f32 * std::f32::consts::TAU / 10_000.0;
            let (s, c) = gpu_sincos(v);
            assert!((s as f64 - (v as f64).sin()).abs() < 1e-6, "{v}");
            assert!((c as f64 - (v as f64).cos()).abs() < 1e-6, "{v}");
        }
    }

    #[test]
    fn logf_is_accurate() {
        for i in 1..100_000u32 {
            let u = i as f32 / 100_000.0;
            let want = (u as f64).ln();
            let ulp = (want as f32).abs() * f32::EPSILON;
            assert!(((logf(u) as f64) - want).abs() <= ulp as f64, "{u}");
        }
    }

    #[test]
    fn mul_rz_truncates() {
        let a = 1.0f32 + f32::EPSILON;
        let p = mul_rz(a, a); // exact 1 + 2eps + eps^2 → truncates to 1 + 2eps
        assert_eq!(p, 1.0 + 2.0 * f32::EPSILON);
        assert_eq!(mul_rz(-a, a), -(1.0 + 2.0 * f32::EPSILON));
    }
}
