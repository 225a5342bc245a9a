//! What a comparison relies on in a generation's `metadata.json`, checked before any comparison.
//!
//! A baseline's metadata decides how its outputs are judged: its `parameters` must match the
//! case, its `model.files_sha256` decides `model_changed`, its `execution_provider` and
//! `onnxruntime` feed the environment differences. A block that is missing or malformed would
//! otherwise be misread as a real change (every model file "changed", a rebaseline advised), so
//! damaged metadata is an `error` that names the field, never a verdict about the model.

use serde_json::Value;

use crate::baseline::{Baseline, METADATA_FILE};

/// The first problem found in `meta`, as "FIELD: what is wrong" (the caller names the file).
/// `case` is the case the metadata must belong to (another case's baseline copied into this
/// case's folder is damage, not drift).
pub fn validate(meta: &Value, case: &str) -> Result<(), String> {
    if !meta.is_object() {
        return Err("not a JSON object".into());
    }
    let recorded = field(meta, "case", Value::as_str, "a string")?;
    if recorded != case {
        return Err(format!(
            "case: records case {recorded:?}, not {case:?} (another case's files copied here?)"
        ));
    }
    if let Some(b) = meta.get("baseline") {
        if let Some(c) = b.get("case").and_then(Value::as_str) {
            if c != case {
                return Err(format!(
                    "baseline.case: records case {c:?}, not {case:?} (another case's files copied here?)"
                ));
            }
        }
    }
    field(meta, "parameters.prompt", Value::as_str, "a string")?;
    optional(
        meta,
        "parameters.negative_prompt",
        Value::as_str,
        "a string or null",
    )?;
    field(
        meta,
        "parameters.seed",
        Value::as_u64,
        "an unsigned integer",
    )?;
    positive(meta, "parameters.steps")?;
    field(meta, "parameters.guidance_scale", Value::as_f64, "a number")?;
    positive(meta, "parameters.width")?;
    positive(meta, "parameters.height")?;
    field(meta, "parameters.scheduler", Value::as_str, "a string")?;
    field(meta, "parameters.noise", Value::as_str, "a string")?;
    optional(
        meta,
        "parameters.karras_sigmas",
        Value::as_bool,
        "true or false",
    )?;
    let files = field(meta, "model.files_sha256", Value::as_object, "an object")?;
    if files.is_empty() {
        return Err("model.files_sha256: empty (no model file hashes recorded)".into());
    }
    for (name, hash) in files {
        if !hash.as_str().is_some_and(is_sha256) {
            return Err(format!(
                "model.files_sha256.{name}: {hash} is not a sha256 hex string"
            ));
        }
    }
    field(meta, "execution_provider", Value::as_object, "an object")?;
    field(meta, "onnxruntime.version", Value::as_str, "a string")?;
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

/// True for 64 hex digits.
pub fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn lookup<'a>(meta: &'a Value, dotted: &str) -> Option<&'a Value> {
    dotted.split('.').try_fold(meta, |v, k| v.get(k))
}

fn field<'a, T>(
    meta: &'a Value,
    key: &str,
    get: impl Fn(&'a Value) -> Option<T>,
    expected: &str,
) -> Result<T, String> {
    match lookup(meta, key) {
        None | Some(Value::Null) => Err(format!("{key}: missing")),
        Some(v) => get(v).ok_or_else(|| format!("{key}: {} is not {expected}", brief(v))),
    }
}

fn optional<'a, T>(
    meta: &'a Value,
    key: &str,
    get: impl Fn(&'a Value) -> Option<T>,
    expected: &str,
) -> Result<(), String> {
    match lookup(meta, key) {
        None | Some(Value::Null) => Ok(()),
        Some(v) => get(v)
            .map(|_| ())
            .ok_or_else(|| format!("{key}: {} is not {expected}", brief(v))),
    }
}

fn positive(meta: &Value, key: &str) -> Result<u64, String> {
    let n = field(meta, key, Value::as_u64, "a positive integer")?;
    if n == 0 {
        return Err(format!("{key}: 0 is not a positive integer"));
    }
    Ok(n)
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
            "execution_provider": {"name": "cpu"},
            "onnxruntime": {"version": "1.31.1"},
            "baseline": {"case": "fox", "version": 1},
        })
    }

    #[test]
    fn accepts_a_complete_record() {
        validate(&good(), "fox").unwrap();
    }

    #[test]
    fn names_the_field_at_fault() {
        type Damage = fn(&mut Value);
        let cases: [(&str, Damage, &str); 9] = [
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
                "parameters.seed: \"1\" is not",
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
                "model.files_sha256.x",
            ),
            (
                "no provider",
                |m| {
                    m.as_object_mut().unwrap().remove("execution_provider");
                },
                "execution_provider: missing",
            ),
        ];
        for (what, damage, expect) in cases {
            let mut m = good();
            damage(&mut m);
            let e = validate(&m, "fox").unwrap_err();
            assert!(e.contains(expect), "{what}: {e}");
        }
        assert!(validate(&json!([1]), "fox").is_err());
    }
}
