//! An SD1.5 ONNX export on disk: folder layout, I/O introspection, sessions, file hashes.
//!
//! Exporters disagree on dtypes and ranks (int32 or int64 ids; float, int64 or scalar timestep;
//! fp16 or fp32 I/O), so every input is built from what the session declares and fed by name.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use half::f16;
use ndarray::{Array, Array3, Array4, ArrayD, ArrayViewD, Ix3, Ix4};
use ort::session::Session;
use ort::value::{DynValue, Tensor, TensorElementType, ValueType};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::runtime::{Runtime, RuntimeError};

/// Errors from opening, checking or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A required file or folder is absent.
    #[error("{path}: missing {what} (not an SD1.5 ONNX export?)")]
    Missing {
        /// The expected path.
        path: PathBuf,
        /// What should have been there.
        what: &'static str,
    },
    /// A model's declared inputs/outputs are not what SD1.5 needs.
    #[error("{path}: {detail}")]
    BadIo {
        /// The model file.
        path: PathBuf,
        /// What was expected and what was found.
        detail: String,
    },
    /// Session creation failed.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// A session run failed.
    #[error("running {component}: {reason}")]
    Run {
        /// text_encoder, unet or vae_decoder.
        component: &'static str,
        /// ORT's message.
        reason: String,
    },
    /// Reading a file for hashing failed.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Element type of the token-id input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IdsType {
    /// diffusers' convert script.
    Int32,
    /// optimum.
    Int64,
}

/// Floating element type of a model input or output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FloatType {
    /// float32.
    Float32,
    /// float16.
    Float16,
}

/// Element type of the UNet `timestep` input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TimestepType {
    /// float32 (convert script, newer optimum).
    Float32,
    /// float16 (fp16 exports).
    Float16,
    /// int64 (older optimum): fractional timesteps are truncated, as a numpy cast would.
    Int64,
}

/// How the UNet wants its timestep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TimestepSpec {
    /// Element type.
    pub dtype: TimestepType,
    /// 0 (scalar) or 1.
    pub rank: usize,
    /// The declared length when rank 1 and static; `None` when dynamic.
    pub fixed_len: Option<usize>,
}

/// The I/O signature read from the sessions.
#[derive(Debug, Clone, Serialize)]
pub struct ModelIo {
    /// text_encoder `input_ids`.
    pub input_ids: IdsType,
    /// text_encoder output 0 (`last_hidden_state`).
    pub text_hidden: FloatType,
    /// unet `sample`; this is the model's working precision.
    pub unet_sample: FloatType,
    /// unet `timestep`.
    pub timestep: TimestepSpec,
    /// unet `encoder_hidden_states`.
    pub unet_hidden: FloatType,
    /// unet output 0.
    pub unet_out: FloatType,
    /// vae_decoder `latent_sample`.
    pub vae_in: FloatType,
    /// vae_decoder output 0.
    pub vae_out: FloatType,
    /// unet `sample`'s batch when the export fixes it (`None`: dynamic, any batch runs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unet_batch: Option<usize>,
}

/// Paths of the parts of a model folder the pipeline uses.
#[derive(Debug, Clone)]
pub struct ModelDir {
    /// The folder given by the user.
    pub root: PathBuf,
    /// `text_encoder/model.onnx`.
    pub text_encoder: PathBuf,
    /// `unet/model.onnx`.
    pub unet: PathBuf,
    /// `vae_decoder/model.onnx`.
    pub vae_decoder: PathBuf,
    /// `tokenizer/`.
    pub tokenizer: PathBuf,
    /// `scheduler/scheduler_config.json`.
    pub scheduler_config: PathBuf,
}

/// The component folders hashed into metadata (others, e.g. safety_checker, do not affect output).
const HASHED: &[&str] = &[
    "model_index.json",
    "scheduler",
    "tokenizer",
    "text_encoder",
    "unet",
    "vae_decoder",
];

impl ModelDir {
    /// Checks the standard layout and names the first missing piece.
    pub fn open(root: &Path) -> Result<Self, ModelError> {
        if !root.is_dir() {
            return Err(ModelError::Missing {
                path: root.to_path_buf(),
                what: "model folder",
            });
        }
        let need = |rel: &str, what: &'static str| -> Result<PathBuf, ModelError> {
            let p = root.join(rel);
            if p.exists() {
                Ok(p)
            } else {
                Err(ModelError::Missing { path: p, what })
            }
        };
        Ok(Self {
            root: root.to_path_buf(),
            text_encoder: need("text_encoder/model.onnx", "text encoder model")?,
            unet: need("unet/model.onnx", "UNet model")?,
            vae_decoder: need("vae_decoder/model.onnx", "VAE decoder model")?,
            tokenizer: need("tokenizer", "tokenizer folder")?,
            scheduler_config: need("scheduler/scheduler_config.json", "scheduler config")?,
        })
    }

    /// sha256 of every file the pipeline reads, keyed by path relative to the model folder.
    pub fn file_hashes(&self) -> Result<BTreeMap<String, String>, ModelError> {
        let mut files = Vec::new();
        for rel in HASHED {
            collect_files(&self.root.join(rel), &mut files)?;
        }
        let mut out = BTreeMap::new();
        for f in files {
            let rel = f
                .strip_prefix(&self.root)
                .unwrap_or(&f)
                .to_string_lossy()
                .replace('\\', "/");
            out.insert(rel, sha256_file(&f)?);
        }
        Ok(out)
    }

    /// The VAE scaling factor: `vae_decoder/config.json`'s `scaling_factor` when present, else SD1.5's 0.18215.
    pub fn vae_scaling_factor(&self) -> f64 {
        let cfg = self.root.join("vae_decoder/config.json");
        std::fs::read(&cfg)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v.get("scaling_factor").and_then(|s| s.as_f64()))
            .unwrap_or(SD15_VAE_SCALING)
    }
}

/// SD1.5's VAE latent scaling, hard-coded in diffusers' ONNX pipeline.
pub const SD15_VAE_SCALING: f64 = 0.18215;

fn collect_files(p: &Path, out: &mut Vec<PathBuf>) -> Result<(), ModelError> {
    if p.is_file() {
        out.push(p.to_path_buf());
        return Ok(());
    }
    if !p.is_dir() {
        return Ok(());
    }
    let rd = std::fs::read_dir(p).map_err(|source| ModelError::Io {
        path: p.to_path_buf(),
        source,
    })?;
    let mut entries: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
    entries.sort();
    for e in entries {
        collect_files(&e, out)?;
    }
    Ok(())
}

/// Hex sha256 of a file, streamed (UNet weights can be several GB).
pub fn sha256_file(path: &Path) -> Result<String, ModelError> {
    let io = |source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

/// Lower-case hex sha256 of bytes in memory.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The three sessions of a loaded model, with their checked I/O signature.
pub struct SdModel {
    text_encoder: Session,
    unet: Session,
    vae_decoder: Session,
    dir: ModelDir,
    io: ModelIo,
    run_time: Duration,
}

impl SdModel {
    /// Creates the sessions and checks that their I/O is SD1.5's.
    pub fn load(runtime: &Runtime, dir: ModelDir) -> Result<Self, ModelError> {
        let text_encoder = runtime.session(&dir.text_encoder)?;
        let unet = runtime.session(&dir.unet)?;
        let vae_decoder = runtime.session(&dir.vae_decoder)?;
        let io = inspect(&dir, &text_encoder, &unet, &vae_decoder)?;
        Ok(Self {
            text_encoder,
            unet,
            vae_decoder,
            dir,
            io,
            run_time: Duration::ZERO,
        })
    }

    /// The I/O signature.
    pub fn io(&self) -> &ModelIo {
        &self.io
    }

    /// The folder it was loaded from.
    pub fn dir(&self) -> &ModelDir {
        &self.dir
    }

    /// Time spent inside ORT session runs since the last call (for overhead accounting).
    pub fn take_run_time(&mut self) -> Duration {
        std::mem::take(&mut self.run_time)
    }

    /// Text encoder on one sequence of 77 ids: returns `[1, 77, hidden]` as f32.
    pub fn encode_text(&mut self, ids: &[u32]) -> Result<Array3<f32>, ModelError> {
        let run_err = |reason: String| ModelError::Run {
            component: "text_encoder",
            reason: crate::sd::runtime::strip_ansi(&reason),
        };
        let shape = [1usize, ids.len()];
        let value: DynValue = match self.io.input_ids {
            IdsType::Int32 => {
                let v: Vec<i32> = ids.iter().map(|&i| i as i32).collect();
                Tensor::from_array((shape, v))
                    .map_err(|e| run_err(e.to_string()))?
                    .into_dyn()
            }
            IdsType::Int64 => {
                let v: Vec<i64> = ids.iter().map(|&i| i64::from(i)).collect();
                Tensor::from_array((shape, v))
                    .map_err(|e| run_err(e.to_string()))?
                    .into_dyn()
            }
        };
        let start = Instant::now();
        let outputs = self
            .text_encoder
            .run(ort::inputs!["input_ids" => value])
            .map_err(|e| run_err(e.to_string()))?;
        self.run_time += start.elapsed();
        let out = to_f32(&outputs[0]).map_err(run_err)?;
        out.into_dimensionality::<Ix3>()
            .map_err(|e| run_err(format!("output 0 is not rank 3: {e}")))
    }

    /// UNet on `sample` (batch 1 or 2) at timestep `t`, conditioned on `hidden` (same batch).
    pub fn unet(
        &mut self,
        sample: &Array4<f32>,
        t: f64,
        hidden: &Array3<f32>,
    ) -> Result<Array4<f32>, ModelError> {
        let run_err = |reason: String| ModelError::Run {
            component: "unet",
            reason: crate::sd::runtime::strip_ansi(&reason),
        };
        let sample_v =
            float_value(sample.view().into_dyn(), self.io.unet_sample).map_err(run_err)?;
        let hidden_v =
            float_value(hidden.view().into_dyn(), self.io.unet_hidden).map_err(run_err)?;
        let t_v = timestep_value(t, self.io.timestep, sample.shape()[0]).map_err(run_err)?;
        let start = Instant::now();
        let outputs = self
            .unet
            .run(ort::inputs!["sample" => sample_v, "timestep" => t_v, "encoder_hidden_states" => hidden_v])
            .map_err(|e| run_err(e.to_string()))?;
        self.run_time += start.elapsed();
        let out = to_f32(&outputs[0]).map_err(run_err)?;
        out.into_dimensionality::<Ix4>()
            .map_err(|e| run_err(format!("output 0 is not rank 4: {e}")))
    }

    /// VAE decoder on one latent `[1, 4, h, w]` (already divided by the scaling factor): `[1, 3, 8h, 8w]`.
    pub fn decode(&mut self, latents: &Array4<f32>) -> Result<Array4<f32>, ModelError> {
        let run_err = |reason: String| ModelError::Run {
            component: "vae_decoder",
            reason: crate::sd::runtime::strip_ansi(&reason),
        };
        let v = float_value(latents.view().into_dyn(), self.io.vae_in).map_err(run_err)?;
        let start = Instant::now();
        let outputs = self
            .vae_decoder
            .run(ort::inputs!["latent_sample" => v])
            .map_err(|e| run_err(e.to_string()))?;
        self.run_time += start.elapsed();
        let out = to_f32(&outputs[0]).map_err(run_err)?;
        out.into_dimensionality::<Ix4>()
            .map_err(|e| run_err(format!("output 0 is not rank 4: {e}")))
    }
}

fn float_value(a: ArrayViewD<'_, f32>, ty: FloatType) -> Result<DynValue, String> {
    let shape: Vec<usize> = a.shape().to_vec();
    match ty {
        FloatType::Float32 => {
            let v: Vec<f32> = a.iter().copied().collect();
            Tensor::from_array((shape, v))
                .map(|t| t.into_dyn())
                .map_err(|e| e.to_string())
        }
        FloatType::Float16 => {
            let v: Vec<f16> = a.iter().map(|&x| f16::from_f32(x)).collect();
            Tensor::from_array((shape, v))
                .map(|t| t.into_dyn())
                .map_err(|e| e.to_string())
        }
    }
}

fn timestep_value(t: f64, spec: TimestepSpec, batch: usize) -> Result<DynValue, String> {
    // diffusers feeds shape [1] and lets the graph broadcast; a graph with a static batch
    // dimension gets the value repeated instead.
    let shape: Vec<usize> = match (spec.rank, spec.fixed_len) {
        (0, _) => vec![],
        (_, Some(n)) if n == batch => vec![batch],
        _ => vec![1],
    };
    let n = shape.iter().product::<usize>().max(1);
    let r = match spec.dtype {
        TimestepType::Float32 => {
            Tensor::from_array((shape, vec![t as f32; n])).map(|t| t.into_dyn())
        }
        TimestepType::Float16 => {
            Tensor::from_array((shape, vec![f16::from_f64(t); n])).map(|t| t.into_dyn())
        }
        TimestepType::Int64 => Tensor::from_array((shape, vec![t as i64; n])).map(|t| t.into_dyn()),
    };
    r.map_err(|e| e.to_string())
}

fn to_f32(v: &DynValue) -> Result<ArrayD<f32>, String> {
    match v.dtype().tensor_type() {
        Some(TensorElementType::Float32) => v
            .try_extract_array::<f32>()
            .map(|a| a.to_owned())
            .map_err(|e| e.to_string()),
        Some(TensorElementType::Float16) => v
            .try_extract_array::<f16>()
            .map(|a| a.mapv(f16::to_f32))
            .map_err(|e| e.to_string()),
        other => Err(format!("output is {other:?}, expected float32 or float16")),
    }
}

/// A declared tensor input or output: element type and dims (-1 = dynamic).
struct Declared {
    ty: TensorElementType,
    dims: Vec<i64>,
}

fn declared(dtype: &ValueType) -> Option<Declared> {
    match dtype {
        ValueType::Tensor { ty, shape, .. } => Some(Declared {
            ty: *ty,
            dims: shape.iter().copied().collect(),
        }),
        _ => None,
    }
}

fn input(session: &Session, path: &Path, name: &str) -> Result<Declared, ModelError> {
    let names: Vec<&str> = session.inputs().iter().map(|i| i.name()).collect();
    let outlet = session
        .inputs()
        .iter()
        .find(|i| i.name() == name)
        .ok_or_else(|| ModelError::BadIo {
            path: path.to_path_buf(),
            detail: format!("no input named '{name}' (inputs are {names:?})"),
        })?;
    declared(outlet.dtype()).ok_or_else(|| ModelError::BadIo {
        path: path.to_path_buf(),
        detail: format!("input '{name}' is not a tensor"),
    })
}

fn output0(session: &Session, path: &Path) -> Result<Declared, ModelError> {
    let outlet = session.outputs().first().ok_or_else(|| ModelError::BadIo {
        path: path.to_path_buf(),
        detail: "model has no outputs".into(),
    })?;
    declared(outlet.dtype()).ok_or_else(|| ModelError::BadIo {
        path: path.to_path_buf(),
        detail: format!("output '{}' is not a tensor", outlet.name()),
    })
}

fn float_type(d: &Declared, path: &Path, what: &str) -> Result<FloatType, ModelError> {
    match d.ty {
        TensorElementType::Float32 => Ok(FloatType::Float32),
        TensorElementType::Float16 => Ok(FloatType::Float16),
        other => Err(ModelError::BadIo {
            path: path.to_path_buf(),
            detail: format!("{what} is {other:?}, expected float32 or float16"),
        }),
    }
}

fn expect_rank(d: &Declared, rank: usize, path: &Path, what: &str) -> Result<(), ModelError> {
    if d.dims.len() == rank {
        Ok(())
    } else {
        Err(ModelError::BadIo {
            path: path.to_path_buf(),
            detail: format!(
                "{what} has rank {} (shape {:?}), expected rank {rank}",
                d.dims.len(),
                d.dims
            ),
        })
    }
}

/// A static dimension that must equal `want` (dynamic dims, -1, are accepted).
fn expect_dim(
    d: &Declared,
    axis: usize,
    want: i64,
    path: &Path,
    what: &str,
) -> Result<(), ModelError> {
    match d.dims.get(axis) {
        Some(&n) if n >= 0 && n != want => Err(ModelError::BadIo {
            path: path.to_path_buf(),
            detail: format!(
                "{what} has {n} at axis {axis} (shape {:?}), expected {want}",
                d.dims
            ),
        }),
        _ => Ok(()),
    }
}

fn inspect(
    dir: &ModelDir,
    te: &Session,
    unet: &Session,
    vae: &Session,
) -> Result<ModelIo, ModelError> {
    let te_path = &dir.text_encoder;
    let ids = input(te, te_path, "input_ids")?;
    expect_rank(&ids, 2, te_path, "input 'input_ids'")?;
    let input_ids = match ids.ty {
        TensorElementType::Int32 => IdsType::Int32,
        TensorElementType::Int64 => IdsType::Int64,
        other => {
            return Err(ModelError::BadIo {
                path: te_path.clone(),
                detail: format!("input 'input_ids' is {other:?}, expected int32 or int64"),
            })
        }
    };
    let te_out = output0(te, te_path)?;
    expect_rank(&te_out, 3, te_path, "output 0 (last_hidden_state)")?;
    let text_hidden = float_type(&te_out, te_path, "output 0 (last_hidden_state)")?;

    let u_path = &dir.unet;
    let sample = input(unet, u_path, "sample")?;
    expect_rank(&sample, 4, u_path, "input 'sample'")?;
    expect_dim(&sample, 1, 4, u_path, "input 'sample'")?;
    let ts = input(unet, u_path, "timestep")?;
    if ts.dims.len() > 1 {
        return Err(ModelError::BadIo {
            path: u_path.clone(),
            detail: format!(
                "input 'timestep' has rank {}, expected a scalar or rank 1",
                ts.dims.len()
            ),
        });
    }
    let ts_dtype = match ts.ty {
        TensorElementType::Float32 => TimestepType::Float32,
        TensorElementType::Float16 => TimestepType::Float16,
        TensorElementType::Int64 => TimestepType::Int64,
        other => {
            return Err(ModelError::BadIo {
                path: u_path.clone(),
                detail: format!(
                    "input 'timestep' is {other:?}, expected float32, float16 or int64"
                ),
            })
        }
    };
    let timestep = TimestepSpec {
        dtype: ts_dtype,
        rank: ts.dims.len(),
        fixed_len: ts.dims.first().filter(|&&n| n > 0).map(|&n| n as usize),
    };
    let ehs = input(unet, u_path, "encoder_hidden_states")?;
    expect_rank(&ehs, 3, u_path, "input 'encoder_hidden_states'")?;
    if let (Some(&a), Some(&b)) = (te_out.dims.get(2), ehs.dims.get(2)) {
        if a > 0 && b > 0 && a != b {
            return Err(ModelError::BadIo {
                path: u_path.clone(),
                detail: format!("'encoder_hidden_states' width {b} does not match the text encoder's hidden size {a} ({})", te_path.display()),
            });
        }
    }
    let u_out = output0(unet, u_path)?;
    expect_rank(&u_out, 4, u_path, "output 0 (out_sample)")?;
    expect_dim(&u_out, 1, 4, u_path, "output 0 (out_sample)")?;

    let v_path = &dir.vae_decoder;
    let lat = input(vae, v_path, "latent_sample")?;
    expect_rank(&lat, 4, v_path, "input 'latent_sample'")?;
    expect_dim(&lat, 1, 4, v_path, "input 'latent_sample'")?;
    let v_out = output0(vae, v_path)?;
    expect_rank(&v_out, 4, v_path, "output 0 (sample)")?;
    expect_dim(&v_out, 1, 3, v_path, "output 0 (sample)")?;

    Ok(ModelIo {
        input_ids,
        text_hidden,
        unet_sample: float_type(&sample, u_path, "input 'sample'")?,
        unet_batch: sample.dims.first().filter(|&&d| d > 0).map(|&d| d as usize),
        timestep,
        unet_hidden: float_type(&ehs, u_path, "input 'encoder_hidden_states'")?,
        unet_out: float_type(&u_out, u_path, "output 0 (out_sample)")?,
        vae_in: float_type(&lat, v_path, "input 'latent_sample'")?,
        vae_out: float_type(&v_out, v_path, "output 0 (sample)")?,
    })
}

/// Concatenates `[1, ..]` arrays along axis 0 (CFG batches: negative first, then positive).
pub fn concat0<D: ndarray::Dimension + ndarray::RemoveAxis>(
    parts: &[&Array<f32, D>],
) -> Array<f32, D> {
    let views: Vec<_> = parts.iter().map(|a| a.view()).collect();
    ndarray::concatenate(ndarray::Axis(0), &views)
        .expect("callers pass arrays of equal trailing shape")
}
