//! Service cases (`target: service`): each is sent to the generation service once and its answer
//! is written as an image-only generation folder, so that the check, rebaseline, history and
//! reports treat it like any case's output.

use std::path::Path;

use serde_json::{Map, Value};

use super::{Service, ServiceImage, ServiceRequest};
use crate::config::{Case, Config};
use crate::generation::{Metadata, ParametersRecord, ServiceRecord, TimingsRecord};
use crate::worker::{Cancel, Outcome};

/// Asks the service for every case in `cases` (all `target: service`), writing
/// `<out_dir>/<case>/`. A service that cannot be set up (a missing section, an unreadable
/// template or secret) or does not answer makes each case `Failed` with a one-line reason; it is
/// never an `Err`, since it says nothing about the monitor itself.
pub fn run(
    config: &Config,
    cases: &[&Case],
    out_dir: &Path,
    cancel: &Cancel,
) -> Vec<(String, Outcome)> {
    let service = match connect(config) {
        Ok(s) => s,
        Err(e) => {
            return cases
                .iter()
                .map(|c| (c.name.clone(), Outcome::Failed(e.clone())))
                .collect();
        }
    };
    cases
        .iter()
        .map(|case| {
            let outcome = if cancel.is_cancelled() {
                Outcome::Failed("cancelled: the monitor is stopping".into())
            } else {
                one(&service, case, &out_dir.join(&case.name), cancel)
            };
            (case.name.clone(), outcome)
        })
        .collect()
}

/// The configured service, ready to be asked (errors name the config file and key).
pub fn connect(config: &Config) -> Result<Service, String> {
    let section = config.service.as_ref().ok_or_else(|| {
        format!(
            "{}: no `service:` section (see the README, Watching the generation service)",
            config.source.display()
        )
    })?;
    let dir = config.source.parent().unwrap_or(Path::new("."));
    Service::from_config(section, dir).map_err(|e| format!("{}: {e}", config.source.display()))
}

fn one(service: &Service, case: &Case, dir: &Path, cancel: &Cancel) -> Outcome {
    let req = ServiceRequest::of(case);
    let answer = match service.generate_until(&req, cancel) {
        Ok(a) => a,
        Err(e) => return Outcome::Failed(format!("generation service: {e}")),
    };
    let mut warnings = Vec::new();
    if (answer.image.width, answer.image.height) != (case.width, case.height) {
        warnings.push(format!(
            "the service returned {}x{}, the case asks for {}x{}",
            answer.image.width, answer.image.height, case.width, case.height
        ));
    }
    let metadata = metadata(service, case, &answer, &warnings);
    match crate::generation::write_image_only(dir, &answer.image, &metadata) {
        Ok(()) => Outcome::Done {
            dir: dir.to_path_buf(),
            warnings,
            duration_s: answer.seconds,
        },
        Err(e) => Outcome::Failed(format!("{e:#}")),
    }
}

/// The metadata of a service's answer: the case's parameters with the target and the sampler
/// sent, what the service reported, and how long it took.
pub fn metadata(
    service: &Service,
    case: &Case,
    answer: &ServiceImage,
    warnings: &[String],
) -> Metadata {
    Metadata {
        monitor_version: Some(env!("CARGO_PKG_VERSION").to_string()),
        created_at: Some(crate::clock::utc_now_rfc3339()),
        case: Some(case.name.clone()),
        // The service draws its own noise: the case's noise source says nothing about it.
        parameters: Some(ParametersRecord {
            target: Some(crate::config::Target::Service.as_str().into()),
            sampler: Some(answer.sampler.clone()),
            noise: None,
            noise_file: None,
            ..case.spec().parameters()
        }),
        timings: Some(TimingsRecord {
            total_s: Some(answer.seconds),
            ..TimingsRecord::default()
        }),
        warnings: (!warnings.is_empty()).then(|| warnings.to_vec()),
        service: Some(ServiceRecord {
            kind: Some(service.kind_name().into()),
            origin: Some(service.origin()),
            template_sha256: service.template_sha256(),
            info: Some(nest(&answer.info)),
            extra: Default::default(),
        }),
        ..Metadata::default()
    }
}

/// `{"a1111.sd_model_hash": h}` as `{"a1111": {"sd_model_hash": h}}`: the environment
/// comparison walks nested objects, and a dot inside a key would read as nesting.
fn nest(info: &std::collections::BTreeMap<String, Value>) -> Map<String, Value> {
    let mut out = Map::new();
    for (k, v) in info {
        match k.split_once('.') {
            Some((source, field)) => {
                let entry = out
                    .entry(source.to_string())
                    .or_insert_with(|| Value::Object(Map::new()));
                if let Value::Object(m) = entry {
                    m.insert(field.to_string(), v.clone());
                }
            }
            None => {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn info_nests_by_source() {
        let info = [
            ("a1111.sd_model_hash".to_string(), json!("6ce0161689")),
            ("a1111.version".to_string(), json!("v1.10.1")),
            ("plain".to_string(), json!(1)),
        ]
        .into();
        assert_eq!(
            Value::Object(nest(&info)),
            json!({"a1111": {"sd_model_hash": "6ce0161689", "version": "v1.10.1"}, "plain": 1})
        );
    }
}
