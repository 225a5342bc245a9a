//! ONNX Runtime: finding the shared library, choosing the execution provider, determinism options.
//!
//! The library is loaded at run time (`ort`'s `load-dynamic`) from the PyPI wheel, because GPU hosts
//! rarely allow build-time binary downloads and the wheel is what operators already install.

use std::path::{Path, PathBuf};
use std::process::Command;

use ort::environment::Environment;
use ort::ep;
use ort::session::Session;
use serde::{Deserialize, Serialize};

/// The release the install hint names; any release ort's API level accepts will load.
pub const RECOMMENDED_ORT: &str = "1.31.1";

/// Where the library path came from, recorded so a surprising pick can be explained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LibrarySource {
    /// `--ort-lib` or the config file.
    Explicit,
    /// The `ORT_DYLIB_PATH` environment variable.
    EnvVar,
    /// An installed `onnxruntime` Python package.
    PythonPackage,
}

/// Errors from loading ONNX Runtime or creating sessions.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// No library anywhere we looked.
    #[error("ONNX Runtime library not found (looked in {looked}); install it with `pip install onnxruntime=={RECOMMENDED_ORT}` (or `onnxruntime-gpu=={RECOMMENDED_ORT}` on GPU hosts), or pass --ort-lib / set ORT_DYLIB_PATH")]
    NotFound {
        /// Human-readable list of places searched.
        looked: String,
    },
    /// A path was given but there is no file.
    #[error("ONNX Runtime library {path} (from {source_name}) does not exist; install it with `pip install onnxruntime=={RECOMMENDED_ORT}`")]
    Missing {
        /// The path that was given.
        path: PathBuf,
        /// Which setting named it.
        source_name: &'static str,
    },
    /// The library is there but is not usable (wrong file, too old).
    #[error("cannot use ONNX Runtime at {path}: {reason}; install a current one with `pip install onnxruntime=={RECOMMENDED_ORT}` (or `onnxruntime-gpu=={RECOMMENDED_ORT}` on GPU hosts)")]
    Unusable {
        /// The library file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// CUDA was asked for but the CPU-only package is installed.
    #[error("--ep cuda needs the CUDA provider, but {dir} has no {file}; install `onnxruntime-gpu=={RECOMMENDED_ORT}` (CUDA 13, cuDNN 9) and point --ort-lib at its capi/ folder")]
    NoCudaProvider {
        /// The folder holding the loaded library.
        dir: PathBuf,
        /// The provider library's file name on this system.
        file: &'static str,
    },
    /// Environment creation failed.
    #[error("creating the ONNX Runtime environment failed: {0}")]
    Environment(String),
    /// Building a session failed (bad model, EP registration failure, ...).
    #[error("loading {path} with {ep}: {reason}")]
    Session {
        /// The model file.
        path: PathBuf,
        /// Execution provider name.
        ep: &'static str,
        /// ORT's message.
        reason: String,
    },
}

/// Which execution provider runs the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ExecutionProvider {
    /// ONNX Runtime's default CPU provider.
    #[default]
    Cpu,
    /// NVIDIA CUDA; registration failure is an error, never a silent CPU fallback.
    Cuda,
}

impl std::str::FromStr for ExecutionProvider {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda),
            other => Err(format!(
                "unknown execution provider '{other}' (expected cpu or cuda)"
            )),
        }
    }
}

impl ExecutionProvider {
    /// Short name used in CLI, config and metadata.
    pub fn name(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Cuda => "cuda",
        }
    }
}

/// cuDNN convolution algorithm search; a drift source, so it is always recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ConvAlgoSearch {
    /// Benchmarks every algorithm on first run; measured bitwise-stable on H100 and equal to heuristic.
    Exhaustive,
    /// cuDNN's heuristic pick: stable and cheap to start, the default here.
    #[default]
    Heuristic,
    /// Implicit-precomp GEMM only; measured to give different bits and run 4× slower.
    Default,
}

impl std::str::FromStr for ConvAlgoSearch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "exhaustive" => Ok(Self::Exhaustive),
            "heuristic" => Ok(Self::Heuristic),
            "default" => Ok(Self::Default),
            other => Err(format!("unknown conv algorithm search '{other}' (expected exhaustive, heuristic or default)")),
        }
    }
}

/// ONNX Runtime's graph optimization level. Fusions replace operator sequences with kernels that
/// round differently, so the level changes output bits even on the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GraphOptimization {
    /// Every optimization (ONNX Runtime's default).
    #[default]
    All,
    /// Basic and extended fusions, no layout optimizations.
    Extended,
    /// Constant folding and redundant-node elimination only.
    Basic,
    /// None: the graph runs as exported.
    Disable,
}

impl GraphOptimization {
    /// The config/CLI name.
    pub fn name(self) -> &'static str {
        match self {
            Self::All => "all",
            Self::Extended => "extended",
            Self::Basic => "basic",
            Self::Disable => "disable",
        }
    }

    fn is_all(&self) -> bool {
        *self == Self::All
    }
}

impl std::fmt::Display for GraphOptimization {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for GraphOptimization {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "all" => Ok(Self::All),
            "extended" => Ok(Self::Extended),
            "basic" => Ok(Self::Basic),
            "disable" => Ok(Self::Disable),
            other => Err(format!(
                "unknown graph optimization '{other}' (expected all, extended, basic or disable)"
            )),
        }
    }
}

/// Every runtime setting that can change output bits; all of it goes into result metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuntimeSettings {
    /// Execution provider.
    pub execution_provider: ExecutionProvider,
    /// CUDA device ordinal.
    pub device_id: i32,
    /// cuDNN conv algorithm search (CUDA only).
    pub conv_algo_search: ConvAlgoSearch,
    /// TF32 tensor-core math (CUDA only). Off by default: it changes results across GPU generations.
    pub use_tf32: bool,
    /// NHWC convolution kernels (CUDA only); these ignore `use_tf32`, hence NVIDIA_TF32_OVERRIDE below.
    pub prefer_nhwc: bool,
    /// ORT's `use_deterministic_compute` session option.
    pub deterministic_compute: bool,
    /// Intra-op threads; `None` lets ORT pick (one per physical core).
    pub intra_op_threads: Option<usize>,
    /// Graph optimization level; recorded only when not `all`, so older metadata compares equal.
    #[serde(default, skip_serializing_if = "GraphOptimization::is_all")]
    pub graph_optimization: GraphOptimization,
}

impl Default for RuntimeSettings {
    fn default() -> Self {
        Self {
            execution_provider: ExecutionProvider::Cpu,
            device_id: 0,
            conv_algo_search: ConvAlgoSearch::Heuristic,
            use_tf32: false,
            prefer_nhwc: false,
            deterministic_compute: true,
            intra_op_threads: None,
            graph_optimization: GraphOptimization::All,
        }
    }
}

/// What was loaded, for metadata and `monitor env`.
#[derive(Debug, Clone, Serialize)]
pub struct RuntimeInfo {
    /// The shared library file.
    pub library: PathBuf,
    /// How the library was found.
    pub library_source: LibrarySource,
    /// ORT's version string, e.g. "1.31.1".
    pub version: String,
    /// Value of NVIDIA_TF32_OVERRIDE in this process, if any (set by us when TF32 is off on CUDA).
    pub nvidia_tf32_override: Option<String>,
}

/// A loaded ONNX Runtime with one environment (ort allows one per process) and fixed settings.
pub struct Runtime {
    env: Environment,
    info: RuntimeInfo,
    settings: RuntimeSettings,
    cache: Option<super::session_cache::SessionCache>,
    cache_on: std::sync::atomic::AtomicBool,
}

impl Runtime {
    /// Finds and loads the library, checks it can serve `settings`, and creates the environment.
    pub fn init(
        explicit_library: Option<&Path>,
        settings: RuntimeSettings,
    ) -> Result<Self, RuntimeError> {
        let (library, library_source) = locate_library(explicit_library)?;
        if settings.execution_provider == ExecutionProvider::Cuda {
            let dir = library.parent().unwrap_or(Path::new(".")).to_path_buf();
            let file = Platform::CURRENT.cuda_provider();
            if !dir.join(file).exists() {
                return Err(RuntimeError::NoCudaProvider { dir, file });
            }
            if !settings.use_tf32 && std::env::var_os("NVIDIA_TF32_OVERRIDE").is_none() {
                // NHWC kernels ignore use_tf32; the driver-level override is the only switch that
                // covers them. It must be set before CUDA initialises, i.e. before any session.
                std::env::set_var("NVIDIA_TF32_OVERRIDE", "0");
            }
        }
        let version = library_version(&library).map_err(|reason| RuntimeError::Unusable {
            path: library.clone(),
            reason,
        })?;
        let builder = ort::init_from(&library).map_err(|e| RuntimeError::Unusable {
            path: library.clone(),
            reason: load_error_reason(&e),
        })?;
        let env = builder
            .with_name("monitor")
            .with_telemetry(false)
            .with_logger(std::sync::Arc::new(log_ort_message))
            .build()
            .map_err(|e| RuntimeError::Environment(e.to_string()))?;
        let info = RuntimeInfo {
            library,
            library_source,
            version,
            nvidia_tf32_override: std::env::var("NVIDIA_TF32_OVERRIDE").ok(),
        };
        Ok(Self {
            env,
            info,
            settings,
            cache: None,
            cache_on: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Creates sessions through ONNX Runtime's optimized-model cache (see
    /// [`super::session_cache`]); the caller must [`SessionCache::settle`] it once it has the
    /// model files' hashes.
    ///
    /// [`SessionCache::settle`]: super::session_cache::SessionCache::settle
    pub fn with_session_cache(mut self, cache: super::session_cache::SessionCache) -> Self {
        self.cache = Some(cache);
        self.cache_on = std::sync::atomic::AtomicBool::new(true);
        self
    }

    /// The session cache, when one is set.
    pub fn session_cache(&self) -> Option<&super::session_cache::SessionCache> {
        self.cache.as_ref()
    }

    /// Turns the session cache off for the sessions created from now on (a rebuild after a stale
    /// entry must come from the model itself).
    pub fn disable_session_cache(&self) {
        self.cache_on
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }

    /// What was loaded and from where.
    pub fn info(&self) -> &RuntimeInfo {
        &self.info
    }

    /// The settings every session of this runtime uses.
    pub fn settings(&self) -> &RuntimeSettings {
        &self.settings
    }

    /// Creates a session from a model file. External weights resolve relative to the file, so
    /// models are always loaded from their path, never from memory.
    pub fn session(&self, model_file: &Path) -> Result<Session, RuntimeError> {
        let cache = self
            .cache
            .as_ref()
            .filter(|_| self.cache_on.load(std::sync::atomic::Ordering::SeqCst));
        let Some(cache) = cache else {
            return self.build_session(model_file, None);
        };
        use super::session_cache::Lookup;
        let settings = serde_json::to_value(&self.settings).unwrap_or_default();
        match cache.lookup(model_file, &self.info.version, &settings) {
            Ok(Lookup::Hit(optimized)) => {
                match self.build_session(&optimized, Some(Lookup::Hit(optimized.clone()))) {
                    Ok(s) => Ok(s),
                    Err(e) => {
                        // An entry that will not load is rebuilt, never trusted.
                        eprintln!("monitor: warning: session cache entry {} did not load ({e}); rebuilding it", optimized.display());
                        cache.forget(&optimized);
                        self.session(model_file)
                    }
                }
            }
            Ok(miss @ Lookup::Miss(_)) => match self.build_session(model_file, Some(miss)) {
                Ok(s) => Ok(s),
                Err(e) => {
                    // Writing the optimized graph can fail on its own (a full disk): the session
                    // is then built without the cache, and a broken model fails there too.
                    cache.forget(model_file);
                    let s = self.build_session(model_file, None)?;
                    eprintln!(
                        "monitor: warning: session cache not written for {}: {e}",
                        model_file.display()
                    );
                    Ok(s)
                }
            },
            Err(e) => {
                eprintln!(
                    "monitor: warning: session cache not used for {}: {e}",
                    model_file.display()
                );
                self.build_session(model_file, None)
            }
        }
    }

    fn build_session(
        &self,
        model_file: &Path,
        cached: Option<super::session_cache::Lookup>,
    ) -> Result<Session, RuntimeError> {
        let ep_name = self.settings.execution_provider.name();
        let fail = |reason: String| RuntimeError::Session {
            path: model_file.to_path_buf(),
            ep: ep_name,
            reason,
        };
        let mut builder = Session::builder(&self.env).map_err(|e| fail(e.to_string()))?;
        // The environment's logger takes every level; sessions only need to report problems,
        // and formatting verbose messages costs load time.
        builder = builder
            .with_log_level(ort::logging::LogLevel::Warning)
            .map_err(|e| fail(e.to_string()))?;
        builder = builder
            .with_deterministic_compute(self.settings.deterministic_compute)
            .map_err(|e| fail(e.to_string()))?;
        use super::session_cache::{Lookup, WEIGHTS_FILE};
        match &cached {
            // An optimized graph is loaded as saved: optimising it again could change it.
            Some(Lookup::Hit(_)) => {
                builder = builder
                    .with_optimization_level(ort::session::builder::GraphOptimizationLevel::Disable)
                    .map_err(|e| fail(e.to_string()))?;
            }
            Some(Lookup::Miss(out)) => {
                builder = builder
                    .with_optimized_model_path(out)
                    .and_then(|b| {
                        b.with_config_entry(
                            "session.optimized_model_external_initializers_file_name",
                            WEIGHTS_FILE,
                        )
                    })
                    .and_then(|b| {
                        b.with_config_entry(
                            "session.optimized_model_external_initializers_min_size_in_bytes",
                            "1024",
                        )
                    })
                    .map_err(|e| fail(e.to_string()))?;
            }
            None => {}
        }
        if !self.settings.graph_optimization.is_all() && !matches!(cached, Some(Lookup::Hit(_))) {
            use ort::session::builder::GraphOptimizationLevel as L;
            let level = match self.settings.graph_optimization {
                GraphOptimization::All => L::All,
                GraphOptimization::Extended => L::Level2,
                GraphOptimization::Basic => L::Level1,
                GraphOptimization::Disable => L::Disable,
            };
            builder = builder
                .with_optimization_level(level)
                .map_err(|e| fail(e.to_string()))?;
        }
        if let Some(n) = self.settings.intra_op_threads {
            builder = builder
                .with_intra_threads(n)
                .map_err(|e| fail(e.to_string()))?;
        }
        if self.settings.execution_provider == ExecutionProvider::Cuda {
            let search = match self.settings.conv_algo_search {
                ConvAlgoSearch::Exhaustive => ep::cuda::ConvAlgorithmSearch::Exhaustive,
                ConvAlgoSearch::Heuristic => ep::cuda::ConvAlgorithmSearch::Heuristic,
                ConvAlgoSearch::Default => ep::cuda::ConvAlgorithmSearch::Default,
            };
            let cuda = ep::CUDA::default()
                .with_device_id(self.settings.device_id)
                .with_conv_algorithm_search(search)
                .with_tf32(self.settings.use_tf32)
                .with_prefer_nhwc(self.settings.prefer_nhwc)
                .build()
                // A CUDA failure must surface: a silent CPU fallback would look like drift.
                .error_on_failure();
            builder = builder
                .with_execution_providers([cuda])
                .map_err(|e| fail(e.to_string()))?;
        }
        builder
            .commit_from_file(model_file)
            .map_err(|e| fail(e.to_string()))
    }
}

/// ONNX Runtime's own log lines, in the monitor's format: warnings and fatal errors, one line
/// each, on stderr, without ONNX Runtime's colour codes and source locations. Error lines are
/// dropped: each accompanies a failed call whose status comes back as a value, which the caller
/// reports once, with context (a CUDA provider that fails to register comes back too, as its
/// registration is made fatal).
fn log_ort_message(
    level: ort::logging::LogLevel,
    _category: &str,
    _id: &str,
    _location: &str,
    message: &str,
) {
    use ort::logging::LogLevel;
    let level = match level {
        LogLevel::Verbose | LogLevel::Info | LogLevel::Error => return,
        LogLevel::Warning => "warning",
        LogLevel::Fatal => "fatal error",
    };
    // The session cache keys every optimized graph by this host's CPU and GPU, which is what
    // this warning asks for: said once per cache entry, it would only alarm.
    if message.contains("Serializing optimized model with Graph Optimization level greater than") {
        return;
    }
    let clean: String = strip_ansi(message)
        .chars()
        .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
        .collect();
    eprintln!("monitor: onnxruntime {level}: {}", clean.trim());
}

/// `s` without ANSI escape sequences (`ESC [ ... letter`): ONNX Runtime colours some messages.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for d in chars.by_ref() {
                    if d.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

fn load_error_reason(e: &ort::LoadDynamicError) -> String {
    match e {
        ort::LoadDynamicError::BadVersion { version_str, .. } => format!(
            "version {version_str} is older than 1.{} which this build of monitor needs",
            ort::MINOR_VERSION
        ),
        other => other.to_string(),
    }
}

/// The library's own version string ("1.31.1"), read before ort initialises so that a wrong file
/// gives our message rather than a panic inside ort.
fn library_version(path: &Path) -> Result<String, String> {
    // SAFETY: loading runs the library's initialisers, as ort itself will do next; the symbol's
    // signature is ONNX Runtime's stable C entry point, and the string is copied before unloading.
    unsafe {
        let lib = libloading::Library::new(path).map_err(|e| e.to_string())?;
        let get_base: libloading::Symbol<unsafe extern "C" fn() -> *const ort::sys::OrtApiBase> =
            lib.get(b"OrtGetApiBase")
                .map_err(|_| "not an ONNX Runtime library (no OrtGetApiBase)".to_string())?;
        let base = get_base();
        if base.is_null() {
            return Err("OrtGetApiBase returned null".into());
        }
        let v = ((*base).GetVersionString)();
        if v.is_null() {
            return Err("GetVersionString returned null".into());
        }
        Ok(std::ffi::CStr::from_ptr(v).to_string_lossy().into_owned())
    }
}

/// An operating system's ONNX Runtime file names and Python wheel layout. A value rather than only
/// `cfg`, so that the discovery for every system can be tested on any of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {
    /// `<venv>/lib/python3.X/site-packages/onnxruntime/capi/libonnxruntime.so.1.X.Y`; also what
    /// other Unixes get.
    Linux,
    /// `<venv>/lib/python3.X/site-packages/onnxruntime/capi/libonnxruntime.1.X.Y.dylib` (newer
    /// wheels: `libonnxruntime.dylib`).
    MacOs,
    /// `<venv>\Lib\site-packages\onnxruntime\capi\onnxruntime.dll`.
    Windows,
}

impl Platform {
    /// The system this binary was built for.
    pub const CURRENT: Platform = if cfg!(windows) {
        Platform::Windows
    } else if cfg!(target_vendor = "apple") {
        Platform::MacOs
    } else {
        Platform::Linux
    };

    /// The library's file name, as a pattern for messages.
    pub fn library_pattern(self) -> &'static str {
        match self {
            Platform::Linux => "libonnxruntime.so.*",
            Platform::MacOs => "libonnxruntime*.dylib",
            Platform::Windows => "onnxruntime.dll",
        }
    }

    /// The CUDA provider library ONNX Runtime loads from its own folder (macOS has no CUDA build,
    /// so there it is never found).
    pub fn cuda_provider(self) -> &'static str {
        match self {
            Platform::Linux => "libonnxruntime_providers_cuda.so",
            Platform::MacOs => "libonnxruntime_providers_cuda.dylib",
            Platform::Windows => "onnxruntime_providers_cuda.dll",
        }
    }

    /// For an ONNX Runtime library's file name, the version it carries (empty when the name has
    /// none); `None` for any other file (provider libraries, the Python extension, ...).
    fn library_version_in_name(self, name: &str) -> Option<Vec<u32>> {
        let parse = |v: &str| v.split('.').map(|p| p.parse().unwrap_or(0)).collect();
        match self {
            Platform::Linux => name.strip_prefix("libonnxruntime.so.").map(parse),
            Platform::MacOs if name == "libonnxruntime.dylib" => Some(Vec::new()),
            Platform::MacOs => name
                .strip_prefix("libonnxruntime.")?
                .strip_suffix(".dylib")
                .filter(|v| v.starts_with(|c: char| c.is_ascii_digit()))
                .map(parse),
            // File names are case-insensitive there.
            Platform::Windows => name.eq_ignore_ascii_case("onnxruntime.dll").then(Vec::new),
        }
    }

    /// The `onnxruntime` package folders a virtualenv at `root` can hold. A Windows venv has no
    /// `pythonX.Y` level (and its interpreter is `Scripts\python.exe`, not `bin/python3`).
    fn venv_package_dirs(self, root: &Path) -> Vec<PathBuf> {
        if self == Platform::Windows {
            return vec![root.join("Lib").join("site-packages").join("onnxruntime")];
        }
        let mut dirs = Vec::new();
        for lib in ["lib", "lib64"] {
            let Ok(entries) = std::fs::read_dir(root.join(lib)) else {
                continue;
            };
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with("python") {
                    dirs.push(e.path().join("site-packages/onnxruntime"));
                }
            }
        }
        dirs
    }

    /// The interpreter asked last, when `MONITOR_PYTHON` does not name one (the python.org
    /// installer for Windows installs `python`, not `python3`).
    fn default_python(self) -> &'static str {
        match self {
            Platform::Windows => "python",
            Platform::Linux | Platform::MacOs => "python3",
        }
    }
}

/// Finds the shared library: explicit path, then `ORT_DYLIB_PATH`, then an installed Python package.
pub fn locate_library(explicit: Option<&Path>) -> Result<(PathBuf, LibrarySource), RuntimeError> {
    let platform = Platform::CURRENT;
    if let Some(p) = explicit {
        return existing(platform, p, "--ort-lib/config").map(|p| (p, LibrarySource::Explicit));
    }
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|v| !v.is_empty()) {
        return existing(platform, Path::new(&p), "ORT_DYLIB_PATH")
            .map(|p| (p, LibrarySource::EnvVar));
    }
    let python =
        std::env::var("MONITOR_PYTHON").unwrap_or_else(|_| platform.default_python().to_string());
    let mut looked = vec![
        "--ort-lib".to_string(),
        "ORT_DYLIB_PATH".to_string(),
        "$VIRTUAL_ENV and ./.venv site-packages".to_string(),
        format!("{python}'s onnxruntime package"),
    ];
    for dir in python_package_dirs(platform, &python) {
        looked.push(dir.display().to_string());
        if let Some(lib) = library_in_capi(platform, &dir.join("capi")) {
            return Ok((lib, LibrarySource::PythonPackage));
        }
    }
    Err(RuntimeError::NotFound {
        looked: looked.join(", "),
    })
}

/// Accepts a library file or a folder holding one (e.g. the wheel's `capi/`).
fn existing(
    platform: Platform,
    p: &Path,
    source_name: &'static str,
) -> Result<PathBuf, RuntimeError> {
    if p.is_dir() {
        return library_in_capi(platform, p).ok_or_else(|| RuntimeError::Missing {
            path: p.join(platform.library_pattern()),
            source_name,
        });
    }
    if p.exists() {
        Ok(p.to_path_buf())
    } else {
        Err(RuntimeError::Missing {
            path: p.to_path_buf(),
            source_name,
        })
    }
}

/// The ONNX Runtime library in a wheel's `capi/` folder: the newest `libonnxruntime.so.1.X.Y`
/// (Linux), the newest `libonnxruntime.1.X.Y.dylib` before a plain `libonnxruntime.dylib`
/// (macOS), `onnxruntime.dll` (Windows).
fn library_in_capi(platform: Platform, capi: &Path) -> Option<PathBuf> {
    let entries = std::fs::read_dir(capi).ok()?;
    let mut best: Option<(Vec<u32>, PathBuf)> = None;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(key) = platform.library_version_in_name(&name) else {
            continue;
        };
        if best.as_ref().is_none_or(|(k, _)| key > *k) {
            best = Some((key, entry.path()));
        }
    }
    best.map(|(_, p)| p)
}

/// Candidate `onnxruntime` package folders, most specific first: the active virtualenv, a
/// `.venv` in the working directory, then whatever `python` (the interpreter; python3 on Unix)
/// would import.
fn python_package_dirs(platform: Platform, python: &str) -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Some(venv) = std::env::var_os("VIRTUAL_ENV") {
        roots.push(PathBuf::from(venv));
    }
    roots.push(PathBuf::from(".venv"));
    let mut dirs: Vec<PathBuf> = Vec::new();
    for root in roots {
        dirs.extend(platform.venv_package_dirs(&root));
    }
    // find_spec locates the package without importing it (importing would load CUDA libraries).
    let script = "import importlib.util as u\ns = u.find_spec('onnxruntime')\nprint(s.submodule_search_locations[0] if s and s.submodule_search_locations else '')";
    if let Ok(out) = Command::new(python).args(["-c", script]).output() {
        let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !s.is_empty() {
            dirs.push(PathBuf::from(s));
        }
    }
    dirs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capi_picks_newest_version() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "libonnxruntime.so.1.9.0",
            "libonnxruntime.so.1.31.1",
            "libonnxruntime.so.1.24.4",
            "other.so",
        ] {
            std::fs::write(dir.path().join(name), b"").unwrap();
        }
        let lib = library_in_capi(Platform::Linux, dir.path()).unwrap();
        assert_eq!(lib.file_name().unwrap(), "libonnxruntime.so.1.31.1");
    }

    /// Builds a fake virtualenv at `root`: every file in `files` (paths relative to the root),
    /// empty.
    fn fake_venv(root: &Path, files: &[&str]) {
        for f in files {
            let p = root.join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, b"").unwrap();
        }
    }

    /// What discovery finds in the virtualenv at `root` for `platform`, relative to the root.
    fn found_in_venv(platform: Platform, root: &Path) -> Option<PathBuf> {
        platform
            .venv_package_dirs(root)
            .iter()
            .find_map(|d| library_in_capi(platform, &d.join("capi")))
            .map(|p| p.strip_prefix(root).unwrap().to_path_buf())
    }

    #[test]
    fn linux_wheel_layout() {
        let dir = tempfile::tempdir().unwrap();
        let capi = "lib/python3.11/site-packages/onnxruntime/capi";
        fake_venv(
            dir.path(),
            &[
                "bin/python3",
                &format!("{capi}/libonnxruntime.so.1.31.1"),
                &format!("{capi}/libonnxruntime_providers_shared.so"),
                &format!("{capi}/onnxruntime_pybind11_state.cpython-311-x86_64-linux-gnu.so"),
            ],
        );
        assert_eq!(
            found_in_venv(Platform::Linux, dir.path()),
            Some(PathBuf::from(capi).join("libonnxruntime.so.1.31.1"))
        );
        // The other systems' names are not taken for it.
        assert_eq!(found_in_venv(Platform::MacOs, dir.path()), None);
        assert_eq!(found_in_venv(Platform::Windows, dir.path()), None);
        // lib64 (some distributions' venvs) works too.
        let dir = tempfile::tempdir().unwrap();
        let capi = "lib64/python3.12/site-packages/onnxruntime/capi";
        fake_venv(dir.path(), &[&format!("{capi}/libonnxruntime.so.1.24.4")]);
        assert_eq!(
            found_in_venv(Platform::Linux, dir.path()),
            Some(PathBuf::from(capi).join("libonnxruntime.so.1.24.4"))
        );
    }

    #[test]
    fn macos_wheel_layout() {
        let dir = tempfile::tempdir().unwrap();
        let capi = "lib/python3.12/site-packages/onnxruntime/capi";
        fake_venv(
            dir.path(),
            &[
                "bin/python3",
                &format!("{capi}/libonnxruntime.1.20.1.dylib"),
                &format!("{capi}/libonnxruntime.1.9.0.dylib"),
                &format!("{capi}/libonnxruntime_providers_shared.dylib"),
                &format!("{capi}/onnxruntime_pybind11_state.cpython-312-darwin.so"),
            ],
        );
        assert_eq!(
            found_in_venv(Platform::MacOs, dir.path()),
            Some(PathBuf::from(capi).join("libonnxruntime.1.20.1.dylib"))
        );
        assert_eq!(found_in_venv(Platform::Linux, dir.path()), None);
        assert_eq!(found_in_venv(Platform::Windows, dir.path()), None);
        // Newer wheels drop the version from the name.
        let dir = tempfile::tempdir().unwrap();
        fake_venv(
            dir.path(),
            &[
                &format!("{capi}/libonnxruntime.dylib"),
                &format!("{capi}/libonnxruntime_providers_shared.dylib"),
            ],
        );
        assert_eq!(
            found_in_venv(Platform::MacOs, dir.path()),
            Some(PathBuf::from(capi).join("libonnxruntime.dylib"))
        );
    }

    #[test]
    fn windows_wheel_layout() {
        let dir = tempfile::tempdir().unwrap();
        let capi = "Lib/site-packages/onnxruntime/capi";
        fake_venv(
            dir.path(),
            &[
                "Scripts/python.exe",
                &format!("{capi}/onnxruntime.dll"),
                &format!("{capi}/onnxruntime_providers_shared.dll"),
                &format!("{capi}/onnxruntime_pybind11_state.pyd"),
            ],
        );
        assert_eq!(
            found_in_venv(Platform::Windows, dir.path()),
            Some(PathBuf::from(capi).join("onnxruntime.dll"))
        );
        assert_eq!(found_in_venv(Platform::Linux, dir.path()), None);
        assert_eq!(found_in_venv(Platform::MacOs, dir.path()), None);
        // A capi/ folder given directly, as --ort-lib or ORT_DYLIB_PATH.
        let capi_dir = dir.path().join(capi);
        assert_eq!(
            existing(Platform::Windows, &capi_dir, "--ort-lib/config").unwrap(),
            capi_dir.join("onnxruntime.dll")
        );
        // The GPU wheel's provider sits beside it.
        assert_eq!(
            Platform::Windows.cuda_provider(),
            "onnxruntime_providers_cuda.dll"
        );
    }

    #[test]
    fn a_capi_folder_without_the_library_names_the_pattern() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("onnxruntime_providers_shared.dll"), b"").unwrap();
        for (platform, pattern) in [
            (Platform::Linux, "libonnxruntime.so.*"),
            (Platform::MacOs, "libonnxruntime*.dylib"),
            (Platform::Windows, "onnxruntime.dll"),
        ] {
            let msg = existing(platform, dir.path(), "ORT_DYLIB_PATH")
                .unwrap_err()
                .to_string();
            assert!(msg.contains(pattern), "{platform:?}: {msg}");
            assert!(msg.contains("ORT_DYLIB_PATH"), "{platform:?}: {msg}");
        }
    }

    #[test]
    fn explicit_missing_path_names_it() {
        let err =
            locate_library(Some(Path::new("/nonexistent/libonnxruntime.so.1.31.1"))).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("/nonexistent/libonnxruntime.so.1.31.1"),
            "{msg}"
        );
        assert!(msg.contains("pip install onnxruntime=="), "{msg}");
    }

    #[test]
    fn parse_names() {
        assert_eq!(
            "cuda".parse::<ExecutionProvider>().unwrap(),
            ExecutionProvider::Cuda
        );
        assert!("gpu"
            .parse::<ExecutionProvider>()
            .unwrap_err()
            .contains("'gpu'"));
        assert_eq!(
            "exhaustive".parse::<ConvAlgoSearch>().unwrap(),
            ConvAlgoSearch::Exhaustive
        );
    }
}
