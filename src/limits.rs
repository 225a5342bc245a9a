//! Bounds on what a case may ask for, checked before anything runs: a size limit in the config
//! (`limits:`), the UNet's own size rule, and an estimate of the memory the generation needs
//! against what the host has. A case that fails them is an `error` for that case alone; without
//! them one absurd case aborted the worker (a failed allocation) and took every case with it.
//!
//! Default limits: 2048 pixels per side and 1,048,576 pixels (1024×1024) in all. SD1.5 is trained
//! at 512×512 and used up to about 768 per side; at 1024×1024 its first attention level alone
//! holds about 34 GiB of float32 scores with guidance (see `sd::memory`), which only the largest
//! GPUs have, and every doubling of the side multiplies that by 16. Raise them in the config for a
//! host that can.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::sd::memory::{self, MemoryEstimate};
use crate::sd::onnx_graph::{self, UnetGeometry};
use crate::sd::runtime::ExecutionProvider;

/// `limits:` — the largest case a config may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest width in pixels (default 2048).
    pub max_width: u32,
    /// Largest height in pixels (default 2048).
    pub max_height: u32,
    /// Largest width × height (default 1,048,576 = 1024×1024).
    pub max_pixels: u64,
    /// Memory a generation may use, in GiB; null = what the host has available (CPU: available
    /// RAM within the cgroup limit; CUDA: the GPU's free memory per nvidia-smi).
    pub memory_gib: Option<f64>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_width: 2048,
            max_height: 2048,
            max_pixels: 1 << 20,
            memory_gib: None,
        }
    }
}

/// Largest `monitor noise` draw by default: 64 MiB of float32.
pub const DEFAULT_MAX_NOISE_ELEMENTS: u64 = 1 << 24;

impl Limits {
    /// The size rule alone (no model or host needed): `(field, message)` for the first
    /// violation, naming the config key to raise.
    pub fn check_size(&self, width: u32, height: u32) -> Result<(), (&'static str, String)> {
        self.check_size_named(
            width,
            height,
            ["limits.max_width", "limits.max_height", "limits.max_pixels"],
        )
    }

    /// [`Limits::check_size`] naming the limits `names` (width, height, pixels), e.g. flags.
    pub fn check_size_named(
        &self,
        width: u32,
        height: u32,
        names: [&str; 3],
    ) -> Result<(), (&'static str, String)> {
        let raise = "raise it if this host can run it";
        if width > self.max_width {
            return Err((
                "width",
                format!(
                    "width {width} is above {} {} ({raise})",
                    names[0], self.max_width
                ),
            ));
        }
        if height > self.max_height {
            return Err((
                "height",
                format!(
                    "height {height} is above {} {} ({raise})",
                    names[1], self.max_height
                ),
            ));
        }
        let pixels = u64::from(width) * u64::from(height);
        if pixels > self.max_pixels {
            return Err((
                "width",
                format!(
                    "{width}×{height} is {pixels} pixels, above {} {} ({raise})",
                    names[2], self.max_pixels
                ),
            ));
        }
        Ok(())
    }
}

/// What the runner knows about the model and host, gathered once per worker.
#[derive(Debug, Clone)]
pub struct Capacity {
    /// The UNet's size rule; `None` when its graph could not be read (then ONNX Runtime decides).
    pub geometry: Option<UnetGeometry>,
    /// Bytes of the model files the sessions load.
    pub weights: u64,
    /// Bytes per tensor element of the model's I/O (4, or 2 for fp16 exports).
    pub element_bytes: u64,
    /// Memory available for a generation, and where that number came from.
    pub available: Option<(u64, String)>,
}

impl Capacity {
    /// Gathers it for a model folder and execution provider under `limits`.
    pub fn probe(
        model: &Path,
        ep: ExecutionProvider,
        element_bytes: u64,
        limits: &Limits,
    ) -> Capacity {
        let geometry = onnx_graph::scan_unet(&model.join("unet/model.onnx")).ok();
        let weights = ["text_encoder", "unet", "vae_decoder"]
            .iter()
            .map(|d| folder_bytes(&model.join(d)))
            .sum();
        let available = match limits.memory_gib {
            Some(g) => Some((
                (g * (1u64 << 30) as f64) as u64,
                "limits.memory_gib".to_string(),
            )),
            None => available_memory(ep),
        };
        Capacity {
            geometry,
            weights,
            element_bytes,
            available,
        }
    }

    /// Checks one generation of `width × height` (`cfg` when guidance > 1) against the UNet's
    /// size rule and the memory available; the message says what to change.
    pub fn check(&self, width: u32, height: u32, cfg: bool) -> Result<MemoryEstimate, String> {
        if let Some(g) = &self.geometry {
            g.check_size(width, height)?;
        }
        let need = memory::estimate(width, height, cfg, self.element_bytes, self.weights);
        if let Some((have, source)) = &self.available {
            if need.total() > *have {
                return Err(format!(
                    "{width}×{height} needs about {} of memory ({} weights + {} attention + {} activations, estimated), more than the {} available ({source}); use a smaller size or set limits.memory_gib",
                    memory::gib(need.total()),
                    memory::gib(need.weights),
                    memory::gib(need.attention),
                    memory::gib(need.activations),
                    memory::gib(*have),
                ));
            }
        }
        Ok(need)
    }
}

fn folder_bytes(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

/// Memory a generation can use on this host for `ep`, with where the number came from.
pub fn available_memory(ep: ExecutionProvider) -> Option<(u64, String)> {
    match ep {
        ExecutionProvider::Cpu => {
            let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
            let avail_kib: u64 = meminfo
                .lines()
                .find_map(|l| l.strip_prefix("MemAvailable:"))?
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .ok()?;
            let mut avail = avail_kib * 1024;
            let mut source = "MemAvailable in /proc/meminfo".to_string();
            if let Some(left) = cgroup_memory_left() {
                if left < avail {
                    avail = left;
                    source = "the cgroup's memory.max".to_string();
                }
            }
            Some((avail, source))
        }
        ExecutionProvider::Cuda => {
            let out = std::process::Command::new("nvidia-smi")
                .args(["--query-gpu=memory.free", "--format=csv,noheader,nounits"])
                .output()
                .ok()?;
            let mib: u64 = String::from_utf8_lossy(&out.stdout)
                .lines()
                .next()?
                .trim()
                .parse()
                .ok()?;
            Some((mib << 20, "free GPU memory per nvidia-smi".to_string()))
        }
    }
}

/// cgroup v2 `memory.max - memory.current` of this process's cgroup, when limited.
fn cgroup_memory_left() -> Option<u64> {
    let cg = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let rel = cg.lines().find_map(|l| l.strip_prefix("0::"))?;
    let dir = Path::new("/sys/fs/cgroup").join(rel.trim_start_matches('/'));
    let max: u64 = std::fs::read_to_string(dir.join("memory.max"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let current: u64 = std::fs::read_to_string(dir.join("memory.current"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(max.saturating_sub(current))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_rule_names_the_limit() {
        let l = Limits::default();
        l.check_size(512, 768).unwrap();
        l.check_size(1024, 1024).unwrap();
        assert!(l
            .check_size(4096, 64)
            .unwrap_err()
            .1
            .contains("limits.max_width 2048"));
        assert!(l
            .check_size(64, 4096)
            .unwrap_err()
            .1
            .contains("limits.max_height"));
        assert!(l
            .check_size(2048, 1024)
            .unwrap_err()
            .1
            .contains("limits.max_pixels"));
    }

    #[test]
    fn memory_check_refuses_with_numbers() {
        let cap = Capacity {
            geometry: None,
            weights: 1 << 30,
            element_bytes: 4,
            available: Some((8 << 30, "test".into())),
        };
        cap.check(512, 512, true).unwrap();
        let e = cap.check(1024, 1024, true).unwrap_err();
        assert!(
            e.contains("GiB") && e.contains("8.0 GiB available (test)"),
            "{e}"
        );
    }

    #[test]
    fn this_host_reports_some_memory() {
        let (bytes, source) = available_memory(ExecutionProvider::Cpu).unwrap();
        assert!(bytes > 0, "{source}");
    }
}
