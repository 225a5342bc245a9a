//! What a worker used while generating: its peak resident memory, and the GPU memory NVIDIA's
//! driver reports for it. NVML (`libnvidia-ml`) is opened at run time, so a host without the
//! NVIDIA libraries runs the same binary and simply records no GPU figure.

use serde::{Deserialize, Serialize};

use crate::generation::Extra;

/// `resources` in `metadata.json`: memory the worker used, as measured after the case.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ResourcesRecord {
    /// Peak resident set of the worker process so far (it runs the cases in order, so a
    /// later case's figure includes what earlier ones and the model sessions needed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_rss_bytes: Option<u64>,
    /// GPU memory the driver attributes to the worker after the case. ONNX Runtime's CUDA
    /// arena keeps what it allocated, so this is the high-water mark of the arena.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_memory_bytes: Option<u64>,
    /// Why there is no GPU figure on a CUDA run (no NVML, process not listed, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_memory_note: Option<String>,
    /// Fields this monitor does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

/// Measures a worker's memory; NVML is opened once, on the first CUDA case.
#[derive(Default)]
pub struct Meter {
    nvml: Option<Result<nvml_wrapper::Nvml, String>>,
}

impl Meter {
    /// The memory this process has used, with GPU memory when `gpu` (a CUDA run).
    pub fn sample(&mut self, gpu: bool) -> ResourcesRecord {
        let mut r = ResourcesRecord {
            peak_rss_bytes: peak_rss_bytes(),
            ..Default::default()
        };
        if gpu {
            match self.gpu_memory() {
                Ok(bytes) => r.gpu_memory_bytes = Some(bytes),
                Err(note) => r.gpu_memory_note = Some(note),
            }
        }
        r
    }

    fn gpu_memory(&mut self) -> Result<u64, String> {
        let nvml = self
            .nvml
            .get_or_insert_with(|| {
                nvml_wrapper::Nvml::init().map_err(|e| format!("NVML not available: {e}"))
            })
            .as_ref()
            .map_err(Clone::clone)?;
        let pid = std::process::id();
        let count = nvml
            .device_count()
            .map_err(|e| format!("NVML device count: {e}"))?;
        // CUDA ordinals need not be NVML indices (CUDA_VISIBLE_DEVICES): look on every GPU.
        let mut total = None;
        for index in 0..count {
            let Ok(device) = nvml.device_by_index(index) else {
                continue;
            };
            let Ok(procs) = device.running_compute_processes() else {
                continue;
            };
            for p in procs.iter().filter(|p| p.pid == pid) {
                if let nvml_wrapper::enums::device::UsedGpuMemory::Used(b) = p.used_gpu_memory {
                    *total.get_or_insert(0) += b;
                }
            }
        }
        total.ok_or_else(|| format!("NVML lists no GPU memory for process {pid}"))
    }
}

/// "812 MiB", or "3.2 GiB" from 1 GiB up: a memory figure for people.
pub fn human_bytes(bytes: u64) -> String {
    let mib = bytes as f64 / (1u64 << 20) as f64;
    if mib >= 1024.0 {
        format!("{:.1} GiB", mib / 1024.0)
    } else {
        format!("{mib:.0} MiB")
    }
}

/// Peak resident set size of this process, in bytes.
#[cfg(unix)]
pub fn peak_rss_bytes() -> Option<u64> {
    // SAFETY: getrusage only writes the struct it is given.
    let usage = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        (libc::getrusage(libc::RUSAGE_SELF, &mut u) == 0).then_some(u)
    }?;
    let max = u64::try_from(usage.ru_maxrss).ok()?;
    // Linux reports kilobytes, macOS bytes.
    Some(if cfg!(target_os = "macos") {
        max
    } else {
        max * 1024
    })
}

/// Peak resident set size of this process (not measured on this platform).
#[cfg(not(unix))]
pub fn peak_rss_bytes() -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn peak_rss_grows_with_what_the_process_touches() {
        let before = peak_rss_bytes().unwrap();
        // 64 MiB written, so the pages are resident.
        let v = vec![1u8; 64 << 20];
        std::hint::black_box(&v);
        let after = peak_rss_bytes().unwrap();
        assert!(after >= before, "{after} < {before}");
        assert!(after >= 64 << 20, "peak {after} below what was touched");
    }

    #[test]
    fn memory_reads_in_mib_then_gib() {
        assert_eq!(human_bytes(812 << 20), "812 MiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
    }

    #[test]
    fn a_cpu_run_records_no_gpu_figure() {
        let r = Meter::default().sample(false);
        assert_eq!((r.gpu_memory_bytes, r.gpu_memory_note), (None, None));
    }

    #[test]
    fn a_host_without_nvml_says_why_there_is_no_gpu_figure() {
        // This test host has no NVIDIA driver; on one that has, the figure must be present.
        let r = Meter::default().sample(true);
        match (r.gpu_memory_bytes, &r.gpu_memory_note) {
            (Some(b), None) => assert!(b > 0),
            (None, Some(note)) => assert!(note.contains("NVML"), "{note}"),
            other => panic!("neither a figure nor a reason: {other:?}"),
        }
    }
}
