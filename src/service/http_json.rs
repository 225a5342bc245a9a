//! An in-house JSON server: the request body is a template filled from the case, POSTed to
//! `service.path`; `service.image_pointer` points at the base64 PNG in the answer and
//! `service.info_pointer` (optional) at an object of facts to record.

use std::collections::BTreeMap;

use reqwest::Method;
use serde_json::Value;

use super::http::{Client, Output};
use super::ServiceRequest;

pub async fn generate(
    client: &Client<'_>,
    template: &Value,
    r: &ServiceRequest,
    sampler: &str,
    path: &str,
    image_pointer: &str,
    info_pointer: Option<&str>,
) -> Result<Output, String> {
    let body = super::fill(template, r, sampler);
    let v = client.send_json(Method::POST, path, Some(&body)).await?;
    let b64 = v
        .pointer(image_pointer)
        .and_then(Value::as_str)
        .ok_or_else(|| {
            format!("{path}: the answer has no string at {image_pointer} (service.image_pointer)")
        })?;
    let png = super::base64_decode(b64).map_err(|e| format!("{path}: {image_pointer}: {e}"))?;
    let mut info = BTreeMap::new();
    if let Some(p) = info_pointer {
        match v.pointer(p) {
            Some(Value::Object(o)) => {
                for (k, x) in o {
                    info.insert(format!("service.{k}"), x.clone());
                }
            }
            Some(other) => {
                info.insert("service.info".to_string(), other.clone());
            }
            None => {}
        }
    }
    Ok((png, info))
}
