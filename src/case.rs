//! A test case (everything that determines an output) and running cases on one loaded model,
//! writing each result as a generation folder (see [`crate::generation`]).
//!
//! `monitor generate` runs one case in-process; `monitor check`/`rebaseline` run many in a
//! worker process (see `worker`). Both write the same files, so a baseline is a generation.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::fingerprint::Environment;
use crate::generation::{
    self, record_of, BatchRecord, Metadata, ModelRecord, NoiseRecord, ParametersRecord,
    TimingsRecord, TokensRecord,
};
use crate::limits::{Capacity, Limits};
use crate::sd::model::FloatType;
use crate::sd::noise::{self, NoiseKind};
use crate::sd::pipeline::{
    first_difference, GenerateParams, Generation, LoadedModel, ReplayInputs,
};
use crate::sd::runtime::ExecutionProvider;
use crate::sd::runtime::Runtime;
use crate::sd::scheduler::SchedulerKind;
use crate::stage_data::StoredStages;

/// One generation's inputs, as config files and the CLI name them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseSpec {
    /// Case name (baseline folder name).
    pub name: String,
    /// Prompt.
    pub prompt: String,
    /// Negative prompt; `None` is `""` under guidance.
    pub negative_prompt: Option<String>,
    /// Noise seed.
    pub seed: u64,
    /// Inference steps.
    pub steps: usize,
    /// Guidance scale.
    pub guidance_scale: f32,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Scheduler.
    #[serde(with = "as_str")]
    pub scheduler: SchedulerKind,
    /// Noise source.
    #[serde(with = "as_str")]
    pub noise: NoiseKind,
    /// `.npy` for `noise: file`.
    pub noise_file: Option<PathBuf>,
    /// Karras sigmas (euler, lms, dpmpp-2m).
    pub karras: bool,
    /// Also run as element 0 of a batch of this many (1: no batch run).
    #[serde(default = "one")]
    pub batch_size: usize,
}

fn one() -> usize {
    1
}

impl CaseSpec {
    /// The pipeline parameters.
    pub fn params(&self) -> GenerateParams {
        GenerateParams {
            prompt: self.prompt.clone(),
            negative_prompt: self.negative_prompt.clone(),
            steps: self.steps,
            guidance_scale: self.guidance_scale,
            width: self.width,
            height: self.height,
            scheduler: self.scheduler,
        }
    }

    /// Rejects what the pipeline would only reject after the model is loaded.
    pub fn check(&self) -> Result<()> {
        if self.karras && !self.scheduler.supports_karras() {
            bail!(
                "scheduler {} has no Karras sigmas option in diffusers; use euler, lms or dpmpp-2m",
                self.scheduler
            );
        }
        Ok(())
    }

    /// The `parameters` block of metadata.json (what a baseline must match to be comparable).
    pub fn parameters(&self) -> ParametersRecord {
        ParametersRecord {
            prompt: Some(self.prompt.clone()),
            negative_prompt: self.negative_prompt.clone(),
            seed: Some(self.seed),
            steps: Some(self.steps as u64),
            guidance_scale: Some(f64::from(self.guidance_scale)),
            width: Some(u64::from(self.width)),
            height: Some(u64::from(self.height)),
            scheduler: Some(self.scheduler.to_string()),
            karras_sigmas: Some(self.karras),
            noise: Some(self.noise.to_string()),
            noise_file: self
                .noise_file
                .as_ref()
                .map(|p| p.to_string_lossy().into_owned()),
            target: None,
            sampler: None,
            extra: Default::default(),
        }
    }
}

/// Serde through `Display`/`FromStr`, so enums read and write as their CLI names.
pub mod as_str {
    use std::fmt::Display;
    use std::str::FromStr;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes `v.to_string()`.
    pub fn serialize<T: Display, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    /// Parses with `FromStr`, reporting its message.
    pub fn deserialize<'de, T, D>(d: D) -> Result<T, D::Error>
    where
        T: FromStr,
        T::Err: Display,
        D: Deserializer<'de>,
    {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A loaded model plus what every case's metadata shares.
pub struct CaseRunner<'r> {
    runtime: &'r Runtime,
    loaded: LoadedModel,
    model_path: PathBuf,
    files: BTreeMap<String, String>,
    hash_s: f64,
    environment: Environment,
    capacity: Capacity,
    meter: crate::resources::Meter,
    /// What the session cache did at load ("3 loaded", "3 written", "stale …"); `None`: off.
    session_cache: Option<String>,
}

impl<'r> CaseRunner<'r> {
    /// Loads the model once (session creation dominates short checks), hashes its files, and
    /// learns what sizes it and the host can run under `limits`.
    pub fn load(
        runtime: &'r Runtime,
        model_path: &Path,
        environment: Environment,
        limits: &Limits,
    ) -> Result<Self> {
        // Hashing reads every model file once more; it runs beside session creation (which
        // dominates a cold start) instead of after it. The hashes still gate every verdict.
        let (loaded, hashed) = std::thread::scope(|scope| {
            let hasher = scope.spawn(|| {
                let start = Instant::now();
                let files =
                    crate::sd::model::ModelDir::open(model_path).and_then(|dir| dir.file_hashes());
                (files, start.elapsed().as_secs_f64())
            });
            (LoadedModel::load(runtime, model_path), hasher.join())
        });
        let loaded = loaded.with_context(|| format!("loading model {}", model_path.display()))?;
        let (files, hash_s) =
            hashed.map_err(|_| anyhow::anyhow!("the model-hashing thread panicked"))?;
        let files = files.with_context(|| format!("hashing model {}", model_path.display()))?;
        let (loaded, session_cache) = settle_session_cache(runtime, model_path, &files, loaded)?;
        let element_bytes = match loaded.model.io().unet_sample {
            FloatType::Float16 => 2,
            FloatType::Float32 => 4,
        };
        let capacity = Capacity::probe(
            model_path,
            runtime.settings().execution_provider,
            element_bytes,
            limits,
        );
        Ok(Self {
            runtime,
            loaded,
            model_path: model_path.to_path_buf(),
            files,
            hash_s,
            environment,
            capacity,
            meter: Default::default(),
            session_cache,
        })
    }

    /// sha256 of every model file the pipeline reads.
    pub fn model_files(&self) -> &BTreeMap<String, String> {
        &self.files
    }

    /// Seconds spent creating sessions.
    pub fn load_s(&self) -> f64 {
        self.loaded.load_s
    }

    /// Runs one case; `on_step(done, total)` after each UNet call.
    pub fn run(
        &mut self,
        case: &CaseSpec,
        on_step: &mut dyn FnMut(usize, usize),
    ) -> Result<(Generation, Metadata)> {
        self.execute(case, on_step, None)
    }

    /// Replays each network of `case` once (see `sd::pipeline::replay`), decoding
    /// `final_latents`, a baseline's final latents: a quick check's run.
    pub fn replay(
        &mut self,
        case: &CaseSpec,
        inputs: &ReplayInputs<'_>,
    ) -> Result<(Generation, Metadata)> {
        self.execute(case, &mut |_, _| {}, Some(inputs))
    }

    fn execute(
        &mut self,
        case: &CaseSpec,
        on_step: &mut dyn FnMut(usize, usize),
        replay: Option<&ReplayInputs<'_>>,
    ) -> Result<(Generation, Metadata)> {
        case.check()
            .with_context(|| format!("case {}: karras", case.name))?;
        // Before any allocation of the case's size: a size the UNet or the host cannot run must
        // be this case's error, not an abort of the process that runs every case.
        self.capacity
            .check(case.width, case.height, case.guidance_scale > 1.0)
            .map_err(|e| anyhow::anyhow!("case {}: {e}", case.name))?;
        let saved = self.loaded.scheduler_config.use_karras_sigmas;
        self.loaded.scheduler_config.use_karras_sigmas = saved || case.karras;
        let mut source = noise::build(case.noise, case.seed, case.noise_file.as_deref())
            .with_context(|| format!("case {}: noise", case.name))?;
        let result = match replay {
            Some(inputs) => self.loaded.replay(&case.params(), source.as_mut(), inputs),
            None => self
                .loaded
                .generate(&case.params(), source.as_mut(), on_step),
        };
        let karras =
            self.loaded.scheduler_config.use_karras_sigmas && case.scheduler.supports_karras();
        let gen = result.with_context(|| {
            format!(
                "case {}: generating with {}",
                case.name,
                self.model_path.display()
            )
        });
        let batch = match &gen {
            Ok(g) if case.batch_size > 1 && replay.is_none() => {
                Some(self.batch_invariance(case, g))
            }
            _ => None,
        };
        self.loaded.scheduler_config.use_karras_sigmas = saved;
        let gen = gen?;
        let mut meta = self
            .metadata(case, karras, &gen)
            .with_context(|| format!("case {}: recording metadata", case.name))?;
        meta.batch = batch;
        let gpu = self.runtime.settings().execution_provider == ExecutionProvider::Cuda;
        meta.resources = Some(self.meter.sample(gpu));
        Ok((gen, meta))
    }

    /// Runs `case` again as element 0 of a batch of `case.batch_size` (element k seeded with
    /// seed + k) and says whether it equals `single`, the batch-1 generation, bit for bit. A
    /// batch that cannot run is recorded as such; the batch-1 result stands either way.
    fn batch_invariance(&mut self, case: &CaseSpec, single: &Generation) -> BatchRecord {
        let mut record = BatchRecord {
            size: case.batch_size,
            ..BatchRecord::default()
        };
        let sources: Result<Vec<_>> = (0..case.batch_size as u64)
            .map(|k| {
                let seed = case
                    .seed
                    .checked_add(k)
                    .context("seed + batch index overflows")?;
                noise::build(case.noise, seed, case.noise_file.as_deref())
                    .with_context(|| format!("noise for batch element {k}"))
            })
            .collect();
        let result = match sources {
            Ok(mut sources) => {
                let mut refs: Vec<&mut dyn noise::NoiseSource> = Vec::new();
                for b in sources.iter_mut() {
                    refs.push(b.as_mut());
                }
                self.loaded
                    .generate_batch(&case.params(), &mut refs, &mut |_, _| {})
                    .map_err(anyhow::Error::from)
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(batched) => {
                let lat = crate::compare::latent_metrics(
                    batched.latents.as_slice().unwrap_or_default(),
                    batched.latents.shape(),
                    single.latents.as_slice().unwrap_or_default(),
                    single.latents.shape(),
                );
                let image_identical = batched.image == single.image;
                record.image_identical = Some(image_identical);
                record.identical = Some(image_identical && lat.as_ref().is_ok_and(|l| l.identical));
                record.latent_max_abs = Some(lat.map_or(f64::NAN, |l| l.max_abs));
                record.first_difference = first_difference(&single.stages, &batched.stages);
            }
            Err(e) => record.error = Some(format!("{e:#}")),
        }
        record
    }

    /// The run's metadata, every block but `outputs` (added when the files are written).
    fn metadata(&self, case: &CaseSpec, karras: bool, gen: &Generation) -> Result<Metadata> {
        let mut timings: TimingsRecord = record_of(&gen.timings).context("timings")?;
        timings.load_s = Some(self.loaded.load_s);
        timings.hash_s = Some(self.hash_s);
        timings.session_cache = self.session_cache.clone();
        Ok(Metadata {
            monitor_version: Some(env!("CARGO_PKG_VERSION").to_string()),
            created_at: Some(crate::clock::utc_now_rfc3339()),
            case: Some(case.name.clone()),
            parameters: Some(ParametersRecord {
                // What ran, which a model's scheduler config can turn on beyond the case.
                karras_sigmas: Some(karras),
                ..case.parameters()
            }),
            model: Some(ModelRecord {
                path: Some(self.model_path.to_string_lossy().into_owned()),
                io: Some(serde_json::to_value(self.loaded.model.io()).context("model io")?),
                vae_scaling_factor: Some(self.loaded.model.dir().vae_scaling_factor()),
                files_sha256: Some(self.files.clone()),
                extra: Default::default(),
            }),
            tokens: Some(TokensRecord {
                prompt: Some(gen.prompt_ids.clone()),
                negative_prompt: gen.negative_ids.clone(),
                extra: Default::default(),
            }),
            noise: Some(NoiseRecord {
                source: Some(case.noise.to_string()),
                seed: Some(case.seed),
                initial_sha256: Some(gen.initial_noise_sha256.clone()),
                extra: Default::default(),
            }),
            timesteps: Some(gen.timesteps.clone()),
            onnxruntime: Some(record_of(self.runtime.info()).context("onnxruntime")?),
            execution_provider: Some(
                record_of(self.runtime.settings()).context("execution_provider")?,
            ),
            environment: Some(record_of(&self.environment).context("environment")?),
            timings: Some(timings),
            warnings: Some(gen.warnings.clone()),
            stages: Some(gen.stages.clone()),
            ..Metadata::default()
        })
    }
}

/// Confirms the session cache's entries against the model files' hashes (and commits new ones);
/// when an entry was made for other bytes, loads the model again without the cache. Returns the
/// model to use and what the cache did (`None`: no cache).
fn settle_session_cache(
    runtime: &Runtime,
    model_path: &Path,
    files: &BTreeMap<String, String>,
    loaded: LoadedModel,
) -> Result<(LoadedModel, Option<String>)> {
    let Some(cache) = runtime.session_cache() else {
        return Ok((loaded, None));
    };
    let sha256_of = |p: &Path| -> Option<String> {
        let rel = p.strip_prefix(model_path).ok()?;
        files
            .get(&rel.to_string_lossy().replace('\\', "/"))
            .cloned()
    };
    let settled = cache.settle(&sha256_of);
    for w in &settled.warnings {
        eprintln!("monitor: warning: {w}");
    }
    if settled.stale.is_empty() {
        let what = match (settled.hits, settled.written) {
            (h, 0) => format!("{h} loaded"),
            (0, w) => format!("{w} written"),
            (h, w) => format!("{h} loaded, {w} written"),
        };
        return Ok((loaded, Some(what)));
    }
    // Sessions of bytes other than the hashed ones must not run: rebuild all from the model.
    drop(loaded);
    runtime.disable_session_cache();
    let names: Vec<String> = settled
        .stale
        .iter()
        .map(|p| {
            p.file_name()
                .map_or(String::new(), |n| n.to_string_lossy().into_owned())
        })
        .collect();
    let loaded = LoadedModel::load(runtime, model_path).with_context(|| {
        format!(
            "loading model {} without the session cache",
            model_path.display()
        )
    })?;
    Ok((
        loaded,
        Some(format!(
            "stale for {}: rebuilt from the model",
            names.join(", ")
        )),
    ))
}

/// Writes a generation as a generation folder in `dir`, with its stage tensors (see
/// [`generation::write`]).
pub fn write_generation(dir: &Path, gen: &Generation, meta: &Metadata) -> Result<()> {
    let shape: Vec<usize> = gen.latents.shape().to_vec();
    let values: Vec<f32> = gen.latents.iter().copied().collect();
    let stages = StoredStages::from_tensors(&gen.tensors).context("encoding stages.npy")?;
    generation::write(dir, &values, &shape, &gen.image, Some(&stages), meta)?;
    Ok(())
}

/// Pretty JSON with a trailing newline.
pub fn pretty_json(v: &Value) -> Vec<u8> {
    let mut s = serde_json::to_vec_pretty(v).unwrap_or_default();
    s.push(b'\n');
    s
}
