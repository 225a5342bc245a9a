//! `monitor noise`: the first draw of a freshly seeded noise source, written as `.npy`, to check a
//! source against a reference generator (or to hand the exact noise to another tool).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::fsutil::atomic_write;
use crate::sd::noise::{self, NoiseDtype, NoiseKind};
use crate::sd::npy;

/// Flags of `monitor noise` (names are stable: scripts call them).
#[derive(Debug, Args)]
pub struct NoiseArgs {
    /// Noise source: numpy, torch-cpu, torch-cuda, file.
    #[arg(long)]
    source: NoiseKind,
    /// Seed of the source (ignored by `file`).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Comma-separated dimensions, e.g. 1,4,64,64.
    #[arg(long)]
    shape: String,
    /// Largest number of values to draw (a guard against a typo allocating gigabytes).
    #[arg(long, default_value_t = crate::limits::DEFAULT_MAX_NOISE_ELEMENTS, value_name = "N")]
    max_elements: u64,
    /// Precision the noise is rounded to, as the reference rounds for a model of that dtype.
    #[arg(long, default_value = "f32", value_name = "f32|f16")]
    dtype: String,
    /// The .npy file for `--source file`.
    #[arg(long, value_name = "PATH")]
    file: Option<PathBuf>,
    /// Output .npy (replaced atomically); float16 for `--dtype f16`, else float32.
    #[arg(long, value_name = "FILE.npy")]
    out: PathBuf,
}

/// Parses `a,b,...` into dimensions; every dimension must be a positive integer.
fn parse_shape(text: &str) -> Result<Vec<usize>> {
    let dims: Option<Vec<usize>> = text
        .split(',')
        .map(|d| d.trim().parse::<usize>().ok().filter(|&n| n > 0))
        .collect();
    match dims {
        Some(d) if !d.is_empty() => Ok(d),
        _ => bail!("--shape {text:?}: expected comma-separated positive integers, e.g. 1,4,64,64"),
    }
}

/// Runs the command.
pub fn run(a: NoiseArgs) -> Result<u8> {
    let shape = parse_shape(&a.shape)?;
    let elements = shape
        .iter()
        .try_fold(1u64, |n, &d| n.checked_mul(d as u64))
        .unwrap_or(u64::MAX);
    if elements > a.max_elements {
        bail!(
            "--shape {}: {elements} values is more than --max-elements {} (raise it to draw that many)",
            a.shape,
            a.max_elements
        );
    }
    let dtype = match a.dtype.as_str() {
        "f32" => NoiseDtype::F32,
        "f16" => NoiseDtype::F16,
        other => bail!("--dtype {other:?}: expected f32 or f16"),
    };
    let mut source = noise::build(a.source, a.seed, a.file.as_deref())?;
    let values = source
        .randn(&shape, dtype)
        .with_context(|| format!("drawing {shape:?} from {}", a.source))?;
    let data: Vec<f32> = values.iter().copied().collect();
    let mut bytes = Vec::new();
    match dtype {
        NoiseDtype::F32 => npy::write_npy_f32(&mut bytes, &shape, &data),
        NoiseDtype::F16 => npy::write_npy_f16(&mut bytes, &shape, &data),
    }
    .context("encoding .npy")?;
    atomic_write(&a.out, &bytes).with_context(|| format!("writing {}", a.out.display()))?;
    println!(
        "wrote {} ({} {:?}, sha256 of f32 values {})",
        a.out.display(),
        a.source,
        shape,
        noise::sha256_f32(data.iter())
    );
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::parse_shape;

    #[test]
    fn shapes_parse_or_name_the_value() {
        assert_eq!(parse_shape("1,4,8,8").unwrap(), [1, 4, 8, 8]);
        assert_eq!(parse_shape("17").unwrap(), [17]);
        for bad in ["", "1,,4", "1,x", "0,4", "-1", "1.5"] {
            let message = parse_shape(bad).unwrap_err().to_string();
            assert!(message.contains(&format!("{bad:?}")), "{message}");
        }
    }
}
