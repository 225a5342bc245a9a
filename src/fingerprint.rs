//! The environment a result was produced in, so a human can see *why* outputs moved: a new
//! driver, another GPU, an ONNX Runtime upgrade, a CPU with other vector units.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Facts about the host. Every field is best-effort: a missing fact is `None`, never an error.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Environment {
    /// `PRETTY_NAME` from /etc/os-release.
    pub os: Option<String>,
    /// Kernel release.
    pub kernel: Option<String>,
    /// CPU model name.
    pub cpu: Option<String>,
    /// Vector extensions that change ONNX Runtime's CPU kernels (and so CPU results).
    pub cpu_features: Vec<String>,
    /// GPU name(s) from nvidia-smi, comma-separated.
    pub gpu_name: Option<String>,
    /// NVIDIA driver version.
    pub driver: Option<String>,
    /// Highest CUDA version the driver supports (nvidia-smi's header).
    pub cuda: Option<String>,
    /// cuDNN version, when its library is found next to ONNX Runtime or on LD_LIBRARY_PATH.
    pub cudnn: Option<String>,
    /// Host name.
    pub hostname: Option<String>,
    /// This binary's version.
    pub monitor_version: String,
}

impl Environment {
    /// What makes an optimized ONNX Runtime graph this host's own: the CPU and its vector units
    /// (the CPU provider's layout transforms are chosen for them), the GPU, driver and cuDNN.
    pub fn session_cache_host(&self) -> String {
        serde_json::json!([
            self.cpu,
            self.cpu_features,
            self.gpu_name,
            self.driver,
            self.cudnn
        ])
        .to_string()
    }
}

/// Collects the fingerprint. nvidia-smi is given two seconds: a wedged driver must not hang a check.
pub fn collect() -> Environment {
    let (gpu_name, driver, cuda) = nvidia_smi();
    Environment {
        os: os_release(),
        kernel: read_trim("/proc/sys/kernel/osrelease"),
        cpu: cpu_model(),
        cpu_features: cpu_features(),
        gpu_name,
        driver,
        cuda,
        cudnn: cudnn_version(),
        hostname: hostname(),
        monitor_version: env!("CARGO_PKG_VERSION").to_string(),
    }
}

/// This host's name, if the kernel reports one.
pub fn hostname() -> Option<String> {
    #[cfg(target_os = "linux")]
    return read_trim("/proc/sys/kernel/hostname");
    #[cfg(all(unix, not(target_os = "linux")))]
    {
        let mut buf = [0u8; 256];
        // SAFETY: gethostname writes at most `buf.len()` bytes into a buffer we own.
        if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
            return None;
        }
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        let name = String::from_utf8_lossy(&buf[..end]).trim().to_string();
        (!name.is_empty()).then_some(name)
    }
    #[cfg(windows)]
    std::env::var("COMPUTERNAME")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

fn read_trim(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

fn os_release() -> Option<String> {
    // No /etc/os-release there: at least say which system it was ("windows", "macos").
    if cfg!(any(windows, target_vendor = "apple")) {
        return Some(std::env::consts::OS.to_string());
    }
    let text = std::fs::read_to_string("/etc/os-release").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
}

fn cpu_model() -> Option<String> {
    let text = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    text.lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
}

fn cpu_features() -> Vec<String> {
    #[cfg(target_arch = "x86_64")]
    {
        let mut f = Vec::new();
        if std::arch::is_x86_feature_detected!("avx2") {
            f.push("avx2".to_string());
        }
        if std::arch::is_x86_feature_detected!("fma") {
            f.push("fma".to_string());
        }
        if std::arch::is_x86_feature_detected!("avx512f") {
            f.push("avx512f".to_string());
        }
        f
    }
    #[cfg(not(target_arch = "x86_64"))]
    Vec::new()
}

/// (gpu names, driver, cuda) from one nvidia-smi call, each `None` without a GPU.
fn nvidia_smi() -> (Option<String>, Option<String>, Option<String>) {
    let Some(csv) = run_with_timeout(
        "nvidia-smi",
        &["--query-gpu=name,driver_version", "--format=csv,noheader"],
        Duration::from_secs(2),
    ) else {
        return (None, None, None);
    };
    let rows: Vec<(String, String)> = csv
        .lines()
        .filter_map(|l| l.split_once(','))
        .map(|(n, d)| (n.trim().to_string(), d.trim().to_string()))
        .collect();
    if rows.is_empty() {
        return (None, None, None);
    }
    let names = rows
        .iter()
        .map(|(n, _)| n.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let driver = rows[0].1.clone();
    // The plain output's header carries "CUDA Version: 13.0".
    let cuda = run_with_timeout("nvidia-smi", &[], Duration::from_secs(2)).and_then(|out| {
        out.split("CUDA Version:")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .map(str::to_string)
    });
    (Some(names), Some(driver), cuda)
}

fn run_with_timeout(program: &str, args: &[&str], limit: Duration) -> Option<String> {
    let mut child = Command::new(program)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => break,
            Ok(Some(_)) => return None,
            Ok(None) if start.elapsed() > limit => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(_) => return None,
        }
    }
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take()?, &mut out).ok()?;
    Some(out)
}

/// cuDNN's version from a `libcudnn.so.9.x.y` file name on LD_LIBRARY_PATH.
fn cudnn_version() -> Option<String> {
    let paths = std::env::var("LD_LIBRARY_PATH").ok()?;
    for dir in paths.split(':').filter(|d| !d.is_empty()) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(v) = name.strip_prefix("libcudnn.so.") {
                if v.matches('.').count() >= 1 {
                    return Some(v.to_string());
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collects_without_a_gpu() {
        let env = collect();
        assert_eq!(env.monitor_version, env!("CARGO_PKG_VERSION"));
        // Every Linux host has these; the GPU fields may be absent.
        assert!(env.kernel.is_some());
        assert!(env.cpu.is_some());
    }

    #[test]
    fn missing_program_is_none_not_a_hang() {
        assert_eq!(
            run_with_timeout(
                "definitely-not-a-program-xyz",
                &[],
                Duration::from_millis(100)
            ),
            None
        );
    }
}
