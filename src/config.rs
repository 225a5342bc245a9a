//! The YAML configuration: schema, defaults, loading and validation.
//!
//! `monitor` reads one YAML file: `--config FILE`, else `$MONITOR_CONFIG`, else
//! `configs/monitor.yaml` ([`resolve_config_path`]). Relative paths in it (`model.path`,
//! `onnxruntime.library`, `storage.*`, `noise_file`) are relative to the file's own folder.
//! Unknown keys are errors, not ignored: a typo must never silently fall back to a default.
//!
//! ```yaml
//! model:                              # required
//!   path: onnx/tiny-sd15              # required: SD1.5 ONNX export folder
//!   execution_provider: cpu           # cpu | cuda                          (default cpu)
//!   device_id: 0                      # CUDA device ordinal                 (default 0)
//!   conv_algo_search: heuristic       # exhaustive | heuristic | default    (default heuristic)
//!   tf32: false                       # TF32 tensor-core math               (default false)
//!   prefer_nhwc: false                # NHWC conv kernels                   (default false)
//!   deterministic_compute: true       # ORT use_deterministic_compute       (default true)
//!   threads: null                     # intra-op threads; null = ORT's choice (default null)
//!   graph_optimization: all           # all extended basic disable (changes bits) (default all)
//!   session_cache: null               # ORT optimized-model cache; null = on for cpu, off for cuda
//! onnxruntime:
//!   library: null                     # libonnxruntime.so or capi/ folder; null = ORT_DYLIB_PATH,
//!                                     # else discovery                      (default null)
//! storage:
//!   baselines: baselines              # baseline folder                     (default baselines)
//!   database: monitor.db              # history database                    (default monitor.db)
//!   retention_days: 90                # history kept; 0 = keep forever      (default 90)
//!   reports: reports                  # outputs + diff.png of non-identical results (default reports)
//!   session_cache: session-cache      # optimized models, one folder per network and key
//! worker:
//!   timeout_s: 1800                   # kill the model worker after this long (default 1800)
//! limits:                             # the largest case allowed (see `limits`)
//!   max_width: 2048                   # pixels                              (default 2048)
//!   max_height: 2048                  # pixels                              (default 2048)
//!   max_pixels: 1048576               # width × height                      (default 1024×1024)
//!   memory_gib: null                  # memory a case may use; null = what the host has
//! thresholds:                         # drift limits, each case may override any of them
//!   latent_max_abs: 1.0e-3            # max |Δ| of final latents, ≥ 0        (default 1.0e-3)
//!   latent_cosine_min: 0.9999         # min cosine similarity, in (0, 1]    (default 0.9999)
//!   ssim_min: 0.99                    # min image SSIM, in (0, 1]           (default 0.99)
//! schedule: "0 */30 * * * *"          # `monitor run`: 6-field (with seconds) or 5-field cron
//! quick_schedule: null                # `monitor run`: quick checks (each network once) between
//!                                     # the full ones; a difference gets a full check at once
//! timezone: UTC                       # IANA zone the schedules are read in (default UTC)
//! alerts:                             # see `alert::config` (thresholds, slack, webhook, email)
//!   failure_threshold: 1              # bad rounds in a row before a case fires   (default 1)
//!   success_threshold: 1              # good rounds in a row before it resolves   (default 1)
//!   send_resolved: true               #                                          (default true)
//!   reminder_interval: 4h             # re-notify while firing; 0 = off           (default 4h)
//! remediation:                        # see `remediate` (default none)
//!   restart: {unit: sd-webui.service} # or {command: [/usr/local/bin/restart-sd, --now]}
//!   max_restarts: 3                   # per window                                (default 3)
//!   window: 1h                        #                                          (default 1h)
//!   recheck_delay: 30s                #                                          (default 30s)
//!   auto_rebaseline: false            # store new baselines if drift persists    (default false)
//! metrics:
//!   listen: 127.0.0.1:9464            # monitor run's /metrics and /healthz; null = off
//! performance:
//!   max_slowdown: null                # `slow` above this × the baseline's generation time, e.g. 1.5
//! report:                             # HTML report of each round not all identical
//!   base_url: null                    # where reports/ is served; alerts link there (default null)
//!   trend: 20                         # results in each case's trend sparkline  (default 20)
//! daemon:
//!   shutdown_grace: 30s               # SIGTERM: time a running check gets       (default 30s)
//!   flush_timeout: 10s                # SIGTERM: time left to deliver alerts     (default 10s)
//! cases:                              # required, at least one
//!   - name: sunset                    # required, unique; names the baseline folder
//!     prompt: "..."                   # required
//!     negative_prompt: "..."          # (default none: "" under guidance)
//!     seed: 42                        # required
//!     steps: 25                       # 1..=1000                            (default 50)
//!     guidance_scale: 7.5             # finite, ≥ 0; CFG only when > 1      (default 7.5)
//!     width: 512                      # positive multiple of 8              (default 512)
//!     height: 512                     # positive multiple of 8              (default 512)
//!     scheduler: pndm                 # pndm ddim euler euler-a lms dpmpp-2m (default pndm)
//!     noise: torch-cpu                # numpy torch-cpu torch-cuda file     (default numpy)
//!     noise_file: null                # .npy initial latents, with noise: file (default null)
//!     karras: false                   # Karras sigmas (euler, lms, dpmpp-2m) (default false)
//!     batch_size: 1                   # also run as element 0 of a batch, 1..=16 (default 1)
//!     thresholds: {ssim_min: 0.98}    # per-case overrides                  (default none)
//!     schedule: "0 0 * * * *"         # this case's own schedule             (default the global)
//!     target: pipeline                # pipeline, or service (the `service:` API) (default pipeline)
//!     sampler: null                   # service: sampler name sent instead of the mapped one
//!     parity: false                   # service: also run on the pipeline, report the distance
//! ```
//!
//! Errors are one line: `FILE:LINE:COLUMN: KEY: MESSAGE` (line and column when known, key when
//! the error is about one), e.g.
//! `configs/x.yaml:12:12: cases[1].steps: invalid type: string "many", expected u32`.
//!
//! Thresholds are the comparison module's own types ([`Thresholds`], [`PartialThresholds`]), so
//! what the file says is exactly what `check` applies.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

use crate::alert::config::AlertsConfig;
use crate::case::CaseSpec;
use crate::compare::{PartialThresholds, Thresholds};
use crate::duration::ConfigDuration;
use crate::limits::Limits;
use crate::remediate::RemediationConfig;
use crate::sd::noise::NoiseKind;
use crate::sd::runtime::{ConvAlgoSearch, ExecutionProvider, GraphOptimization, RuntimeSettings};
use crate::sd::scheduler::SchedulerKind;

/// The config file used when neither `--config` nor `$MONITOR_CONFIG` names one.
pub const DEFAULT_CONFIG_PATH: &str = "configs/monitor.yaml";
/// Environment variable naming the config file.
pub const CONFIG_ENV: &str = "MONITOR_CONFIG";
/// SD1.5's training timesteps: diffusers refuses more inference steps than this.
pub const MAX_STEPS: u32 = 1000;
/// Largest `batch_size`: a service batching more than this is rare, and the UNet batch doubles.
pub const MAX_BATCH: u32 = 16;

fn default_batch_size() -> u32 {
    1
}

/// Which config file to read: `explicit` (`--config`), else `env` (`$MONITOR_CONFIG`, ignored when
/// empty), else [`DEFAULT_CONFIG_PATH`]. Pure, so it can be tested without touching the process env.
pub fn resolve_config_path(explicit: Option<&Path>, env: Option<&OsStr>) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_path_buf();
    }
    match env {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => PathBuf::from(DEFAULT_CONFIG_PATH),
    }
}

/// [`resolve_config_path`] with the process's `$MONITOR_CONFIG`.
pub fn config_path(explicit: Option<&Path>) -> PathBuf {
    resolve_config_path(explicit, std::env::var_os(CONFIG_ENV).as_deref())
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The model under watch and the runtime settings that can change its output bits.
    pub model: ModelConfig,
    /// Where ONNX Runtime comes from.
    #[serde(default)]
    pub onnxruntime: OnnxRuntimeConfig,
    /// Where baselines and history live.
    #[serde(default)]
    pub storage: StorageConfig,
    /// Drift limits for every case (each case may override them).
    #[serde(default)]
    pub thresholds: Thresholds,
    /// The model worker process.
    #[serde(default)]
    pub worker: WorkerConfig,
    /// The largest case allowed, and the memory a case may use.
    #[serde(default)]
    pub limits: Limits,
    /// When the daemon checks: 6-field (with seconds) or 5-field cron; a case may have its own.
    #[serde(default)]
    pub schedule: Option<String>,
    /// When the daemon runs a quick check of every case (`check --quick`); the cases it cannot
    /// clear get a full check at once.
    #[serde(default)]
    pub quick_schedule: Option<String>,
    /// IANA time zone the schedules are read in (default UTC).
    #[serde(default)]
    pub timezone: Option<String>,
    /// The generation service's HTTP API (`monitor service probe`).
    #[serde(default)]
    pub service: Option<crate::service::ServiceConfig>,
    /// When and where to alert.
    #[serde(default)]
    pub alerts: AlertsConfig,
    /// Restarting the generation service on a confirmed drift.
    #[serde(default)]
    pub remediation: Option<RemediationConfig>,
    /// The daemon itself.
    #[serde(default)]
    pub daemon: DaemonConfig,
    /// The daemon's Prometheus endpoint.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// The HTML report of each round that is not all identical.
    #[serde(default)]
    pub report: ReportConfig,
    /// The `slow` flag: generation time against the baseline's.
    #[serde(default)]
    pub performance: crate::performance::PerformanceConfig,
    /// The fixed test cases, in file order.
    pub cases: Vec<Case>,
    /// The file this was loaded from (not a YAML key).
    #[serde(skip)]
    pub source: PathBuf,
}

/// `metrics:` — where `monitor run` serves `/metrics` and `/healthz`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Address to listen on; `null` turns the endpoint off. Loopback unless the operator opts in.
    pub listen: Option<std::net::SocketAddr>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 9464))),
        }
    }
}

/// `report:` — the HTML report written for every round that is not all identical.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReportConfig {
    /// Where the reports folder is served (`https://…/reports`); alerts link there instead of
    /// naming the file. `null`: alerts name the page's path on this host.
    pub base_url: Option<String>,
    /// Results in each case's trend sparkline.
    pub trend: usize,
}

impl Default for ReportConfig {
    fn default() -> Self {
        ReportConfig {
            base_url: None,
            trend: 20,
        }
    }
}

impl ReportConfig {
    /// The report module's settings.
    pub fn settings(&self) -> crate::report::ReportSettings {
        crate::report::ReportSettings {
            base_url: self.base_url.clone(),
            trend: self.trend,
        }
    }
}

/// `daemon:` — `monitor run`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    /// On SIGTERM, how long a running check may go on before its worker is killed.
    pub shutdown_grace: ConfigDuration,
    /// On SIGTERM, how long undelivered alerts are still tried.
    pub flush_timeout: ConfigDuration,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            shutdown_grace: ConfigDuration(std::time::Duration::from_secs(30)),
            flush_timeout: ConfigDuration(std::time::Duration::from_secs(10)),
        }
    }
}

/// `worker:` — the child process that runs the model.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// Seconds after which a worker is killed and its unfinished cases become `error`
    /// (default 1800: a real SD1.5 check on a busy GPU can take minutes, a hang must not last).
    pub timeout_s: f64,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig { timeout_s: 1800.0 }
    }
}

/// `model:` — the export and every runtime setting that can change output bits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// SD1.5 ONNX export folder (required); resolved against the config file's folder.
    pub path: PathBuf,
    /// `cpu` or `cuda` (default `cpu`).
    #[serde(default, deserialize_with = "from_str_value")]
    pub execution_provider: ExecutionProvider,
    /// CUDA device ordinal (default 0).
    #[serde(default)]
    pub device_id: i32,
    /// cuDNN convolution algorithm search: `exhaustive`, `heuristic` or `default` (default `heuristic`).
    #[serde(default, deserialize_with = "from_str_value")]
    pub conv_algo_search: ConvAlgoSearch,
    /// Allow TF32 tensor-core math on CUDA (default false).
    #[serde(default)]
    pub tf32: bool,
    /// Prefer NHWC convolution kernels on CUDA (default false).
    #[serde(default)]
    pub prefer_nhwc: bool,
    /// ONNX Runtime's `use_deterministic_compute` (default true).
    #[serde(default = "default_true")]
    pub deterministic_compute: bool,
    /// Intra-op threads (default null: ONNX Runtime's choice, one per physical core).
    #[serde(default)]
    pub threads: Option<usize>,
    /// Graph optimization level: all, extended, basic, disable (default all).
    #[serde(default, deserialize_with = "from_str_value")]
    pub graph_optimization: GraphOptimization,
    /// ONNX Runtime's optimized-model cache (default null: on for cpu, where tests prove its
    /// sessions bit-identical; off for cuda, where that has not been measured).
    #[serde(default)]
    pub session_cache: Option<bool>,
}

impl ModelConfig {
    /// Whether sessions go through ONNX Runtime's optimized-model cache.
    pub fn session_cache_on(&self) -> bool {
        self.session_cache
            .unwrap_or(self.execution_provider == ExecutionProvider::Cpu)
    }

    /// The runtime settings this section describes.
    pub fn runtime_settings(&self) -> RuntimeSettings {
        RuntimeSettings {
            execution_provider: self.execution_provider,
            device_id: self.device_id,
            conv_algo_search: self.conv_algo_search,
            use_tf32: self.tf32,
            prefer_nhwc: self.prefer_nhwc,
            deterministic_compute: self.deterministic_compute,
            intra_op_threads: self.threads,
            graph_optimization: self.graph_optimization,
        }
    }
}

/// `onnxruntime:` — where the shared library comes from.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnnxRuntimeConfig {
    /// `libonnxruntime.so` or the wheel's `capi/` folder (default null: `ORT_DYLIB_PATH`, else
    /// discovery); resolved against the config file's folder.
    #[serde(default)]
    pub library: Option<PathBuf>,
}

/// `storage:` — where results are kept.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Baseline folder (default `baselines`); resolved against the config file's folder.
    pub baselines: PathBuf,
    /// History database file (default `monitor.db`); resolved against the config file's folder.
    pub database: PathBuf,
    /// Days of history kept; 0 keeps everything (default 90).
    pub retention_days: u32,
    /// Folder for the outputs, diff heatmaps and comparison reports of non-identical results
    /// (default `reports`); resolved against the config file's folder.
    pub reports: PathBuf,
    /// ONNX Runtime's optimized models (default `session-cache`); resolved against the config
    /// file's folder.
    pub session_cache: PathBuf,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            baselines: PathBuf::from("baselines"),
            database: PathBuf::from("monitor.db"),
            retention_days: 90,
            reports: PathBuf::from("reports"),
            session_cache: PathBuf::from("session-cache"),
        }
    }
}

/// One fixed test case.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// Unique name (required); names the case's baseline folder: letters, digits, `.`, `_`, `-`.
    #[serde(deserialize_with = "strict_string")]
    pub name: String,
    /// Prompt (required).
    #[serde(deserialize_with = "strict_string")]
    pub prompt: String,
    /// Negative prompt (default none: `""` under guidance, as diffusers does).
    #[serde(default, deserialize_with = "strict_opt_string")]
    pub negative_prompt: Option<String>,
    /// Noise seed (required).
    pub seed: u64,
    /// Inference steps, 1..=1000 (default 50).
    #[serde(default = "default_steps")]
    pub steps: u32,
    /// Classifier-free guidance scale, finite and ≥ 0; CFG only when > 1 (default 7.5).
    #[serde(default = "default_guidance")]
    pub guidance_scale: f32,
    /// Width in pixels, a positive multiple of 8 (default 512).
    #[serde(default = "default_size")]
    pub width: u32,
    /// Height in pixels, a positive multiple of 8 (default 512).
    #[serde(default = "default_size")]
    pub height: u32,
    /// Scheduler: pndm, ddim, euler, euler-a, lms, dpmpp-2m (default pndm).
    #[serde(default = "default_scheduler", deserialize_with = "from_str_value")]
    pub scheduler: SchedulerKind,
    /// Noise source: numpy, torch-cpu, torch-cuda, file (default numpy).
    #[serde(default = "default_noise", deserialize_with = "from_str_value")]
    pub noise: NoiseKind,
    /// Initial latents `.npy` for `noise: file`; resolved against the config file's folder.
    #[serde(default)]
    pub noise_file: Option<PathBuf>,
    /// Karras sigmas: euler, lms and dpmpp-2m only (default false).
    #[serde(default)]
    pub karras: bool,
    /// Batch invariance: when > 1, the case also runs as element 0 of a batch of this many
    /// (seeds seed..seed+N-1) and the result says whether that equals the batch-1 output.
    #[serde(default = "default_batch_size")]
    pub batch_size: u32,
    /// Per-case threshold overrides (default none).
    #[serde(default)]
    pub thresholds: Option<PartialThresholds>,
    /// This case's own schedule (else the global `schedule`).
    #[serde(default)]
    pub schedule: Option<String>,
    /// What generates it: the monitor's own pipeline, or the generation service (`service:`).
    #[serde(default, deserialize_with = "from_str_value")]
    pub target: Target,
    /// Service cases: the sampler name to send instead of the one mapped from `scheduler`.
    #[serde(default, deserialize_with = "strict_opt_string")]
    pub sampler: Option<String>,
    /// Service cases: also generate on the pipeline and report how far the service's image is
    /// from it (informational, never a verdict).
    #[serde(default)]
    pub parity: bool,
}

/// What generates a case's outputs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Target {
    /// The monitor's own ONNX pipeline, in a worker: latents and image.
    #[default]
    Pipeline,
    /// The generation service's HTTP API (`service:`): an image only.
    Service,
}

impl Target {
    /// The name in configs, metadata and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Target::Pipeline => "pipeline",
            Target::Service => "service",
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Target {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "pipeline" => Ok(Target::Pipeline),
            "service" => Ok(Target::Service),
            _ => Err(format!("unknown target {s:?}; use pipeline or service")),
        }
    }
}

impl Case {
    /// This case's thresholds: the global ones with this case's overrides on top.
    pub fn thresholds(&self, global: &Thresholds) -> Thresholds {
        self.thresholds
            .as_ref()
            .map_or(*global, |o| global.with_overrides(o))
    }

    /// What the worker runs for this case.
    pub fn spec(&self) -> CaseSpec {
        CaseSpec {
            name: self.name.clone(),
            prompt: self.prompt.clone(),
            negative_prompt: self.negative_prompt.clone(),
            seed: self.seed,
            steps: self.steps as usize,
            guidance_scale: self.guidance_scale,
            width: self.width,
            height: self.height,
            scheduler: self.scheduler,
            noise: self.noise,
            noise_file: self.noise_file.clone(),
            karras: self.karras,
            batch_size: self.batch_size as usize,
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_steps() -> u32 {
    50
}
fn default_guidance() -> f32 {
    7.5
}
fn default_size() -> u32 {
    512
}
fn default_scheduler() -> SchedulerKind {
    SchedulerKind::Pndm
}
fn default_noise() -> NoiseKind {
    NoiseKind::Numpy
}

/// Deserializes a YAML string through the type's `FromStr`, so config and CLI accept the same names.
/// Strict: `scheduler: 5` is a type error, not the name "5".
fn from_str_value<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: fmt::Display,
{
    // Parsing inside the visitor makes serde_yaml stamp a bad name with the value's own position.
    struct V<T>(std::marker::PhantomData<T>);
    impl<T: FromStr> Visitor<'_> for V<T>
    where
        T::Err: fmt::Display,
    {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a string")
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<T, E> {
            s.parse().map_err(E::custom)
        }
    }
    d.deserialize_any(V(std::marker::PhantomData))
}

/// A string that must be written as one: `prompt: 5` or `name: yes` is a type error, not "5"/"yes".
fn strict_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    from_str_value(d)
}

/// [`strict_string`] or null.
fn strict_opt_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = Option<String>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a string or null")
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
            Ok(Some(s.to_string()))
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    }
    d.deserialize_any(V)
}

/// What went wrong, broadly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigErrorKind {
    /// The file could not be read.
    Read,
    /// Not well-formed YAML.
    Syntax,
    /// Well-formed YAML that does not fit the schema: unknown key, wrong type, missing key.
    Schema,
    /// Fits the schema but a value is not acceptable (range, duplicates, missing files, ...).
    Invalid,
}

/// A configuration error; displays as one line `FILE[:LINE[:COLUMN]]: [KEY: ]MESSAGE`.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    /// What went wrong, broadly.
    pub kind: ConfigErrorKind,
    /// The config file.
    pub file: PathBuf,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// 1-based column, when known.
    pub column: Option<usize>,
    /// Key path such as `cases[1].steps`, when the error is about one key.
    pub key: Option<String>,
    /// What is wrong, without file, position or key.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(l) = self.line {
            write!(f, ":{l}")?;
            if let Some(c) = self.column {
                write!(f, ":{c}")?;
            }
        }
        write!(f, ": ")?;
        if let Some(k) = &self.key {
            write!(f, "{k}: ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads, parses and validates `path`; the first problem found is the error.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Self::load_all_errors(path).map_err(|mut v| v.swap_remove(0))
    }

    /// Like [`Config::load`] but returns every validation problem, in file order (never an empty
    /// list). Read, syntax and schema errors stop at the first.
    pub fn load_all_errors(path: &Path) -> Result<Config, Vec<ConfigError>> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            vec![ConfigError {
                kind: ConfigErrorKind::Read,
                file: path.to_path_buf(),
                line: None,
                column: None,
                key: None,
                message: format!("cannot read config file: {e}"),
            }]
        })?;
        let config = Self::parse(&text, path).map_err(|e| vec![e])?;
        let errors = config.validate(&text);
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(errors)
        }
    }

    /// Parses `text` as the contents of `path` (used for messages and to resolve relative paths),
    /// without the semantic checks of [`Config::validate`].
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let schema_error = |line, column, key, message| ConfigError {
            kind: ConfigErrorKind::Schema,
            file: path.to_path_buf(),
            line,
            column,
            key,
            message,
        };
        if text.lines().all(|l| {
            let l = l.trim();
            l.is_empty() || l.starts_with('#') || l == "---"
        }) {
            return Err(schema_error(
                None,
                None,
                None,
                "the file is empty (it needs at least `model` and `cases`)".into(),
            ));
        }
        // Well-formed YAML first, so syntax errors are reported as such and without a key.
        if let Err(e) = serde_yaml::from_str::<serde_yaml::Value>(text) {
            let mut err = yaml_error(path, &e);
            err.kind = ConfigErrorKind::Syntax;
            return Err(err);
        }
        let de = serde_yaml::Deserializer::from_str(text);
        let mut config: Config = match serde_path_to_error::deserialize(de) {
            Ok(c) => c,
            Err(e) => {
                let key_path = e.path().to_string();
                let mut err = yaml_error(path, e.inner());
                // serde_yaml prefixes the message with its own (sometimes parent) path; ours is exact.
                if let Some((head, rest)) = err.message.split_once(": ") {
                    if key_path == head
                        || key_path.starts_with(&format!("{head}."))
                        || key_path.starts_with(&format!("{head}["))
                    {
                        err.message = rest.to_string();
                    }
                }
                if key_path != "." {
                    // serde_yaml places some errors at the enclosing mapping; the value itself is
                    // better (an unknown key is already placed at the key).
                    let relocate = !err.message.starts_with("unknown field");
                    if let Some((line, column)) = locate_key(text, &key_path).filter(|_| relocate) {
                        (err.line, err.column) = (Some(line), Some(column));
                    }
                    err.key = Some(key_path);
                }
                return Err(err);
            }
        };
        config.source = path.to_path_buf();
        config.resolve_paths();
        Ok(config)
    }

    /// Makes every relative path relative to the config file's folder (lexically normalised).
    fn resolve_paths(&mut self) {
        let base = self
            .source
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let r = |p: &Path| resolve_path(&base, p);
        self.model.path = r(&self.model.path);
        self.onnxruntime.library = self.onnxruntime.library.as_deref().map(r);
        self.storage.baselines = r(&self.storage.baselines);
        self.storage.database = r(&self.storage.database);
        self.storage.reports = r(&self.storage.reports);
        self.storage.session_cache = r(&self.storage.session_cache);
        for c in &mut self.cases {
            c.noise_file = c.noise_file.as_deref().map(r);
        }
    }

    /// Semantic checks on a parsed config (`text` is the file's text, to find line numbers; `""`
    /// gives errors without positions).
    /// Returns every problem, in file order; empty means valid. Reads no model, only checks that
    /// files and folders exist.
    pub fn validate(&self, text: &str) -> Vec<ConfigError> {
        let mut v = Validator {
            file: &self.source,
            text,
            errors: Vec::new(),
        };
        self.validate_model(&mut v);
        if let Some(lib) = &self.onnxruntime.library {
            if !lib.exists() {
                v.error(
                    "onnxruntime.library",
                    format!("ONNX Runtime library {} does not exist", lib.display()),
                );
            }
        }
        check_thresholds(&mut v, "thresholds", &self.thresholds, None);
        let t = self.worker.timeout_s;
        if !(t.is_finite() && t > 0.0) {
            v.error(
                "worker.timeout_s",
                format!("timeout_s {t} must be a positive number of seconds"),
            );
        }
        self.validate_limits(&mut v);
        self.validate_daemon(&mut v);
        if self.cases.is_empty() {
            v.error("cases", "no cases; at least one is needed".into());
        }
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (i, case) in self.cases.iter().enumerate() {
            let k = |field: &str| format!("cases[{i}].{field}");
            if let Some(&first) = seen.get(case.name.as_str()) {
                let first_key = format!("cases[{first}].name");
                let at = match v.locate(&first_key) {
                    Some((line, _)) => format!("{first_key}, line {line}"),
                    None => first_key,
                };
                v.error(
                    &k("name"),
                    format!("duplicate case name {:?} (first used by {at})", case.name),
                );
            } else {
                seen.insert(&case.name, i);
            }
            // The name becomes a baseline folder: the store's own rule decides.
            if let Err(e) = crate::baseline::validate_case(&case.name) {
                v.error(
                    &k("name"),
                    format!("{e} (it names the case's baseline folder)"),
                );
            }
            if case.seed > u64::from(u32::MAX) && case.noise == NoiseKind::Numpy {
                v.error(&k("seed"), format!("seed {} is out of range for noise numpy (numpy's RandomState accepts 0..=4294967295)", case.seed));
            }
            if case.steps == 0 {
                v.error(&k("steps"), "steps is 0; at least 1 is needed".into());
            } else if case.steps > MAX_STEPS {
                v.error(
                    &k("steps"),
                    format!(
                        "steps {} is more than SD1.5's {MAX_STEPS} training timesteps",
                        case.steps
                    ),
                );
            }
            if !case.guidance_scale.is_finite() || case.guidance_scale < 0.0 {
                v.error(
                    &k("guidance_scale"),
                    format!(
                        "guidance_scale {} must be a finite number ≥ 0",
                        case.guidance_scale
                    ),
                );
            }
            let mut size_ok = true;
            for (field, value) in [("width", case.width), ("height", case.height)] {
                if value == 0 || value % 8 != 0 {
                    v.error(&k(field), format!("{field} {value} is not a positive multiple of 8 (the VAE works on 8×8 pixel blocks)"));
                    size_ok = false;
                }
            }
            // The host's limits and the noise sources are the pipeline's; a service brings its own.
            let pipeline = case.target == Target::Pipeline || case.parity;
            if size_ok && pipeline {
                if let Err((field, message)) = self.limits.check_size(case.width, case.height) {
                    v.error(&k(field), message);
                }
            }
            if pipeline
                && case.scheduler == SchedulerKind::EulerAncestral
                && !case.noise.supports_step_noise()
            {
                let why = match case.noise {
                    NoiseKind::File => "a noise file holds only the initial latents",
                    _ => "diffusers draws that noise from torch's global RNG, which no numpy seed reproduces",
                };
                v.error(
                    &k("scheduler"),
                    format!("euler-a cannot be used with noise {}: it adds fresh noise every step and {why}; use noise torch-cpu or torch-cuda", case.noise),
                );
            }
            match (case.noise, &case.noise_file) {
                (NoiseKind::File, None) => v.error(&k("noise"), "noise file needs noise_file (a .npy of the initial latents)".into()),
                (NoiseKind::File, Some(p)) if !p.is_file() => {
                    v.error(&k("noise_file"), format!("noise file {} does not exist", p.display()))
                }
                (NoiseKind::File, Some(_)) => {}
                (other, Some(_)) => v.error(&k("noise_file"), format!("noise_file is set but noise is {other}; set noise: file or remove noise_file")),
                (_, None) => {}
            }
            if case.karras && !case.scheduler.supports_karras() {
                v.error(
                    &k("karras"),
                    format!("karras: true cannot be used: the {} scheduler has no Karras sigmas option in diffusers; use euler, lms or dpmpp-2m", case.scheduler),
                );
            }
            if case.batch_size == 0 || case.batch_size > MAX_BATCH {
                v.error(
                    &k("batch_size"),
                    format!("batch_size {} is not in 1..={MAX_BATCH}", case.batch_size),
                );
            } else if case.batch_size > 1 && case.scheduler.needs_step_noise() {
                v.error(&k("batch_size"), format!("batch_size {} cannot be used with {}: each element's per-step noise comes from its own generator, which is not reproduced; use batch_size 1", case.batch_size, case.scheduler));
            }
            if let Some(expr) = &case.schedule {
                if let Err(e) = crate::daemon::schedule::parse_cron(expr) {
                    v.error(&k("schedule"), e);
                }
            }
            self.validate_target(&mut v, case, &k);
            check_thresholds(
                &mut v,
                &k("thresholds"),
                &case.thresholds(&self.thresholds),
                case.thresholds.as_ref(),
            );
        }
        v.errors
    }

    /// What only one target accepts: a service case needs the `service:` section and runs as
    /// a batch of one; `sampler` and `parity` mean nothing to the pipeline.
    fn validate_target(&self, v: &mut Validator<'_>, case: &Case, k: &dyn Fn(&str) -> String) {
        match case.target {
            Target::Service => {
                if self.service.is_none() {
                    v.error(&k("target"), "target service needs a `service:` section (the generation service's URL and API kind)".into());
                }
                if case.batch_size > 1 {
                    v.error(&k("batch_size"), format!("batch_size {} is the pipeline's batch invariance check; a service case is asked for one image", case.batch_size));
                }
                if case.sampler.as_deref() == Some("") {
                    v.error(&k("sampler"), "sampler is empty".into());
                }
                let parity_run = format!("{}{}", case.name, crate::check::PARITY_SUFFIX);
                if case.parity && self.cases.iter().any(|c| c.name == parity_run) {
                    v.error(&k("parity"), format!("parity runs the case on the pipeline as {parity_run}, which is another case's name; rename that case"));
                }
            }
            Target::Pipeline => {
                if case.sampler.is_some() {
                    v.error(&k("sampler"), "sampler is the name sent to the generation service; it needs target: service (the pipeline uses scheduler)".into());
                }
                if case.parity {
                    v.error(&k("parity"), "parity compares a service case with the pipeline; it needs target: service".into());
                }
            }
        }
    }

    /// `schedule`, `timezone`, `alerts`, `remediation` and `daemon` (what `monitor run` needs;
    /// secrets are resolved only when the daemon starts, since `check` does not need them).
    fn validate_daemon(&self, v: &mut Validator<'_>) {
        if let Some(expr) = &self.schedule {
            if let Err(e) = crate::daemon::schedule::parse_cron(expr) {
                v.error("schedule", e);
            }
        }
        if let Err(e) = crate::daemon::schedule::parse_timezone(self.timezone.as_deref()) {
            v.error("timezone", e);
        }
        for (key, message) in crate::alert::config::problems(&self.alerts) {
            v.error(&key, message);
        }
        if let Some(r) = &self.remediation {
            for (key, message) in crate::remediate::validate(r) {
                v.error(&key, message);
            }
        }
        if let Some(url) = &self.report.base_url {
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                v.error(
                    "report.base_url",
                    format!("base_url {url:?} must start with https:// or http:// (the address where the reports folder is served)"),
                );
            }
        }
        if let Some(m) = self.performance.max_slowdown {
            if !(m.is_finite() && m >= 1.0) {
                v.error(
                    "performance.max_slowdown",
                    format!("max_slowdown {m} must be a number ≥ 1 (1.5 = flag runs 50% slower than the baseline)"),
                );
            }
        }
        if !(1..=1000).contains(&self.report.trend) {
            v.error(
                "report.trend",
                format!(
                    "trend {} must be 1 to 1000 (results in each case's sparkline)",
                    self.report.trend
                ),
            );
        }
        if self.daemon.shutdown_grace.is_zero() {
            v.error(
                "daemon.shutdown_grace",
                "shutdown_grace must be more than 0 (the time a running check gets to finish on SIGTERM)".into(),
            );
        }
    }

    /// Cases the model in `model.path` cannot run, by its UNet's own size rule (read from the
    /// graph, no ONNX Runtime). Not part of [`Config::validate`]: the same config is fine for
    /// another export, so `check` reports such a case as that case's error and runs the others;
    /// `monitor config validate` shows them up front. Empty when the graph cannot be read.
    pub fn model_problems(&self, text: &str) -> Vec<ConfigError> {
        let mut v = Validator {
            file: &self.source,
            text,
            errors: Vec::new(),
        };
        let Ok(g) = crate::sd::onnx_graph::scan_unet(&self.model.path.join("unet/model.onnx"))
        else {
            return v.errors;
        };
        for (i, case) in self.cases.iter().enumerate() {
            if let Err(message) = g.check_size(case.width, case.height) {
                let field = if message.starts_with("width") {
                    "width"
                } else {
                    "height"
                };
                v.error(&format!("cases[{i}].{field}"), message);
            }
        }
        v.errors
    }

    fn validate_limits(&self, v: &mut Validator) {
        let l = &self.limits;
        for (key, value) in [
            ("limits.max_width", l.max_width),
            ("limits.max_height", l.max_height),
        ] {
            if value < 8 {
                v.error(
                    key,
                    format!("{} {value} is below 8, the smallest image", &key[7..]),
                );
            }
        }
        if l.max_pixels < 64 {
            v.error(
                "limits.max_pixels",
                format!(
                    "max_pixels {} is below 64 (8×8), the smallest image",
                    l.max_pixels
                ),
            );
        }
        if let Some(g) = l.memory_gib {
            if !(g.is_finite() && g > 0.0) {
                v.error(
                    "limits.memory_gib",
                    format!("memory_gib {g} must be a positive number of GiB (or null for what the host has)"),
                );
            }
        }
    }

    fn validate_model(&self, v: &mut Validator) {
        let p = &self.model.path;
        if !p.exists() {
            v.error(
                "model.path",
                format!("model folder {} does not exist", p.display()),
            );
        } else if !p.is_dir() {
            v.error(
                "model.path",
                format!("model path {} is not a folder", p.display()),
            );
        } else if !p.join("model_index.json").is_file() && !p.join("unet/model.onnx").is_file() {
            v.error(
                "model.path",
                format!("model folder {} has neither model_index.json nor unet/model.onnx (not an SD1.5 ONNX export?)", p.display()),
            );
        }
        if self.model.device_id < 0 {
            v.error(
                "model.device_id",
                format!("device_id {} is negative", self.model.device_id),
            );
        }
        if self.model.threads == Some(0) {
            v.error(
                "model.threads",
                "threads is 0; use null (or leave it out) for ONNX Runtime's choice".into(),
            );
        }
    }
}

/// Range checks; `overrides` limits the checks to the fields a case sets (the rest are global).
fn check_thresholds(
    v: &mut Validator,
    key: &str,
    t: &Thresholds,
    overrides: Option<&PartialThresholds>,
) {
    let set = |o: fn(&PartialThresholds) -> Option<f64>| overrides.is_none_or(|ov| o(ov).is_some());
    let is_case = overrides.is_some();
    if (!is_case || set(|o| o.latent_max_abs))
        && !(t.latent_max_abs.is_finite() && t.latent_max_abs >= 0.0)
    {
        v.error(
            &format!("{key}.latent_max_abs"),
            format!(
                "latent_max_abs {} must be a finite number ≥ 0",
                t.latent_max_abs
            ),
        );
    }
    let unit = |x: f64| x > 0.0 && x <= 1.0;
    if (!is_case || set(|o| o.latent_cosine_min)) && !unit(t.latent_cosine_min) {
        v.error(
            &format!("{key}.latent_cosine_min"),
            format!("latent_cosine_min {} is not in (0, 1]", t.latent_cosine_min),
        );
    }
    if (!is_case || set(|o| o.ssim_min)) && !unit(t.ssim_min) {
        v.error(
            &format!("{key}.ssim_min"),
            format!("ssim_min {} is not in (0, 1]", t.ssim_min),
        );
    }
}

struct Validator<'a> {
    file: &'a Path,
    text: &'a str,
    errors: Vec<ConfigError>,
}

impl Validator<'_> {
    fn locate(&self, key: &str) -> Option<(usize, usize)> {
        // A config built in code is validated with no text: no positions then.
        if self.text.trim().is_empty() {
            return None;
        }
        locate_key(self.text, key)
    }

    fn error(&mut self, key: &str, message: String) {
        let pos = self.locate(key);
        self.errors.push(ConfigError {
            kind: ConfigErrorKind::Invalid,
            file: self.file.to_path_buf(),
            line: pos.map(|p| p.0),
            column: pos.map(|p| p.1),
            key: Some(key.to_string()),
            message,
        });
    }
}

/// `base/p`, lexically normalised (`configs/../onnx/x` → `onnx/x`); absolute `p` stays as is.
pub fn resolve_path(base: &Path, p: &Path) -> PathBuf {
    let joined = if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    };
    let mut out = PathBuf::new();
    for c in joined.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => match out.components().next_back() {
                Some(Component::Normal(_)) => {
                    out.pop();
                }
                Some(Component::RootDir | Component::Prefix(_)) => {}
                _ => out.push(".."),
            },
            other => out.push(other.as_os_str()),
        }
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

/// A serde_yaml error as a schema error: its position, its message without the position.
fn yaml_error(path: &Path, e: &serde_yaml::Error) -> ConfigError {
    let (line, column) = match e.location() {
        Some(l) => (Some(l.line()), Some(l.column())),
        None => (None, None),
    };
    ConfigError {
        kind: ConfigErrorKind::Schema,
        file: path.to_path_buf(),
        line,
        column,
        key: None,
        message: strip_marks(&e.to_string()),
    }
}

/// Strips serde_yaml's ` at line L column C` / ` at position N` from a message (we print them first).
fn strip_marks(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    while let Some(i) = rest.find(" at ") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 4..];
        let skip = mark_len(after);
        if skip == 0 {
            out.push_str(" at ");
            rest = after;
        } else {
            rest = &after[skip..];
        }
    }
    out.push_str(rest);
    out
}

/// Length of a leading `line L column C` or `position N`, else 0.
fn mark_len(s: &str) -> usize {
    fn digits(s: &str) -> usize {
        s.bytes().take_while(u8::is_ascii_digit).count()
    }
    if let Some(r) = s.strip_prefix("line ") {
        let d = digits(r);
        if d > 0 {
            if let Some(r2) = r[d..].strip_prefix(" column ") {
                let d2 = digits(r2);
                if d2 > 0 {
                    return "line ".len() + d + " column ".len() + d2;
                }
            }
        }
    } else if let Some(r) = s.strip_prefix("position ") {
        let d = digits(r);
        if d > 0 {
            return "position ".len() + d;
        }
    }
    0
}

#[derive(Debug, Clone, PartialEq)]
enum Seg {
    Key(String),
    Index(usize),
}

fn parse_key(key: &str) -> Vec<Seg> {
    let mut segs = Vec::new();
    for part in key.split('.') {
        let (name, mut idx) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !name.is_empty() {
            segs.push(Seg::Key(name.to_string()));
        }
        while let Some(r) = idx.strip_prefix('[') {
            let end = r.find(']').unwrap_or(r.len());
            if let Ok(n) = r[..end].parse() {
                segs.push(Seg::Index(n));
            }
            idx = r.get(end + 1..).unwrap_or("");
        }
    }
    segs
}

/// Line and column (1-based) of the value at `key` (e.g. `cases[1].width`) in `text`, or `None`
/// when the key is absent (a default). Found by walking the document with serde_yaml and failing on
/// purpose at the key: serde_yaml stamps the error with that node's position.
pub fn locate_key(text: &str, key: &str) -> Option<(usize, usize)> {
    let segs = parse_key(key);
    match (Locate { target: &segs }).deserialize(serde_yaml::Deserializer::from_str(text)) {
        Ok(()) => None,
        Err(e) => e.location().map(|l| (l.line(), l.column())),
    }
}

struct Locate<'a> {
    target: &'a [Seg],
}

impl<'de> DeserializeSeed<'de> for Locate<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

// With an empty target every visit_* keeps serde's default (an error): that is the "found" signal.
impl<'de> Visitor<'de> for Locate<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("the key being located")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Some((Seg::Key(want), rest)) = self.target.split_first() else {
            return Err(de::Error::custom("found"));
        };
        while let Some(k) = map.next_key::<String>()? {
            if &k == want {
                map.next_value_seed(Locate { target: rest })?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Some((Seg::Index(want), rest)) = self.target.split_first() else {
            return Err(de::Error::custom("found"));
        };
        let mut i = 0;
        loop {
            let more = if i == *want {
                seq.next_element_seed(Locate { target: rest })?
            } else {
                seq.next_element::<IgnoredAny>()?.map(|_| ())
            };
            if more.is_none() {
                return Ok(());
            }
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_paths() {
        assert_eq!(
            resolve_path(Path::new("configs"), Path::new("../onnx/tiny")),
            PathBuf::from("onnx/tiny")
        );
        assert_eq!(
            resolve_path(Path::new(""), Path::new("a/./b")),
            PathBuf::from("a/b")
        );
        assert_eq!(
            resolve_path(Path::new("c"), Path::new("../../x")),
            PathBuf::from("../x")
        );
        assert_eq!(
            resolve_path(Path::new("c"), Path::new("/abs/../p")),
            PathBuf::from("/p")
        );
    }

    #[test]
    fn strips_marks() {
        assert_eq!(strip_marks("bad thing at line 3 column 4"), "bad thing");
        assert_eq!(strip_marks("x at position 5, y at line 1 column 2"), "x, y");
        assert_eq!(strip_marks("look at me"), "look at me");
    }

    #[test]
    fn parses_keys() {
        assert_eq!(
            parse_key("cases[1].thresholds.ssim_min"),
            vec![
                Seg::Key("cases".into()),
                Seg::Index(1),
                Seg::Key("thresholds".into()),
                Seg::Key("ssim_min".into())
            ]
        );
    }

    #[test]
    fn locates_keys() {
        let text = "a: 1\ncases:\n  - name: x\n    width: 5\n  - {name: y, width: 7}\n";
        assert_eq!(locate_key(text, "a"), Some((1, 4)));
        assert_eq!(locate_key(text, "cases[0].width"), Some((4, 12)));
        assert_eq!(locate_key(text, "cases[1].width"), Some((5, 22)));
        assert_eq!(locate_key(text, "cases[1].height"), None);
        assert_eq!(locate_key(text, "cases[2]"), None);
    }
}
