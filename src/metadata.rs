//! What a comparison relies on in a generation's `metadata.json`, checked before any comparison.
//!
//! A baseline's metadata decides how its outputs are judged: its `parameters` must match the
//! case, its `model.files_sha256` decides `model_changed`, its `execution_provider` and
//! `onnxruntime` feed the environment differences (a service's image-only answer has a `service`
//! block instead of those three). A block that is missing or malformed would
//! otherwise be misread as a real change (every model file "changed", a rebaseline advised), so
//! damaged metadata is an `error` that names the field, never a verdict about the model.
//!
//! Fields of the wrong type are already refused when the file is read
//! ([`crate::generation::Metadata::from_value`]); what is left here is what reading accepts
//! because the store and older versions allow it: fields that are absent, empty or zero.

use serde_json::Value;

use crate::baseline::Baseline;
use crate::generation::{Metadata, METADATA_FILE};

/// True for 64 hex digits.
pub use crate::generation::is_sha256;

/// The first problem found in `meta`, as "FIELD: what is wrong" (the caller names the file).
/// `case` is the case the metadata must belong to (another case's baseline copied into this
/// case's folder is damage, not drift).
pub fn validate(meta: &Metadata, case: &str) -> Result<(), String> {
    let recorded = required(meta.case.as_ref(), "case")?;
    if recorded != case {
        return Err(format!(
            "case: records case {recorded:?}, not {case:?} (another case's files copied here?)"
        ));
    }
    if let Some(c) = meta.baseline.as_ref().and_then(|b| b.case.as_ref()) {
        if c != case {
            return Err(format!(
                "baseline.case: records case {c:?}, not {case:?} (another case's files copied here?)"
            ));
        }
    }
    let p = meta.parameters.clone().unwrap_or_default();
    required(p.prompt.as_ref(), "parameters.prompt")?;
    required(p.seed.as_ref(), "parameters.seed")?;
    positive(p.steps, "parameters.steps")?;
    required(p.guidance_scale.as_ref(), "parameters.guidance_scale")?;
    positive(p.width, "parameters.width")?;
    positive(p.height, "parameters.height")?;
    required(p.scheduler.as_ref(), "parameters.scheduler")?;
    if meta.service.is_none() {
        required(p.noise.as_ref(), "parameters.noise")?;
    }
    // A service's answer has no model files or runtime of the monitor's: what made it is the
    // service, which it names.
    if let Some(service) = &meta.service {
        required(service.kind.as_ref(), "service.kind")?;
        return Ok(());
    }
    let files = required(
        meta.model.as_ref().and_then(|m| m.files_sha256.as_ref()),
        "model.files_sha256",
    )?;
    if files.is_empty() {
        return Err("model.files_sha256: empty (no model file hashes recorded)".into());
    }
    for (name, hash) in files {
        if !is_sha256(hash) {
            return Err(format!(
                "model.files_sha256.{name}: {} is not a sha256 hex string",
                brief(&Value::from(hash.as_str()))
            ));
        }
    }
    required(meta.execution_provider.as_ref(), "execution_provider")?;
    required(
        meta.onnxruntime.as_ref().and_then(|o| o.version.as_ref()),
        "onnxruntime.version",
    )?;
    Ok(())
}

/// [`validate`] for a stored baseline of `case`; the error names its metadata.json as damaged.
pub fn check_baseline(baseline: &Baseline, case: &str) -> Result<(), String> {
    validate(&baseline.metadata, case).map_err(|reason| {
        format!(
            "{}: baseline damaged: {reason}",
            baseline.dir.join(METADATA_FILE).display()
        )
    })
}

fn required<T>(v: Option<T>, key: &str) -> Result<T, String> {
    v.ok_or_else(|| format!("{key}: missing"))
}

fn positive(v: Option<u64>, key: &str) -> Result<u64, String> {
    match required(v, key)? {
        0 => Err(format!("{key}: 0 is not a positive integer")),
        n => Ok(n),
    }
}

/// A value shortened for a one-line message.
fn brief(v: &Value) -> String {
    let s = v.to_string();
    match s.char_indices().nth(40) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn good() -> Value {
        json!({
            "case": "fox",
            "parameters": {"prompt": "a fox", "negative_prompt": null, "seed": 1, "steps": 3,
                "guidance_scale": 7.5, "width": 64, "height": 64, "scheduler": "pndm",
                "noise": "numpy", "karras_sigmas": false},
            "model": {"files_sha256": {"unet/model.onnx": "a".repeat(64)}},
            "execution_provider": {"execution_provider": "cpu"},
            "onnxruntime": {"version": "1.31.1"},
            "baseline": {"case": "fox", "version": 1},
        })
    }

    /// Reading then validating, as a check does: the first error either gives.
    fn check(v: &Value) -> Result<(), String> {
        validate(&Metadata::from_value(v)?, "fox")
    }

    #[test]
    fn accepts_a_complete_record() {
        check(&good()).unwrap();
    }

    #[test]
    fn names_the_field_at_fault() {
        type Damage = fn(&mut Value);
        let cases: [(&str, Damage, &str); 10] = [
            (
                "model",
                |m| {
                    m.as_object_mut().unwrap().remove("model");
                },
                "model.files_sha256: missing",
            ),
            (
                "parameters",
                |m| {
                    m.as_object_mut().unwrap().remove("parameters");
                },
                "parameters.prompt: missing",
            ),
            (
                "other case",
                |m| m["case"] = json!("owl"),
                "records case \"owl\"",
            ),
            (
                "baseline of another case",
                |m| m["baseline"]["case"] = json!("owl"),
                "baseline.case",
            ),
            (
                "seed type",
                |m| m["parameters"]["seed"] = json!("1"),
                "parameters.seed: invalid type: string \"1\"",
            ),
            (
                "zero steps",
                |m| m["parameters"]["steps"] = json!(0),
                "parameters.steps: 0",
            ),
            (
                "empty model",
                |m| m["model"]["files_sha256"] = json!({}),
                "empty",
            ),
            (
                "bad hash",
                |m| m["model"]["files_sha256"]["x"] = json!("zz"),
                "model.files_sha256.x: \"zz\" is not",
            ),
            (
                "no provider",
                |m| {
                    m.as_object_mut().unwrap().remove("execution_provider");
                },
                "execution_provider: missing",
            ),
            (
                "provider not an object",
                |m| m["execution_provider"] = json!("cpu"),
                "execution_provider: invalid type",
            ),
        ];
        for (what, damage, expect) in cases {
            let mut m = good();
            damage(&mut m);
            let e = check(&m).unwrap_err();
            assert!(e.contains(expect), "{what}: {e}");
        }
        assert!(check(&json!([1])).is_err());
    }
}
