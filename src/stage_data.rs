//! Stage data: the tensors a generation keeps beside its stage hashes (`stages.npy`), and what
//! they say about where, how far and from which step a run moved away from its baseline.
//!
//! `stages.npy` is one flat float32 array, the tensors one after another in the order listed
//! in `metadata.json` `outputs.stages.tensors` (stage name and shape each), so numpy reads it
//! with `np.load` and a slice per entry. It holds the text embeddings, the initial noise, the
//! first UNet output and the latents after every step: 2.24 MB per case at 512×512 with 25 steps
//! and guidance (text embeddings 0.47 MB, 27 latent-sized tensors of 64 KB). The hashes of every
//! stage stay in `metadata.json`; the tensors add magnitudes and let a quick check feed each
//! network its baseline's exact inputs.

use std::path::Path;

use ndarray::{Array3, Array4};
use serde::{Deserialize, Serialize};

use crate::generation::{Extra, Metadata};
use crate::sd::image::RgbImage;
use crate::sd::model::sha256_hex;
use crate::sd::pipeline::StageTensors;

/// File name of the stage tensors in a generation folder.
pub const STAGES_FILE: &str = "stages.npy";

/// `outputs.stages`: what `stages.npy` holds and its sha256.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StagesRecord {
    /// File name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// sha256 of the file's bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// The tensors, in file order.
    #[serde(default)]
    pub tensors: Vec<TensorEntry>,
    /// Fields this monitor does not know.
    #[serde(flatten)]
    pub extra: Extra,
}

/// One tensor of `stages.npy`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorEntry {
    /// The stage whose output it is, named as in the stage hashes (`step 3 latents`).
    pub stage: String,
    /// Its shape.
    pub shape: Vec<usize>,
}

/// A generation's stage tensors: the file's bytes, its record, and the values.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredStages {
    /// `stages.npy` as written.
    pub bytes: Vec<u8>,
    /// Its `outputs.stages` record (sha256 of `bytes`).
    pub record: StagesRecord,
    data: Vec<f32>,
    offsets: Vec<usize>,
}

fn step_latents_name(step: usize) -> String {
    format!("step {step} latents")
}

impl StoredStages {
    /// Encodes a generation's stage tensors.
    pub fn from_tensors(t: &StageTensors) -> std::io::Result<StoredStages> {
        let mut parts: Vec<(String, Vec<usize>, Vec<f32>)> = vec![
            (
                "text_embeddings".into(),
                t.text_embeddings.shape().to_vec(),
                t.text_embeddings.iter().copied().collect(),
            ),
            (
                "initial_noise".into(),
                t.initial_noise.shape().to_vec(),
                t.initial_noise.iter().copied().collect(),
            ),
        ];
        if let Some(p) = &t.first_noise_pred {
            parts.push((
                "step 1 noise_pred".into(),
                p.shape().to_vec(),
                p.iter().copied().collect(),
            ));
        }
        for (i, l) in t.step_latents.iter().enumerate() {
            parts.push((
                step_latents_name(i + 1),
                l.shape().to_vec(),
                l.iter().copied().collect(),
            ));
        }
        let mut data = Vec::new();
        let mut offsets = Vec::new();
        let mut tensors = Vec::new();
        for (stage, shape, values) in parts {
            offsets.push(data.len());
            data.extend(values);
            tensors.push(TensorEntry { stage, shape });
        }
        let mut bytes = Vec::new();
        crate::sd::npy::write_npy_f32(&mut bytes, &[data.len()], &data)?;
        let record = StagesRecord {
            file: Some(STAGES_FILE.into()),
            sha256: Some(sha256_hex(&bytes)),
            tensors,
            extra: Extra::new(),
        };
        Ok(StoredStages {
            bytes,
            record,
            data,
            offsets,
        })
    }

    /// Reads `bytes` (the file at `path`) as described by `record`: the sha256 must be the
    /// recorded one and the length the sum of the listed shapes. The error is one line.
    pub fn parse(bytes: Vec<u8>, record: &StagesRecord, path: &Path) -> Result<Self, String> {
        let got = sha256_hex(&bytes);
        match &record.sha256 {
            Some(want) if want.eq_ignore_ascii_case(&got) => {}
            Some(want) => {
                return Err(format!(
                    "sha256 {}… differs from the {}… recorded in metadata.json",
                    &got[..12],
                    want.get(..12).unwrap_or(want)
                ))
            }
            None => return Err("metadata.json records no sha256 for it".into()),
        }
        let arr = crate::sd::npy::parse_npy(&bytes, path).map_err(|e| e.to_string())?;
        let mut offsets = Vec::with_capacity(record.tensors.len());
        let mut total = 0usize;
        for t in &record.tensors {
            offsets.push(total);
            let n = t
                .shape
                .iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d))
                .ok_or_else(|| format!("tensor {:?} has an impossible shape", t.stage))?;
            total = total
                .checked_add(n)
                .ok_or_else(|| "tensor sizes overflow".to_string())?;
        }
        if arr.shape != [total] {
            return Err(format!(
                "shape {:?}, but the {} tensors listed in metadata.json need [{total}]",
                arr.shape,
                record.tensors.len()
            ));
        }
        Ok(StoredStages {
            bytes,
            record: record.clone(),
            data: arr.data,
            offsets,
        })
    }

    /// A stage's tensor: its shape and values.
    pub fn get(&self, stage: &str) -> Option<(&[usize], &[f32])> {
        let i = self.record.tensors.iter().position(|t| t.stage == stage)?;
        let shape = &self.record.tensors[i].shape;
        let n: usize = shape.iter().product();
        let start = self.offsets[i];
        Some((shape, &self.data[start..start + n]))
    }

    /// A stage's tensor as a 3-d array (the text embeddings), if it has 3 dimensions.
    pub fn array3(&self, stage: &str) -> Option<Array3<f32>> {
        let (shape, v) = self.get(stage)?;
        let [a, b, c] = shape[..] else { return None };
        Array3::from_shape_vec((a, b, c), v.to_vec()).ok()
    }

    /// A stage's tensor as a 4-d array (noise, latents), if it has 4 dimensions.
    pub fn array4(&self, stage: &str) -> Option<Array4<f32>> {
        let (shape, v) = self.get(stage)?;
        let [a, b, c, d] = shape[..] else { return None };
        Array4::from_shape_vec((a, b, c, d), v.to_vec()).ok()
    }

    /// The latents after each step, step 1 first.
    pub fn step_latents(&self) -> Vec<&[f32]> {
        (1..)
            .map_while(|i| self.get(&step_latents_name(i)).map(|(_, v)| v))
            .collect()
    }
}

/// One side of a divergence measurement.
#[derive(Debug, Clone, Copy)]
pub struct Side<'a> {
    /// Its stage tensors, when it kept them.
    pub stages: Option<&'a StoredStages>,
    /// Its metadata (token ids, timesteps).
    pub metadata: &'a Metadata,
    /// Final latents, flat (`None`: an image-only generation, a service's answer).
    pub latents: Option<&'a [f32]>,
    /// The image.
    pub image: &'a RgbImage,
}

/// How far a run is from its baseline where they first differ, and when the latents left the
/// threshold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Divergence {
    /// The first differing stage (as `diverged_at`).
    pub stage: String,
    /// The tensor the magnitude was measured on: the stage itself, or for a later step's
    /// `noise_pred` (only the first is kept) that step's latents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measured_on: Option<String>,
    /// Largest |Δ| there (image: in 8-bit levels).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_abs: Option<f64>,
    /// `max_abs` over the largest |value| of the baseline's tensor (image: over 255).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relative: Option<f64>,
    /// What else is known or why no magnitude (`3 of 154 ids differ`, `no stage tensors in
    /// the baseline`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Largest |Δ| of the latents after each step, step 1 first (empty without tensors on both
    /// sides).
    #[serde(default)]
    pub step_max_abs: Vec<f64>,
    /// The first step (1-based) after which the latents' max |Δ| exceeded `latent_limit`.
    #[serde(default)]
    pub exceeded_at_step: Option<usize>,
    /// The latent max |Δ| threshold the steps were held to.
    pub latent_limit: f64,
}

impl Divergence {
    /// One line: `max|Δ| 3.1e-7, relative 2.0e-7; latents over max|Δ| 1.0e-3 from step 14 of
    /// 25`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let (Some(m), Some(r)) = (self.max_abs, self.relative) {
            let on = match &self.measured_on {
                Some(t) if *t != self.stage => format!(" on {t}"),
                _ => String::new(),
            };
            parts.push(format!("max|Δ| {}, relative {}{on}", sci(m), sci(r)));
        }
        if let Some(n) = &self.note {
            parts.push(n.clone());
        }
        let steps = self.step_max_abs.len();
        if steps > 0 {
            parts.push(match self.exceeded_at_step {
                Some(s) => format!(
                    "latents over max|Δ| {} from step {s} of {steps}",
                    sci(self.latent_limit)
                ),
                None => format!(
                    "latents within max|Δ| {} at all {steps} steps",
                    sci(self.latent_limit)
                ),
            });
        }
        parts.join("; ")
    }
}

impl Divergence {
    fn set(&mut self, on: &str, max_abs: f64, relative: f64) {
        self.measured_on = Some(on.to_string());
        self.max_abs = Some(max_abs);
        self.relative = Some(relative);
    }

    fn measure(&mut self, on: &str, a: &[f32], b: &[f32]) {
        if a.len() != b.len() {
            self.note = Some(format!(
                "{on}: {} values vs {} in the baseline",
                a.len(),
                b.len()
            ));
            return;
        }
        let m = max_abs_diff(a, b);
        self.set(on, m, relative(m, max_abs(b)));
    }
}

/// `first differs at: STAGE (…)`: the stage, and what its divergence says when known.
pub fn diverged_line(stage: &str, divergence: Option<&Divergence>) -> String {
    let more = divergence
        .map(Divergence::describe)
        .filter(|d| !d.is_empty())
        .map_or(String::new(), |d| format!(" ({d})"));
    format!("first differs at: {stage}{more}")
}

/// [`diverged_line`] of a stored result's `reasons` JSON (history, reports).
pub fn diverged_line_of(reasons: &serde_json::Value) -> Option<String> {
    let stage = reasons.get("diverged_at")?.as_str()?;
    let divergence = reasons
        .get("divergence")
        .and_then(|d| serde_json::from_value::<Divergence>(d.clone()).ok());
    Some(diverged_line(stage, divergence.as_ref()))
}

fn sci(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else {
        format!("{v:.1e}")
    }
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (f64::from(*x) - f64::from(*y)).abs())
        .fold(0.0, f64::max)
}

fn max_abs(v: &[f32]) -> f64 {
    v.iter().map(|x| f64::from(*x).abs()).fold(0.0, f64::max)
}

fn relative(d: f64, scale: f64) -> f64 {
    if scale > 0.0 {
        d / scale
    } else {
        d
    }
}

/// Measures a run against its baseline at `stage`, the first stage whose hash differs.
pub fn divergence(stage: &str, run: &Side<'_>, base: &Side<'_>, latent_limit: f64) -> Divergence {
    let mut d = Divergence {
        stage: stage.to_string(),
        measured_on: None,
        max_abs: None,
        relative: None,
        note: None,
        step_max_abs: Vec::new(),
        exceeded_at_step: None,
        latent_limit,
    };
    let tensor_stage = match stage {
        "text_embeddings" | "initial_noise" | "step 1 noise_pred" => Some(stage.to_string()),
        s if s.starts_with("step ") => s
            .strip_suffix(" noise_pred")
            .or_else(|| s.strip_suffix(" latents"))
            .map(|n| format!("{n} latents")),
        _ => None,
    };
    match stage {
        "tokens" => d.note = Some(ids_note(run.metadata, base.metadata)),
        "timesteps" => {
            let a = run.metadata.timesteps.as_deref().unwrap_or_default();
            let b = base.metadata.timesteps.as_deref().unwrap_or_default();
            if a.len() != b.len() {
                d.note = Some(format!("{} timesteps vs {} in the baseline", a.len(), b.len()));
            } else {
                let m = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
                let scale = b.iter().map(|x| x.abs()).fold(0.0, f64::max);
                d.set("timesteps", m, relative(m, scale));
            }
        }
        "latents" => match (run.latents, base.latents) {
            (Some(a), Some(b)) => d.measure("latents", a, b),
            _ => d.note = Some("latents: an image-only generation has none".into()),
        },
        "decoded_tile" => {
            d.note = Some(format!(
                "the VAE decoder's output for the top-left {}×{} latents differs (its floats are not kept)",
                crate::sd::pipeline::TILE,
                crate::sd::pipeline::TILE
            ))
        }
        "decoded" | "image" => {
            if run.image.pixels.len() == base.image.pixels.len() {
                let m = run
                    .image
                    .pixels
                    .iter()
                    .zip(&base.image.pixels)
                    .map(|(a, b)| a.abs_diff(*b))
                    .max()
                    .unwrap_or(0);
                d.set("image", f64::from(m), f64::from(m) / 255.0);
                if m == 0 && stage == "decoded" {
                    // Decoder floats are not kept (3 MB at 512²); the pixels are.
                    d.note = Some("the decoder's floats differ, but by less than one 8-bit level: image pixels equal".into());
                }
            }
        }
        _ => {}
    }
    if let Some(t) = tensor_stage {
        match (run.stages, base.stages) {
            (Some(r), Some(b)) => match (r.get(&t), b.get(&t)) {
                (Some((_, x)), Some((_, y))) => d.measure(&t, x, y),
                _ => d.note = Some(format!("{t} was not kept on both sides")),
            },
            (_, None) => d.note = Some("no stage tensors in the baseline".into()),
            (None, Some(_)) => d.note = Some("no stage tensors in the run".into()),
        }
    }
    if let (Some(r), Some(b)) = (run.stages, base.stages) {
        let (rs, bs) = (r.step_latents(), b.step_latents());
        d.step_max_abs = rs
            .iter()
            .zip(&bs)
            .take_while(|(x, y)| x.len() == y.len())
            .map(|(x, y)| max_abs_diff(x, y))
            .collect();
        d.exceeded_at_step = d
            .step_max_abs
            .iter()
            .position(|&m| m > latent_limit)
            .map(|i| i + 1);
    }
    d
}

/// `3 of 154 ids differ` between the token ids both metadata record.
fn ids_note(run: &Metadata, base: &Metadata) -> String {
    let ids = |m: &Metadata| -> Vec<u32> {
        m.tokens
            .as_ref()
            .map(|t| {
                t.negative_prompt
                    .iter()
                    .flatten()
                    .chain(t.prompt.iter().flatten())
                    .copied()
                    .collect()
            })
            .unwrap_or_default()
    };
    let (a, b) = (ids(run), ids(base));
    if a.len() != b.len() {
        return format!("{} ids vs {} in the baseline", a.len(), b.len());
    }
    let n = a.iter().zip(&b).filter(|(x, y)| x != y).count();
    format!("{n} of {} ids differ", a.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array3, Array4};

    fn tensors(shift: f32, from_step: usize) -> StageTensors {
        let lat = |k: usize| {
            let bump = if k + 1 >= from_step {
                shift * k as f32
            } else {
                0.0
            };
            Array4::from_shape_fn((1, 4, 2, 2), |(_, c, y, x)| (c + y + x) as f32 + bump)
        };
        StageTensors {
            text_embeddings: Array3::from_shape_fn((2, 3, 4), |(a, b, c)| {
                (a * 12 + b * 4 + c) as f32
            }),
            initial_noise: Array4::from_elem((1, 4, 2, 2), 0.5),
            first_noise_pred: Some(Array4::from_elem((1, 4, 2, 2), -0.25)),
            step_latents: (0..5).map(lat).collect(),
        }
    }

    #[test]
    fn round_trips_through_bytes_and_refuses_damage() {
        let s = StoredStages::from_tensors(&tensors(0.0, 99)).unwrap();
        let names: Vec<&str> = s.record.tensors.iter().map(|t| t.stage.as_str()).collect();
        assert_eq!(
            names,
            [
                "text_embeddings",
                "initial_noise",
                "step 1 noise_pred",
                "step 1 latents",
                "step 2 latents",
                "step 3 latents",
                "step 4 latents",
                "step 5 latents"
            ]
        );
        let p = Path::new("stages.npy");
        let back = StoredStages::parse(s.bytes.clone(), &s.record, p).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.array3("text_embeddings").unwrap()[[1, 2, 3]], 23.0);
        assert_eq!(back.step_latents().len(), 5);
        let mut bad = s.bytes.clone();
        *bad.last_mut().unwrap() ^= 1;
        let e = StoredStages::parse(bad, &s.record, p).unwrap_err();
        assert!(e.starts_with("sha256 ") && !e.contains('\n'), "{e}");
        let mut short = s.record.clone();
        short.tensors.pop();
        let e = StoredStages::parse(s.bytes.clone(), &short, p).unwrap_err();
        assert!(e.contains("need ["), "{e}");
    }

    #[test]
    fn measures_the_first_stage_and_the_step_the_latents_left_the_limit() {
        let base_t = StoredStages::from_tensors(&tensors(0.0, 99)).unwrap();
        // Steps 3.. move by 0.3 * k: 0.6 after step 3, 0.9 after step 4, 1.2 after step 5.
        let run_t = StoredStages::from_tensors(&tensors(0.3, 3)).unwrap();
        let meta = Metadata::default();
        let img = RgbImage {
            width: 1,
            height: 1,
            pixels: vec![0, 0, 0],
        };
        let side = |s| Side {
            stages: Some(s),
            metadata: &meta,
            latents: None,
            image: &img,
        };
        let d = divergence("step 3 noise_pred", &side(&run_t), &side(&base_t), 0.8);
        assert_eq!(d.measured_on.as_deref(), Some("step 3 latents"));
        assert!((d.max_abs.unwrap() - 0.6).abs() < 1e-6, "{d:?}");
        // The baseline's step-3 latents peak at 5 (c + y + x).
        assert!((d.relative.unwrap() - 0.12).abs() < 1e-6, "{d:?}");
        assert_eq!(d.step_max_abs.len(), 5);
        assert_eq!(d.step_max_abs[..2], [0.0, 0.0]);
        assert_eq!(d.exceeded_at_step, Some(4));
        assert!(
            d.describe()
                .ends_with("latents over max|Δ| 8.0e-1 from step 4 of 5"),
            "{}",
            d.describe()
        );
        let none = divergence("text_embeddings", &side(&run_t), &side(&base_t), 5.0);
        assert_eq!((none.max_abs, none.exceeded_at_step), (Some(0.0), None));
        let old = Side {
            stages: None,
            ..side(&base_t)
        };
        let d = divergence("initial_noise", &side(&run_t), &old, 0.8);
        assert_eq!(d.note.as_deref(), Some("no stage tensors in the baseline"));
        assert!(d.step_max_abs.is_empty() && d.max_abs.is_none());
    }
}
