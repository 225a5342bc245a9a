//! AUTOMATIC1111 / Forge WebUI: `POST /sdapi/v1/txt2img`, images as base64 PNG, and `info` — a
//! JSON document inside a string — saying which model, sampler and version made them.

use std::collections::BTreeMap;

use reqwest::Method;
use serde_json::{json, Value};

use super::http::{Client, Output};
use super::ServiceRequest;

/// The `info` fields recorded: the ones that name what made the image.
const INFO_KEYS: [&str; 9] = [
    "sd_model_name",
    "sd_model_hash",
    "sd_vae_name",
    "sd_vae_hash",
    "sampler_name",
    "seed",
    "version",
    "clip_skip",
    "extra_generation_params",
];

pub async fn generate(
    client: &Client<'_>,
    r: &ServiceRequest,
    sampler: &str,
) -> Result<Output, String> {
    let body = json!({
        "prompt": r.prompt,
        "negative_prompt": r.negative_prompt,
        "seed": r.seed,
        "steps": r.steps,
        "cfg_scale": r.cfg,
        "width": r.width,
        "height": r.height,
        "sampler_name": sampler,
        "batch_size": 1,
        "n_iter": 1,
        "send_images": true,
        "save_images": false,
    });
    let v = client.send_json(Method::POST, PATH, Some(&body)).await?;
    parse_answer(&v)
}

const PATH: &str = "/sdapi/v1/txt2img";

/// The PNG bytes and facts of a txt2img answer (the image is not decoded here).
pub fn parse_answer(v: &Value) -> Result<Output, String> {
    let first = v
        .get("images")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .and_then(Value::as_str)
        .ok_or_else(|| format!("{PATH}: the answer has no images[0] string"))?;
    let png = super::base64_decode(first).map_err(|e| format!("{PATH}: images[0]: {e}"))?;
    Ok((png, info_of(v)))
}

/// The facts in `info`, which A1111 sends as a JSON string (some forks as an object).
fn info_of(v: &Value) -> BTreeMap<String, Value> {
    let info = match v.get("info") {
        Some(Value::String(s)) => serde_json::from_str::<Value>(s).unwrap_or(Value::Null),
        Some(o @ Value::Object(_)) => o.clone(),
        _ => Value::Null,
    };
    INFO_KEYS
        .iter()
        .filter_map(|k| {
            info.get(*k)
                .filter(|x| !x.is_null())
                .map(|x| (format!("a1111.{k}"), x.clone()))
        })
        .collect()
}
