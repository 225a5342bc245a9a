//! Noise read from a user-supplied `.npy` file (float16/32/64, C order, little-endian).
//!
//! The file holds exactly one draw: the initial latents. A second draw (per-step noise for
//! ancestral samplers) is an error rather than silently reusing or inventing values.

use std::path::{Path, PathBuf};

use ndarray::ArrayD;

use super::{into_array, round_f32_to_f16, round_f64_to_f16, NoiseDtype, NoiseError, NoiseSource};
use crate::sd::npy::{read_npy, NpyArray};

/// Noise from a `.npy` file, read when the source is built.
#[derive(Debug)]
pub struct FileNoise {
    path: PathBuf,
    array: NpyArray,
    drawn: bool,
}

impl FileNoise {
    /// Reads and validates the file (errors name the file).
    pub fn open(path: &Path) -> Result<Self, NoiseError> {
        let array = read_npy(path).map_err(|e| NoiseError::Invalid(format!("noise file: {e}")))?;
        Ok(FileNoise {
            path: path.to_path_buf(),
            array,
            drawn: false,
        })
    }
}

impl NoiseSource for FileNoise {
    fn name(&self) -> &'static str {
        "file"
    }

    fn randn(&mut self, shape: &[usize], dtype: NoiseDtype) -> Result<ArrayD<f32>, NoiseError> {
        if self.drawn {
            return Err(NoiseError::Invalid(format!(
                "noise file {}: holds only the initial latents, but a second draw of shape {shape:?} was requested \
                 (ancestral samplers need per-step noise; use a torch noise source or a non-ancestral sampler)",
                self.path.display()
            )));
        }
        if self.array.shape != shape {
            return Err(NoiseError::Invalid(format!(
                "noise file {}: has shape {:?} ({}), but the pipeline needs shape {shape:?}",
                self.path.display(),
                self.array.shape,
                self.array.dtype.descr()
            )));
        }
        let values = match (dtype, &self.array.data_f64) {
            (NoiseDtype::F32, _) => self.array.data.clone(),
            // float64 → float16 in one rounding, as numpy's astype would.
            (NoiseDtype::F16, Some(f64s)) => f64s.iter().map(|&v| round_f64_to_f16(v)).collect(),
            (NoiseDtype::F16, None) => self
                .array
                .data
                .iter()
                .map(|&v| round_f32_to_f16(v))
                .collect(),
        };
        self.drawn = true;
        into_array(shape, values)
    }
}
