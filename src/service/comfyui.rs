//! ComfyUI: `POST /prompt` with the workflow (API format) filled from the case, then
//! `/history/{prompt_id}` until the run is done, then `/view` for its first output image.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use super::http::{Client, Output};
use super::ServiceRequest;

pub async fn generate(
    client: &Client<'_>,
    workflow: &Value,
    r: &ServiceRequest,
    sampler: &str,
    poll: Duration,
) -> Result<Output, String> {
    let graph = super::fill(workflow, r, sampler);
    let body = json!({"prompt": graph, "client_id": format!("monitor-{}", std::process::id())});
    let queued = client
        .send_json(Method::POST, "/prompt", Some(&body))
        .await?;
    if let Some(errors) = queued.get("node_errors").and_then(Value::as_object) {
        if !errors.is_empty() {
            return Err(format!(
                "POST /prompt: the workflow was refused: {}",
                one_line(&Value::Object(errors.clone()))
            ));
        }
    }
    let id = queued
        .get("prompt_id")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            format!(
                "POST /prompt: the answer has no prompt_id: {}",
                one_line(&queued)
            )
        })?
        .to_string();
    let entry = loop {
        let h = client
            .send_json(Method::GET, &format!("/history/{id}"), None)
            .await?;
        if let Some(e) = h.get(&id) {
            let status = e.get("status");
            if status
                .and_then(|s| s.get("status_str"))
                .and_then(Value::as_str)
                == Some("error")
            {
                return Err(format!(
                    "ComfyUI run {id} failed: {}",
                    one_line(
                        status
                            .and_then(|s| s.get("messages"))
                            .unwrap_or(&Value::Null)
                    )
                ));
            }
            let done = status
                .and_then(|s| s.get("completed"))
                .and_then(Value::as_bool)
                .unwrap_or(true);
            if done {
                break e.clone();
            }
        }
        tokio::time::sleep(poll).await;
    };
    // The first image of the output nodes, by node id (as the workflow numbers them).
    let outputs = entry.get("outputs").and_then(Value::as_object);
    let mut nodes: Vec<(&String, &Value)> = outputs.into_iter().flatten().collect();
    nodes.sort_by_key(|(k, _)| (k.parse::<u64>().unwrap_or(u64::MAX), (*k).clone()));
    let image = nodes
        .iter()
        .find_map(|(_, o)| {
            o.get("images")
                .and_then(Value::as_array)
                .and_then(|a| a.first())
        })
        .ok_or_else(|| {
            format!(
                "ComfyUI run {id} has no output image (does the workflow end in a SaveImage node?)"
            )
        })?;
    let field = |k: &str| image.get(k).and_then(Value::as_str).unwrap_or("");
    let query = format!(
        "/view?filename={}&subfolder={}&type={}",
        encode(field("filename")),
        encode(field("subfolder")),
        encode(if field("type").is_empty() {
            "output"
        } else {
            field("type")
        })
    );
    let png = client.send(Method::GET, &query, None).await?;
    let mut info = BTreeMap::new();
    // The checkpoint the workflow loads is the model name users would compare.
    if let Some(ckpt) = find_input(&graph, "ckpt_name") {
        info.insert("comfyui.ckpt_name".to_string(), ckpt);
    }
    if let Ok(stats) = client.send_json(Method::GET, "/system_stats", None).await {
        let sys = stats.get("system");
        for k in ["comfyui_version", "pytorch_version", "python_version"] {
            if let Some(v) = sys.and_then(|s| s.get(k)) {
                info.insert(format!("comfyui.{k}"), v.clone());
            }
        }
        if let Some(d) = stats
            .get("devices")
            .and_then(Value::as_array)
            .and_then(|a| a.first())
        {
            if let Some(n) = d.get("name") {
                info.insert("comfyui.device".into(), n.clone());
            }
        }
    }
    Ok((png, info))
}

/// The first node input called `name` in an API-format workflow.
fn find_input(graph: &Value, name: &str) -> Option<Value> {
    graph
        .as_object()?
        .values()
        .find_map(|node| node.get("inputs")?.get(name).cloned())
}

fn one_line(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 300 {
        format!("{}…", s.chars().take(300).collect::<String>())
    } else {
        s
    }
}

/// Percent-encoding of a query value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
