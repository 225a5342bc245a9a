//! Request templates: JSON with `{{name}}` placeholders for a case's parameters. A string that is
//! exactly one placeholder becomes the typed value (`"{{seed}}"` → `42`, a number, as a KSampler
//! input wants it); a placeholder inside longer text is replaced by its text.

use serde_json::Value;

use super::ServiceRequest;

/// Every placeholder a template may use.
pub const PLACEHOLDERS: [&str; 10] = [
    "prompt",
    "negative_prompt",
    "seed",
    "steps",
    "cfg",
    "width",
    "height",
    "sampler",
    "scheduler",
    "sigmas",
];

fn value_of(name: &str, r: &ServiceRequest, sampler: &str) -> Option<Value> {
    Some(match name {
        "prompt" => Value::from(r.prompt.clone()),
        "negative_prompt" => Value::from(r.negative_prompt.clone()),
        "seed" => Value::from(r.seed),
        "steps" => Value::from(r.steps),
        "cfg" => Value::from(r.cfg),
        "width" => Value::from(r.width),
        "height" => Value::from(r.height),
        "sampler" => Value::from(sampler),
        "scheduler" => Value::from(r.scheduler.name()),
        "sigmas" => Value::from(if r.karras { "karras" } else { "normal" }),
        _ => return None,
    })
}

/// The placeholder names used anywhere in `v` (keys are not templated), in order, once each.
pub fn placeholders(v: &Value) -> Vec<String> {
    let mut out = Vec::new();
    walk(v, &mut |s| {
        let mut rest = s;
        while let Some(start) = rest.find("{{") {
            let Some(end) = rest[start..].find("}}") else {
                break;
            };
            let name = rest[start + 2..start + end].trim().to_string();
            if !out.contains(&name) {
                out.push(name);
            }
            rest = &rest[start + end + 2..];
        }
    });
    out
}

fn walk(v: &Value, f: &mut impl FnMut(&str)) {
    match v {
        Value::String(s) => f(s),
        Value::Array(a) => a.iter().for_each(|x| walk(x, f)),
        Value::Object(o) => o.values().for_each(|x| walk(x, f)),
        _ => {}
    }
}

/// `template` with every placeholder filled from `r` (unknown ones are left as written: the
/// config check refuses them before any request).
pub fn fill(template: &Value, r: &ServiceRequest, sampler: &str) -> Value {
    match template {
        Value::String(s) => {
            let t = s.trim();
            if let Some(name) = t.strip_prefix("{{").and_then(|x| x.strip_suffix("}}")) {
                if !name.contains("{{") {
                    if let Some(v) = value_of(name.trim(), r, sampler) {
                        return v;
                    }
                }
            }
            let mut out = s.clone();
            for name in PLACEHOLDERS {
                if let Some(v) = value_of(name, r, sampler) {
                    let text = match v {
                        Value::String(x) => x,
                        other => other.to_string(),
                    };
                    out = out.replace(&format!("{{{{{name}}}}}"), &text);
                }
            }
            Value::String(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(|x| fill(x, r, sampler)).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, x)| (k.clone(), fill(x, r, sampler)))
                .collect(),
        ),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sd::scheduler::SchedulerKind;
    use serde_json::json;

    fn req() -> ServiceRequest {
        ServiceRequest {
            prompt: "a \"red\" fox".into(),
            negative_prompt: String::new(),
            seed: 42,
            steps: 25,
            cfg: 7.5,
            width: 512,
            height: 768,
            scheduler: SchedulerKind::EulerAncestral,
            karras: true,
            sampler: None,
        }
    }

    #[test]
    fn whole_placeholders_are_typed_and_embedded_ones_are_text() {
        let t = json!({"3": {"inputs": {"seed": "{{seed}}", "cfg": "{{ cfg }}", "text": "photo: {{prompt}}, {{width}}x{{height}}", "sampler_name": "{{sampler}}", "scheduler": "{{sigmas}}", "keep": 1, "list": ["{{steps}}"]}}});
        let v = fill(&t, &req(), "euler_ancestral");
        assert_eq!(
            v,
            json!({"3": {"inputs": {"seed": 42, "cfg": 7.5, "text": "photo: a \"red\" fox, 512x768", "sampler_name": "euler_ancestral", "scheduler": "karras", "keep": 1, "list": [25]}}})
        );
        assert_eq!(
            placeholders(&t),
            ["seed", "cfg", "prompt", "width", "height", "sampler", "sigmas", "steps"]
        );
    }
}
