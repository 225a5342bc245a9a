//! Generation folders: the three files one generation leaves (`latents.npy`, `image.png`,
//! `metadata.json`), their typed metadata, the writer, the verifying reader and the
//! completeness rule. A run's output and a baseline version are both generation folders (a
//! baseline's metadata carries one more block, [`BaselineRecord`], added by the store).
//!
//! A generation service's answer is an *image-only* folder: `image.png` and `metadata.json`
//! with a `service` block ([`ServiceRecord`]) and no latents, since the service returns only
//! pixels. The `service` block is what makes a folder image-only; a pipeline folder without
//! latents is damaged.
//!
//! # The metadata format
//!
//! [`Metadata`] mirrors, field for field and in the same order, the JSON the monitor has always
//! written, so a file written now has exactly the shape of one written before this type existed
//! (`tests/fixtures/generation/v1/` holds such a file, and a test checks it reserializes
//! byte for byte).
//!
//! Compatibility rules:
//! - `metadata_version` is absent from every file written so far, and absent means 1. It is only
//!   written when it is not 1, so version-1 files keep today's shape. It is bumped only for a
//!   change an older reader would misread; [`Metadata::from_value`] refuses versions above
//!   [`METADATA_VERSION`] rather than guess.
//! - Adding a field is not such a change: every field is optional on reading (older monitors did
//!   not write all of them, and the store accepts any object), and fields this monitor does not
//!   know are kept, in order, in each block's `extra` map and written back unchanged. Keeping
//!   them (rather than ignoring them) matters for restore, which rewrites an old version's
//!   metadata, for `baselines show --json`, and for the environment comparison, which diffs
//!   every `execution_provider` field whether or not this monitor knows it.
//! - A field the monitor writes as `null` when it has no value (`negative_prompt`,
//!   `restored_from`, most of `environment`) reads back as `None` and is written as `null`; one
//!   it always fills is skipped when `None`, so a file that lacked it still lacks it when
//!   rewritten. (An older file that lacked a nullable field gains an explicit `null` if it is
//!   rewritten; no file written so far lacks one.)
//! - A field of the wrong type is an error naming the field (`parameters.seed: invalid type:
//!   ...`); a missing field is only an error where a comparison needs it (`metadata::validate`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use crate::sd::pipeline::StageHash;
use anyhow::Context;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::fsutil::atomic_write;
use crate::sd::image::RgbImage;
use crate::sd::model::sha256_hex;
use crate::sd::npy::{self, NpyError};
use crate::stage_data::{StoredStages, STAGES_FILE};

/// The latents file of a generation folder.
pub const LATENTS_FILE: &str = "latents.npy";
/// The image file of a generation folder.
pub const IMAGE_FILE: &str = "image.png";
/// The metadata file of a generation folder; written last, so its presence marks the folder
/// complete.
pub const METADATA_FILE: &str = "metadata.json";
/// A generation folder's files in the order they are written (metadata last).
pub const FILES: [&str; 3] = [LATENTS_FILE, IMAGE_FILE, METADATA_FILE];

/// The newest metadata format this monitor reads and the one it writes.
pub const METADATA_VERSION: u32 = 1;

/// Extra fields of a block, kept as found.
pub type Extra = Map<String, Value>;

fn version_1() -> u32 {
    1
}

fn is_version_1(v: &u32) -> bool {
    *v == 1
}

/// A generation's `metadata.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    /// Format version; absent (1) in every file written so far.
    #[serde(default = "version_1", skip_serializing_if = "is_version_1")]
    pub metadata_version: u32,
    /// Version of the monitor that generated it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitor_version: Option<String>,
    /// When it was generated, RFC 3339 UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    /// The case it was generated for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub case: Option<String>,
    /// The inputs a baseline must share with a run to be comparable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<ParametersRecord>,
    /// The model folder and its files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelRecord>,
    /// Token ids fed to the text encoder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<TokensRecord>,
    /// The initial noise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noise: Option<NoiseRecord>,
    /// UNet timesteps in call order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timesteps: Option<Vec<f64>>,
    /// The ONNX Runtime library that ran it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub onnxruntime: Option<OnnxRuntimeRecord>,
    /// Runtime settings that can change output bits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_provider: Option<ExecutionProviderRecord>,
    /// The host it ran on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<EnvironmentRecord>,
    /// Where the time went.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timings: Option<TimingsRecord>,
    /// Pipeline warnings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warnings: Option<Vec<String>>,
    /// sha256 of each stage's output in pipeline order (absent in files before stage hashes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stages: Option<Vec<StageHash>>,
    /// Batch invariance of a case with `batch_size` > 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<BatchRecord>,
    /// Memory the worker used (peak RSS; GPU memory on CUDA runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<crate::resources::ResourcesRecord>,
    /// The generation service that made it (an image-only generation; absent for the pipeline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceRecord>,
    /// Shapes and hashes of the other two files, added by [`write`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<OutputsRecord>,
    /// The store's record of a baseline version, added by the store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<BaselineRecord>,
    /// Fields this monitor does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

impl Default for Metadata {
    fn default() -> Self {
        Self {
            metadata_version: METADATA_VERSION,
            monitor_version: None,
            created_at: None,
            case: None,
            parameters: None,
            model: None,
            tokens: None,
            noise: None,
            timesteps: None,
            onnxruntime: None,
            execution_provider: None,
            environment: None,
            timings: None,
            warnings: None,
            stages: None,
            batch: None,
            resources: None,
            service: None,
            outputs: None,
            baseline: None,
            extra: Extra::new(),
        }
    }
}

/// `batch`: whether element 0 of a batch equals the batch-1 generation bit for bit.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BatchRecord {
    /// Images in the batch (the UNet batch is twice that under guidance).
    pub size: usize,
    /// Element 0's latents and image equal the batch-1 result bit for bit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identical: Option<bool>,
    /// max |Δ| between element 0's final latents and the batch-1 latents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latent_max_abs: Option<f64>,
    /// Element 0's image equals the batch-1 image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_identical: Option<bool>,
    /// The first stage whose output differs from the batch-1 run's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_difference: Option<String>,
    /// Why the batch could not run (the batch-1 result stands).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `parameters`: one generation's inputs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ParametersRecord {
    /// Prompt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// Negative prompt (`null`: none).
    #[serde(default)]
    pub negative_prompt: Option<String>,
    /// Noise seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Inference steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<u64>,
    /// Guidance scale (the f32 of the case, widened: its JSON is what was always written).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guidance_scale: Option<f64>,
    /// Width in pixels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u64>,
    /// Height in pixels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u64>,
    /// Scheduler name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduler: Option<String>,
    /// Whether Karras sigmas were used (absent in early files: read as false by comparisons).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub karras_sigmas: Option<bool>,
    /// Noise source name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noise: Option<String>,
    /// The `.npy` of `noise: file` (`null` otherwise).
    #[serde(default)]
    pub noise_file: Option<String>,
    /// What generated it: `service` (absent: the monitor's pipeline, as in every older file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The sampler name sent to the service (service generations only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampler: Option<String>,
    /// Fields this monitor does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

impl ParametersRecord {
    /// The parameters a baseline must share with a case to be comparable, as JSON values (absent
    /// ones as `null`, an absent target as `pipeline`), in the order they are checked and
    /// reported.
    pub fn comparable(&self) -> [(&'static str, Value); 12] {
        fn v<T: Into<Value>>(x: Option<T>) -> Value {
            x.map_or(Value::Null, Into::into)
        }
        [
            // First: a case moved between targets differs in everything the target decides.
            (
                "target",
                v(Some(
                    self.target.clone().unwrap_or_else(|| "pipeline".into()),
                )),
            ),
            ("prompt", v(self.prompt.clone())),
            ("negative_prompt", v(self.negative_prompt.clone())),
            ("seed", v(self.seed)),
            ("steps", v(self.steps)),
            ("guidance_scale", v(self.guidance_scale)),
            ("width", v(self.width)),
            ("height", v(self.height)),
            ("scheduler", v(self.scheduler.clone())),
            ("karras_sigmas", v(self.karras_sigmas)),
            ("noise", v(self.noise.clone())),
            ("sampler", v(self.sampler.clone())),
        ]
    }
}

/// `model`: the model folder as loaded.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelRecord {
    /// The folder as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The pipeline's view of the sessions' inputs and outputs; kept as the pipeline reports it
    /// because the monitor only records it for humans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io: Option<Value>,
    /// The VAE latent scaling used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vae_scaling_factor: Option<f64>,
    /// sha256 of every model file the pipeline reads, by path relative to the folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files_sha256: Option<BTreeMap<String, String>>,
    /// Fields this monitor does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `tokens`: the ids fed to the text encoder.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TokensRecord {
    /// The prompt's ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<Vec<u32>>,
    /// The negative prompt's ids (`null` without guidance).
    #[serde(default)]
    pub negative_prompt: Option<Vec<u32>>,
    /// Fields this monitor does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `noise`: where the initial noise came from.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NoiseRecord {
    /// Noise source name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Its seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// sha256 of the initial noise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_sha256: Option<String>,
    /// Fields this monitor does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `onnxruntime`: the library that ran the generation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OnnxRuntimeRecord {
    /// The shared library file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub library: Option<String>,
    /// How it was found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub library_source: Option<String>,
    /// Its version string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// NVIDIA_TF32_OVERRIDE in the generating process (`null`: unset).
    #[serde(default)]
    pub nvidia_tf32_override: Option<String>,
    /// Fields this monitor does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `execution_provider`: the runtime settings that can change output bits.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExecutionProviderRecord {
    /// Provider name (`cpu`, `cuda`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_provider: Option<String>,
    /// CUDA device ordinal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<i64>,
    /// cuDNN convolution algorithm search.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conv_algo_search: Option<String>,
    /// TF32 tensor-core math.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_tf32: Option<bool>,
    /// NHWC convolution kernels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefer_nhwc: Option<bool>,
    /// ORT's deterministic compute option.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deterministic_compute: Option<bool>,
    /// Intra-op threads (`null`: ORT's choice).
    #[serde(default)]
    pub intra_op_threads: Option<u64>,
    /// Graph optimization level (absent: `all`, ONNX Runtime's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graph_optimization: Option<String>,
    /// Settings this monitor does not know (still compared: see the module docs).
    #[serde(flatten)]
    pub extra: Extra,
}

/// `environment`: facts about the host (`null` where unknown).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EnvironmentRecord {
    /// Operating system.
    #[serde(default)]
    pub os: Option<String>,
    /// Kernel release.
    #[serde(default)]
    pub kernel: Option<String>,
    /// CPU model.
    #[serde(default)]
    pub cpu: Option<String>,
    /// Vector extensions that change CPU kernels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_features: Option<Vec<String>>,
    /// GPU name(s).
    #[serde(default)]
    pub gpu_name: Option<String>,
    /// NVIDIA driver version.
    #[serde(default)]
    pub driver: Option<String>,
    /// CUDA version the driver supports.
    #[serde(default)]
    pub cuda: Option<String>,
    /// cuDNN version.
    #[serde(default)]
    pub cudnn: Option<String>,
    /// Host name.
    #[serde(default)]
    pub hostname: Option<String>,
    /// Version of the monitor that collected it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitor_version: Option<String>,
    /// Facts this monitor does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `timings`: seconds per stage.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TimingsRecord {
    /// Tokenizing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenize_s: Option<f64>,
    /// Text encoder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_encoder_s: Option<f64>,
    /// UNet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unet_s: Option<f64>,
    /// Each UNet call, in step order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unet_step_s: Option<Vec<f64>>,
    /// Scheduler math.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduler_s: Option<f64>,
    /// VAE decoder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vae_s: Option<f64>,
    /// Latents to RGB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postprocess_s: Option<f64>,
    /// Inside ONNX Runtime `run` calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ort_run_s: Option<f64>,
    /// The whole generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_s: Option<f64>,
    /// Session creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_s: Option<f64>,
    /// Hashing the model files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_s: Option<f64>,
    /// What ONNX Runtime's optimized-model cache did when the sessions were made ("3 loaded",
    /// "3 written", "stale for unet: rebuilt from the model"); absent when it was off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_cache: Option<String>,
    /// Timings this monitor does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `outputs`: what the other two files hold, recorded when they were written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OutputsRecord {
    /// latents.npy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latents: Option<LatentsRecord>,
    /// image.png.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageRecord>,
    /// stages.npy, when the generation kept its stage tensors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stages: Option<crate::stage_data::StagesRecord>,
    /// Fields this monitor does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `outputs.latents`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LatentsRecord {
    /// File name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Shape, `[1, 4, h, w]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shape: Option<Vec<usize>>,
    /// Element type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dtype: Option<String>,
    /// sha256 of the file's bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Fields this monitor does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `outputs.image`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// File name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Width in pixels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    /// Height in pixels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    /// sha256 of the RGB8 pixels (not of the PNG, whose encoding may vary).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256_rgb: Option<String>,
    /// Fields this monitor does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `service`: the generation service that answered, and what it said about the generation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceRecord {
    /// Its API: a1111, comfyui, http-json.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Scheme, host and port (no credentials, path or query).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// sha256 of the request template (ComfyUI workflow, http-json body) before filling: an
    /// edited template changes the outputs without any case parameter changing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_sha256: Option<String>,
    /// What the service reported, by source (`a1111`: `sd_model_hash`, `version`, …), so a
    /// swapped model or an upgraded server shows in the environment differences.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<Map<String, Value>>,
    /// Fields this monitor does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `baseline`: the store's record of one version.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BaselineRecord {
    /// Case name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub case: Option<String>,
    /// Version number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// When it was written, RFC 3339 UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    /// Who wrote it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub who: Option<String>,
    /// Why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
    /// The version it restores (`null`: not a restore).
    #[serde(default)]
    pub restored_from: Option<u32>,
    /// sha256 of latents.npy's bytes (absent in early versions: see `outputs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latents_npy_sha256: Option<String>,
    /// sha256 of the image's RGB8 pixels (absent in early versions: see `outputs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_rgb_sha256: Option<String>,
    /// Fields this monitor does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

/// The sha256s a generation's metadata records for its other two files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedHashes {
    /// Of latents.npy's bytes (`None`: an image-only generation).
    pub latents_npy: Option<String>,
    /// Of the image's RGB8 pixels.
    pub image_rgb: String,
}

impl Metadata {
    /// Reads metadata from parsed JSON; the error is one line, "FIELD: what is wrong" where a
    /// field is at fault.
    pub fn from_value(value: &Value) -> Result<Metadata, String> {
        if !value.is_object() {
            return Err("not a JSON object".to_string());
        }
        // Before the fields: a newer format may have changed them, and its version is the
        // useful error, not the first field that no longer reads.
        match value.get("metadata_version").and_then(Value::as_u64) {
            Some(0) => {
                return Err("metadata_version: 0 is not a version (they start at 1)".to_string())
            }
            Some(v) if v > u64::from(METADATA_VERSION) => {
                return Err(format!(
                    "metadata_version: {v} is newer than this monitor reads ({METADATA_VERSION}); upgrade the monitor"
                ))
            }
            _ => {}
        }
        serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let reason = if path == "." {
                e.inner().to_string()
            } else {
                format!("{path}: {}", e.inner())
            };
            // The path holds the file's own keys, which may contain line breaks.
            one_line(&reason)
        })
    }

    /// Reads metadata from `metadata.json` bytes (see [`Metadata::from_value`]).
    pub fn from_slice(bytes: &[u8]) -> Result<Metadata, String> {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        Metadata::from_value(&value)
    }

    /// The metadata as a JSON value, for code that works on any field by name (the environment
    /// comparison, displays); this is the one place metadata becomes untyped again.
    pub fn to_value(&self) -> Value {
        // Serializing cannot fail: every key is a string and there is no path or other
        // fallible type left in the struct.
        serde_json::to_value(self).unwrap_or_default()
    }

    /// The bytes of `metadata.json`: pretty JSON and a trailing newline, as always written.
    pub fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        let mut s = serde_json::to_vec_pretty(self)?;
        s.push(b'\n');
        Ok(s)
    }

    /// `model.files_sha256`, empty when not recorded.
    pub fn model_files(&self) -> &BTreeMap<String, String> {
        static NONE: BTreeMap<String, String> = BTreeMap::new();
        self.model
            .as_ref()
            .and_then(|m| m.files_sha256.as_ref())
            .unwrap_or(&NONE)
    }

    /// True for a generation service's answer: an image, no latents (see the module docs).
    pub fn is_image_only(&self) -> bool {
        self.service.is_some()
    }

    /// The hashes to verify the other two files against: the store's `baseline` block, else
    /// (early baselines, run outputs) the `outputs` block. The error says what is missing; only
    /// an image-only generation may lack the latents' hash.
    pub fn recorded_hashes(&self) -> Result<RecordedHashes, String> {
        let b = self.baseline.as_ref();
        let o = self.outputs.as_ref();
        let pick = |store: Option<&String>, out: Option<&String>, key: &str, what: &str| {
            store
                .or(out)
                .filter(|s| is_sha256(s))
                .cloned()
                .ok_or_else(|| {
                    format!("no sha256 of {what} recorded (baseline.{key} or outputs.*)")
                })
        };
        let latents_npy = pick(
            b.and_then(|b| b.latents_npy_sha256.as_ref()),
            o.and_then(|o| o.latents.as_ref())
                .and_then(|l| l.sha256.as_ref()),
            "latents_npy_sha256",
            LATENTS_FILE,
        );
        Ok(RecordedHashes {
            latents_npy: match latents_npy {
                Ok(h) => Some(h),
                Err(_) if self.is_image_only() => None,
                Err(e) => return Err(e),
            },
            image_rgb: pick(
                b.and_then(|b| b.image_rgb_sha256.as_ref()),
                o.and_then(|o| o.image.as_ref())
                    .and_then(|i| i.sha256_rgb.as_ref()),
                "image_rgb_sha256",
                "the image's pixels",
            )?,
        })
    }
}

/// `s` with control characters escaped, so that it stays one line.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| match c.is_control() {
            true => c.escape_default().to_string(),
            false => c.to_string(),
        })
        .collect()
}

/// Converts a value into the record of it: its serde form, typed. Blocks that come from the
/// pipeline (runtime info, settings, timings) are recorded this way so that a field the
/// pipeline adds is recorded (in `extra`) without a change here.
pub fn record_of<T: Serialize, R: DeserializeOwned>(value: &T) -> Result<R, serde_json::Error> {
    serde_json::from_value(serde_json::to_value(value)?)
}

/// True for 64 hex digits.
pub fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Errors reading a generation folder; every message is one line naming the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum GenerationError {
    /// A file is missing.
    #[error("{path}: missing (incomplete or damaged)")]
    Missing {
        /// The file.
        path: PathBuf,
    },
    /// A file could not be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// `latents.npy` is not a valid array (the npy error names the file).
    #[error(transparent)]
    Npy(#[from] NpyError),
    /// `latents.npy` has the wrong shape.
    #[error("{path}: latents shape {shape:?} is not [1, 4, h, w]")]
    LatentShape {
        /// The file.
        path: PathBuf,
        /// Its shape.
        shape: Vec<usize>,
    },
    /// `image.png` cannot be decoded.
    #[error("{path}: not a decodable PNG: {reason}")]
    Png {
        /// The file.
        path: PathBuf,
        /// Decoder's message.
        reason: String,
    },
    /// `image.png` does not match the latents' size.
    #[error("{path}: image is {width}x{height} but the latents ({latent_w}x{latent_h}) need {}x{}", latent_w * 8, latent_h * 8)]
    ImageSize {
        /// The file.
        path: PathBuf,
        /// Image width.
        width: u32,
        /// Image height.
        height: u32,
        /// Latent width.
        latent_w: usize,
        /// Latent height.
        latent_h: usize,
    },
    /// `metadata.json` is not valid metadata.
    #[error("{path}: invalid metadata: {reason}")]
    Metadata {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A file does not match what its metadata recorded (or nothing was recorded). The wording
    /// predates run outputs being verified too and is kept: alerts and scripts match it.
    #[error("{path}: baseline damaged: {reason}")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What does not match.
        reason: String,
    },
}

fn read_err(path: &Path) -> impl FnOnce(std::io::Error) -> GenerationError + '_ {
    move |source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            GenerationError::Missing {
                path: path.to_path_buf(),
            }
        } else {
            GenerationError::Read {
                path: path.to_path_buf(),
                source,
            }
        }
    }
}

/// Final latents as read from `latents.npy`.
#[derive(Debug, Clone, PartialEq)]
pub struct Latents {
    /// Values, flat, C order.
    pub values: Vec<f32>,
    /// Their shape, `[1, 4, h, w]`.
    pub shape: Vec<usize>,
}

/// A generation folder's files, read and verified.
#[derive(Debug, Clone)]
pub struct GenerationFiles {
    /// Final latents (`None`: an image-only generation, see [`Metadata::is_image_only`]).
    pub latents: Option<Latents>,
    /// The image, `(8w) x (8h)` for a pipeline generation.
    pub image: RgbImage,
    /// metadata.json.
    pub metadata: Metadata,
    /// stages.npy, verified, when the metadata lists one.
    pub stages: Option<StoredStages>,
}

impl Latents {
    /// Values and shape, as a comparison takes them.
    pub fn view(&self) -> (&[f32], &[usize]) {
        (&self.values, &self.shape)
    }

    /// [`crate::compare::latent_sha256`] of `latents`, or `image only` for a generation without.
    pub fn sha256_of(latents: Option<&Latents>) -> String {
        latents.map_or_else(
            || "image only".to_string(),
            |l| crate::compare::latent_sha256(&l.values),
        )
    }
}

impl GenerationFiles {
    /// What a comparison reads of this generation.
    pub fn outputs(&self) -> crate::compare::Outputs<'_> {
        crate::compare::Outputs::of(
            self.latents.as_ref(),
            &self.image,
            &self.metadata,
            self.stages.as_ref(),
        )
    }

    /// The latents, or an error naming `dir` for an image-only generation (a service's answer)
    /// where the pipeline's outputs are needed.
    pub fn pipeline_latents(&self, dir: &Path) -> Result<&Latents, String> {
        self.latents.as_ref().ok_or_else(|| {
            format!(
                "{}: a generation service's image-only output, not the pipeline's (no latents)",
                dir.display()
            )
        })
    }
}

/// Checks `shape` is `[1, 4, h, w]` (h, w > 0) and returns `(h, w)`.
pub fn latent_hw(shape: &[usize]) -> Option<(usize, usize)> {
    match *shape {
        [1, 4, h, w] if h > 0 && w > 0 => Some((h, w)),
        _ => None,
    }
}

fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

/// Reads `dir/metadata.json`.
pub fn read_metadata(path: &Path) -> Result<Metadata, GenerationError> {
    let bytes = std::fs::read(path).map_err(read_err(path))?;
    Metadata::from_slice(&bytes).map_err(|reason| GenerationError::Metadata {
        path: path.to_path_buf(),
        reason,
    })
}

/// True once a generation folder is complete: the metadata, written last, is there.
pub fn is_complete(dir: &Path) -> bool {
    dir.join(METADATA_FILE).exists()
}

/// Reads and verifies `metadata.json`, `latents.npy` and `image.png` in `dir`, in that order:
/// metadata recording the hashes of the other two; latents a float `[1,4,h,w]` array whose
/// file bytes have the recorded sha256; the PNG decodable, `(8w) x (8h)`, with the recorded
/// sha256 of its RGB pixels. Each failure names the file at fault.
pub fn read(dir: &Path) -> Result<GenerationFiles, GenerationError> {
    let meta_path = dir.join(METADATA_FILE);
    let metadata = read_metadata(&meta_path)?;
    let want = metadata
        .recorded_hashes()
        .map_err(|reason| GenerationError::Damaged {
            path: meta_path.clone(),
            reason,
        })?;
    let latents = match &want.latents_npy {
        Some(hash) => Some(read_latents(&dir.join(LATENTS_FILE), hash)?),
        None => None,
    };
    let img_path = dir.join(IMAGE_FILE);
    let png = std::fs::read(&img_path).map_err(read_err(&img_path))?;
    let image = RgbImage::from_png(&png).map_err(|e| GenerationError::Png {
        path: img_path.clone(),
        reason: e.to_string(),
    })?;
    if let Some((h, w)) = latents.as_ref().and_then(|l| latent_hw(&l.shape)) {
        if image.width as usize != w * 8 || image.height as usize != h * 8 {
            return Err(GenerationError::ImageSize {
                path: img_path,
                width: image.width,
                height: image.height,
                latent_w: w,
                latent_h: h,
            });
        }
    }
    let got = sha256_hex(&image.pixels);
    if !got.eq_ignore_ascii_case(&want.image_rgb) {
        return Err(GenerationError::Damaged {
            path: img_path,
            reason: format!(
                "sha256 of its RGB pixels {}… differs from the {}… recorded in {METADATA_FILE}",
                short(&got),
                short(&want.image_rgb)
            ),
        });
    }
    let stages = match metadata.outputs.as_ref().and_then(|o| o.stages.as_ref()) {
        Some(record) => {
            let p = dir.join(STAGES_FILE);
            let bytes = std::fs::read(&p).map_err(read_err(&p))?;
            Some(
                StoredStages::parse(bytes, record, &p)
                    .map_err(|reason| GenerationError::Damaged { path: p, reason })?,
            )
        }
        None => None,
    };
    Ok(GenerationFiles {
        latents,
        image,
        metadata,
        stages,
    })
}

/// Reads `latents.npy`: a float `[1,4,h,w]` array whose bytes have sha256 `want`.
fn read_latents(lat_path: &Path, want: &str) -> Result<Latents, GenerationError> {
    let npy_bytes = std::fs::read(lat_path).map_err(read_err(lat_path))?;
    let arr = npy::parse_npy(&npy_bytes, lat_path)?;
    if latent_hw(&arr.shape).is_none() {
        return Err(GenerationError::LatentShape {
            path: lat_path.to_path_buf(),
            shape: arr.shape,
        });
    }
    let got = sha256_hex(&npy_bytes);
    if !got.eq_ignore_ascii_case(want) {
        return Err(GenerationError::Damaged {
            path: lat_path.to_path_buf(),
            reason: format!(
                "sha256 {}… differs from the {}… recorded in {METADATA_FILE}",
                short(&got),
                short(want)
            ),
        });
    }
    Ok(Latents {
        values: arr.data,
        shape: arr.shape,
    })
}

/// Encodes latents as latents.npy bytes (float32, C order).
pub fn encode_latents(shape: &[usize], latents: &[f32]) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    npy::write_npy_f32(&mut bytes, shape, latents)?;
    Ok(bytes)
}

impl OutputsRecord {
    /// The record of latents encoded as `npy_bytes` with `shape` (none: image-only), and of
    /// `image`.
    pub fn of(latents: Option<(&[usize], &[u8])>, image: &RgbImage) -> OutputsRecord {
        OutputsRecord {
            latents: latents.map(|(shape, npy_bytes)| LatentsRecord {
                file: Some(LATENTS_FILE.to_string()),
                shape: Some(shape.to_vec()),
                dtype: Some("float32".to_string()),
                sha256: Some(sha256_hex(npy_bytes)),
                extra: Extra::new(),
            }),
            image: Some(ImageRecord {
                file: Some(IMAGE_FILE.to_string()),
                width: Some(image.width),
                height: Some(image.height),
                sha256_rgb: Some(sha256_hex(&image.pixels)),
                extra: Extra::new(),
            }),
            stages: None,
            extra: Extra::new(),
        }
    }
}

/// Writes a generation folder: `latents.npy`, `image.png`, `stages.npy` when given, then
/// `metadata.json` (with its `outputs` block set to the other files' shapes and hashes), each
/// atomically. A reader that finds metadata.json finds the others complete. Returns the
/// metadata as written.
pub fn write(
    dir: &Path,
    latents: &[f32],
    shape: &[usize],
    image: &RgbImage,
    stages: Option<&StoredStages>,
    metadata: &Metadata,
) -> anyhow::Result<Metadata> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating output folder {}", dir.display()))?;
    let npy_bytes = encode_latents(shape, latents).context("encoding latents.npy")?;
    let png = image.to_png().context("encoding image.png")?;
    let mut metadata = metadata.clone();
    let mut outputs = OutputsRecord::of(Some((shape, &npy_bytes)), image);
    if let Some(st) = stages {
        let p = dir.join(STAGES_FILE);
        atomic_write(&p, &st.bytes).with_context(|| format!("writing {}", p.display()))?;
        outputs.stages = Some(st.record.clone());
    }
    metadata.outputs = Some(outputs);
    let json = metadata.to_json().context("encoding metadata.json")?;
    for (name, bytes) in FILES.into_iter().zip([npy_bytes, png, json]) {
        let p = dir.join(name);
        atomic_write(&p, &bytes).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(metadata)
}

/// Writes an image-only generation folder (a service's answer): `image.png`, then
/// `metadata.json` with its `outputs` block; `metadata` must carry a `service` block.
pub fn write_image_only(dir: &Path, image: &RgbImage, metadata: &Metadata) -> anyhow::Result<()> {
    anyhow::ensure!(
        metadata.is_image_only(),
        "an image-only generation needs a service block"
    );
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating output folder {}", dir.display()))?;
    let png = image.to_png().context("encoding image.png")?;
    let mut metadata = metadata.clone();
    metadata.outputs = Some(OutputsRecord::of(None, image));
    let json = metadata.to_json().context("encoding metadata.json")?;
    for (name, bytes) in [(IMAGE_FILE, png), (METADATA_FILE, json)] {
        let p = dir.join(name);
        atomic_write(&p, &bytes).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

/// Copies the generation folder `from` into the existing folder `to`: its three files (two for
/// an image-only generation), and
/// `stages.npy` when `with_stages` (else the copy's metadata no longer lists one, so that it
/// stays a complete folder; reports keep the copy without the 2 MB of tensors).
pub fn copy_folder(from: &Path, to: &Path, with_stages: bool) -> anyhow::Result<()> {
    let src = from.join(METADATA_FILE);
    let mut metadata = read_metadata(&src)?;
    let files: &[&str] = match metadata.is_image_only() {
        true => &[IMAGE_FILE],
        false => &[LATENTS_FILE, IMAGE_FILE],
    };
    for f in files {
        let (src, dst) = (from.join(f), to.join(f));
        std::fs::copy(&src, &dst)
            .with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
    }
    let listed = metadata
        .outputs
        .as_ref()
        .is_some_and(|o| o.stages.is_some());
    if listed && with_stages {
        let (s, d) = (from.join(STAGES_FILE), to.join(STAGES_FILE));
        std::fs::copy(&s, &d)
            .with_context(|| format!("copying {} to {}", s.display(), d.display()))?;
    }
    let dst = to.join(METADATA_FILE);
    if listed && !with_stages {
        if let Some(o) = metadata.outputs.as_mut() {
            o.stages = None;
        }
        let json = metadata.to_json().context("encoding metadata.json")?;
        atomic_write(&dst, &json).with_context(|| format!("writing {}", dst.display()))?;
    } else {
        std::fs::copy(&src, &dst)
            .with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn absent_version_is_1_and_is_not_written() {
        let m = Metadata::from_value(&json!({"case": "fox"})).unwrap();
        assert_eq!(m.metadata_version, 1);
        assert_eq!(m.to_value(), json!({"case": "fox"}));
    }

    #[test]
    fn unknown_versions_are_refused_by_name() {
        for (v, expect) in [(2, "newer than this monitor"), (0, "not a version")] {
            // A newer format may have reshaped fields: the version is what gets reported.
            let m = json!({"metadata_version": v, "parameters": ["reshaped"]});
            let e = Metadata::from_value(&m).unwrap_err();
            assert!(
                e.starts_with("metadata_version: ") && e.contains(expect),
                "{e}"
            );
        }
    }

    #[test]
    fn type_errors_name_the_field() {
        let cases = [
            (json!({"parameters": {"seed": "1"}}), "parameters.seed: "),
            (json!({"execution_provider": "cpu"}), "execution_provider: "),
            (
                json!({"model": {"files_sha256": {"unet/model.onnx": 5}}}),
                "model.files_sha256.unet/model.onnx: ",
            ),
            (json!({"case": 3}), "case: "),
        ];
        for (v, expect) in cases {
            let e = Metadata::from_value(&v).unwrap_err();
            assert!(e.starts_with(expect) && !e.contains('\n'), "{e}");
        }
        assert_eq!(
            Metadata::from_value(&json!([1])).unwrap_err(),
            "not a JSON object"
        );
    }

    #[test]
    fn unknown_fields_are_kept_in_place_of_their_block() {
        let v = json!({
            "case": "fox",
            "parameters": {"prompt": "a", "negative_prompt": null, "clip_skip": 2, "noise_file": null},
            "execution_provider": {"execution_provider": "cuda", "intra_op_threads": null, "new_flag": true},
            "from_the_future": {"x": [1]},
        });
        let m = Metadata::from_value(&v).unwrap();
        assert_eq!(m.extra["from_the_future"], json!({"x": [1]}));
        let ep = m.execution_provider.as_ref().unwrap();
        assert_eq!(ep.extra["new_flag"], json!(true));
        assert_eq!(m.to_value(), v);
    }

    #[test]
    fn hashes_come_from_the_baseline_block_first() {
        let (a, b, c) = ("a".repeat(64), "b".repeat(64), "c".repeat(64));
        let m = Metadata::from_value(&json!({
            "outputs": {"latents": {"sha256": a}, "image": {"sha256_rgb": b}},
            "baseline": {"latents_npy_sha256": c},
        }))
        .unwrap();
        let h = m.recorded_hashes().unwrap();
        assert_eq!((h.latents_npy, h.image_rgb), (Some(c), b));
        let e = Metadata::default().recorded_hashes().unwrap_err();
        assert!(e.contains("baseline.latents_npy_sha256"), "{e}");
    }
}
