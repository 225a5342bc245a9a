//! How much memory one SD1.5 generation needs, estimated before running it, so that a size the
//! host cannot hold is refused with numbers instead of aborting the process on a failed
//! allocation (or killing the GPU service next to it).
//!
//! The estimate is deliberately simple and errs high: the model's weights, plus the largest
//! activations of the UNet's first attention level, where the self-attention score matrix grows
//! with the *square* of the latent pixel count: `batch × heads × N² × bytes`, held twice (scores
//! and softmax). SD1.5 exports run attention as plain MatMul/Softmax (no fused kernel), with 8
//! heads; a smaller model (the bundled tiny one) is over-estimated, which only matters for sizes
//! no real SD1.5 case uses. Convolution activations (320 channels at full latent size, a few
//! dozen live at once) are added on top.

/// SD1.5's attention heads per layer.
const HEADS: u64 = 8;
/// SD1.5's channels at the first UNet level.
const CHANNELS: u64 = 320;
/// Live full-resolution activation maps at once (skip connections of the first level and
/// temporaries), a generous count.
const LIVE_MAPS: u64 = 24;

/// What a generation is estimated to need, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryEstimate {
    /// Model files as loaded (weights dominate).
    pub weights: u64,
    /// The attention score buffers of the first UNet level.
    pub attention: u64,
    /// Convolution activations.
    pub activations: u64,
}

impl MemoryEstimate {
    /// Everything together.
    pub fn total(&self) -> u64 {
        self.weights
            .saturating_add(self.attention)
            .saturating_add(self.activations)
    }
}

/// Estimates a `width × height` generation; `cfg` when guidance > 1 (the UNet runs a batch of
/// two), `element_bytes` 4 for float32 models and 2 for float16 ones, `weights` the size of the
/// model files.
pub fn estimate(
    width: u32,
    height: u32,
    cfg: bool,
    element_bytes: u64,
    weights: u64,
) -> MemoryEstimate {
    let n = u64::from(width / 8) * u64::from(height / 8);
    let batch: u64 = if cfg { 2 } else { 1 };
    let attention = batch
        .saturating_mul(HEADS)
        .saturating_mul(n.saturating_mul(n))
        .saturating_mul(element_bytes)
        .saturating_mul(2);
    let activations = batch
        .saturating_mul(CHANNELS)
        .saturating_mul(n)
        .saturating_mul(element_bytes)
        .saturating_mul(LIVE_MAPS);
    MemoryEstimate {
        weights,
        attention,
        activations,
    }
}

/// Bytes as GiB with one decimal, for messages.
pub fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attention_grows_with_the_square_of_the_pixels() {
        let small = estimate(512, 512, true, 4, 0);
        // 2 × 8 heads × 4096² × 4 bytes × 2 = 2 GiB at 512² with CFG.
        assert_eq!(small.attention, 2 << 30);
        let big = estimate(1024, 1024, true, 4, 0);
        assert_eq!(big.attention, small.attention * 16);
        assert_eq!(
            estimate(512, 512, false, 2, 0).attention,
            small.attention / 4
        );
        // Absurd sizes saturate instead of wrapping.
        assert_eq!(estimate(u32::MAX, u32::MAX, true, 4, 1).total(), u64::MAX);
    }
}
