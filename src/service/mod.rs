//! The generation service's own HTTP API: send a case to the server users generate with
//! (AUTOMATIC1111/Forge WebUI, ComfyUI, or an in-house JSON server) and get back the image it
//! made and what it says about itself (model hash and name, sampler, version).
//!
//! The monitor's own ONNX pipeline is a canary for the host; the service is what users see, and
//! its outputs can drift for reasons the canary cannot see (another sampler implementation, an
//! extension, a model swapped behind the same name, fp16, xformers). This module is the client:
//! one request per case, with the service's auth header from a secret, a per-request time limit
//! (polling included), a response size limit, redirects followed only within the same origin,
//! and every failure one line that names what was asked and never holds the secret.

mod a1111;
pub mod cases;
mod comfyui;
mod http;
mod http_json;
mod template;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::duration::ConfigDuration;
use crate::sd::image::RgbImage;
use crate::sd::scheduler::SchedulerKind;
use crate::secret::{Secret, SecretSource};

pub use a1111::parse_answer as parse_a1111_answer;
pub use template::{fill, placeholders, PLACEHOLDERS};

/// Which API the service speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServiceKind {
    /// AUTOMATIC1111 / Forge WebUI: `POST /sdapi/v1/txt2img`.
    #[serde(rename = "a1111")]
    A1111,
    /// ComfyUI: `POST /prompt` with a workflow, `/history/{id}`, `/view`.
    #[serde(rename = "comfyui")]
    ComfyUi,
    /// An in-house server: a request-body template and a JSON pointer to the base64 image.
    #[serde(rename = "http-json")]
    HttpJson,
}

fn default_auth_header() -> String {
    "Authorization".into()
}
fn default_timeout() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(300))
}
fn default_max_response_mb() -> u64 {
    64
}
fn default_poll() -> ConfigDuration {
    ConfigDuration(Duration::from_millis(500))
}
fn default_path() -> String {
    "/".into()
}

/// `service:` — the generation service to probe.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// `a1111`, `comfyui` or `http-json`.
    pub kind: ServiceKind,
    /// Base URL, e.g. `http://127.0.0.1:7860` (http or https).
    pub url: String,
    /// Secret sent as the auth header's value (`${ENV}` or a literal), e.g. `Bearer …`.
    #[serde(default)]
    pub auth: Option<String>,
    /// File holding that secret (relative: to `$CREDENTIALS_DIRECTORY`, else the config's folder).
    #[serde(default)]
    pub auth_file: Option<PathBuf>,
    /// The header the secret goes in (default `Authorization`).
    #[serde(default = "default_auth_header")]
    pub auth_header: String,
    /// Time limit of one case's whole exchange, polling included (default 300s).
    #[serde(default = "default_timeout")]
    pub timeout: ConfigDuration,
    /// Largest response accepted, MiB (default 64).
    #[serde(default = "default_max_response_mb")]
    pub max_response_mb: u64,
    /// Sampler names by the monitor's scheduler name (`euler-a: "Euler a"`), over the defaults.
    #[serde(default)]
    pub samplers: BTreeMap<String, String>,
    /// ComfyUI: the workflow in API format (JSON), with placeholders.
    #[serde(default)]
    pub workflow: Option<PathBuf>,
    /// ComfyUI: how often `/history` is asked (default 500ms).
    #[serde(default = "default_poll")]
    pub poll_interval: ConfigDuration,
    /// http-json: the request body (JSON), with placeholders.
    #[serde(default)]
    pub request: Option<PathBuf>,
    /// http-json: the path POSTed to (default `/`).
    #[serde(default = "default_path")]
    pub path: String,
    /// http-json: JSON pointer to the base64 PNG in the response, e.g. `/images/0`.
    #[serde(default)]
    pub image_pointer: Option<String>,
    /// http-json: JSON pointer to an object of facts to record (model, version), optional.
    #[serde(default)]
    pub info_pointer: Option<String>,
}

impl ServiceConfig {
    /// The URL's scheme, host and port, for messages (never its credentials, path or query).
    pub fn url_origin(&self) -> String {
        reqwest::Url::parse(&self.url)
            .map(|u| u.origin().ascii_serialization())
            .unwrap_or_else(|_| "(invalid service.url)".into())
    }
}

/// One generation asked of the service: a case's parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceRequest {
    /// Prompt.
    pub prompt: String,
    /// Negative prompt (`""` when none).
    pub negative_prompt: String,
    /// Seed.
    pub seed: u64,
    /// Steps.
    pub steps: u32,
    /// Guidance scale.
    pub cfg: f64,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// The monitor's scheduler.
    pub scheduler: SchedulerKind,
    /// Karras sigmas.
    pub karras: bool,
    /// The case's own sampler name, sent as is (else mapped from the scheduler).
    pub sampler: Option<String>,
}

impl ServiceRequest {
    /// The parameters of a configured case.
    pub fn of(case: &crate::config::Case) -> ServiceRequest {
        ServiceRequest {
            prompt: case.prompt.clone(),
            negative_prompt: case.negative_prompt.clone().unwrap_or_default(),
            seed: case.seed,
            steps: case.steps,
            cfg: f64::from(case.guidance_scale),
            width: case.width,
            height: case.height,
            scheduler: case.scheduler,
            karras: case.karras,
            sampler: case.sampler.clone(),
        }
    }
}

/// What the service returned for one request.
#[derive(Debug, Clone)]
pub struct ServiceImage {
    /// The decoded image.
    pub image: RgbImage,
    /// What the service said about the generation (`sd_model_hash`, `version`, …), flat.
    pub info: BTreeMap<String, Value>,
    /// The sampler name that was sent.
    pub sampler: String,
    /// Seconds from the first request to the decoded image.
    pub seconds: f64,
}

/// A service ready to be asked: config checked, templates read, secret resolved.
pub struct Service {
    kind: ServiceKind,
    base: reqwest::Url,
    auth: Option<(reqwest::header::HeaderName, Secret)>,
    timeout: Duration,
    max_bytes: u64,
    samplers: BTreeMap<String, String>,
    template: Option<Value>,
    poll: Duration,
    path: String,
    image_pointer: String,
    info_pointer: Option<String>,
}

impl Service {
    /// Checks `c` and reads what it names (templates relative to `config_dir`). Errors are one
    /// line naming the key (`service.workflow: …`) and never hold the secret.
    pub fn from_config(c: &ServiceConfig, config_dir: &Path) -> Result<Service, String> {
        let base = reqwest::Url::parse(&c.url)
            .map_err(|e| format!("service.url: not a valid URL ({e})"))?;
        if !matches!(base.scheme(), "http" | "https") || base.host_str().is_none() {
            return Err("service.url: must be an http or https URL with a host".into());
        }
        let secret = match (&c.auth, &c.auth_file) {
            (Some(_), Some(_)) => {
                return Err("service: give auth or auth_file, not both".into());
            }
            (Some(s), None) => Some(
                SecretSource::from_config_str(s)
                    .resolve(config_dir)
                    .map_err(|e| format!("service.auth: {e}"))?,
            ),
            (None, Some(p)) => Some(
                SecretSource::File(p.clone())
                    .resolve(config_dir)
                    .map_err(|e| format!("service.auth_file: {e}"))?,
            ),
            (None, None) => None,
        };
        let auth = match secret {
            Some(s) => {
                let name = reqwest::header::HeaderName::from_bytes(c.auth_header.as_bytes())
                    .map_err(|_| {
                        format!(
                            "service.auth_header: {:?} is not a header name",
                            c.auth_header
                        )
                    })?;
                if reqwest::header::HeaderValue::from_str(s.expose()).is_err() {
                    return Err("service.auth: the secret is not a valid header value (control characters?)".into());
                }
                Some((name, s))
            }
            None => None,
        };
        if c.timeout.is_zero() {
            return Err("service.timeout: must be more than 0".into());
        }
        if c.max_response_mb == 0 {
            return Err("service.max_response_mb: must be at least 1".into());
        }
        for k in c.samplers.keys() {
            k.parse::<SchedulerKind>()
                .map_err(|e| format!("service.samplers.{k}: {e}"))?;
        }
        let read_template = |key: &str, p: &Option<PathBuf>| -> Result<Value, String> {
            let p = p
                .as_ref()
                .ok_or_else(|| format!("service.{key}: required for kind {}", kind_name(c.kind)))?;
            let p = crate::config::resolve_path(config_dir, p);
            let bytes = std::fs::read(&p)
                .map_err(|e| format!("service.{key}: cannot read {}: {e}", p.display()))?;
            let v: Value = serde_json::from_slice(&bytes)
                .map_err(|e| format!("service.{key}: {} is not JSON: {e}", p.display()))?;
            let unknown: Vec<String> = placeholders(&v)
                .into_iter()
                .filter(|n| !PLACEHOLDERS.contains(&n.as_str()))
                .collect();
            if !unknown.is_empty() {
                return Err(format!(
                    "service.{key}: {} has unknown placeholders {}; known: {}",
                    p.display(),
                    unknown
                        .iter()
                        .map(|u| format!("{{{{{u}}}}}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    PLACEHOLDERS.join(", ")
                ));
            }
            Ok(v)
        };
        let (template, image_pointer) = match c.kind {
            ServiceKind::A1111 => (None, String::new()),
            ServiceKind::ComfyUi => (Some(read_template("workflow", &c.workflow)?), String::new()),
            ServiceKind::HttpJson => {
                let ptr = c
                    .image_pointer
                    .clone()
                    .ok_or("service.image_pointer: required for kind http-json (e.g. /images/0)")?;
                if !ptr.is_empty() && !ptr.starts_with('/') {
                    return Err(format!(
                        "service.image_pointer: {ptr:?} is not a JSON pointer (it starts with /)"
                    ));
                }
                (Some(read_template("request", &c.request)?), ptr)
            }
        };
        Ok(Service {
            kind: c.kind,
            base,
            auth,
            timeout: c.timeout.get(),
            max_bytes: c.max_response_mb.saturating_mul(1 << 20),
            samplers: c.samplers.clone(),
            template,
            poll: c.poll_interval.get().max(Duration::from_millis(10)),
            path: c.path.clone(),
            image_pointer,
            info_pointer: c.info_pointer.clone(),
        })
    }

    /// The sampler name sent for `req`: the case's own, else the config's `samplers` entry, else
    /// the service's usual name for the scheduler.
    pub fn sampler_for(&self, req: &ServiceRequest) -> Result<String, String> {
        if let Some(s) = &req.sampler {
            return Ok(s.clone());
        }
        if let Some(s) = self.samplers.get(req.scheduler.name()) {
            return Ok(s.clone());
        }
        default_sampler(self.kind, req.scheduler, req.karras).ok_or_else(|| {
            format!(
                "scheduler {} has no {} sampler of the same name; set service.samplers.{}",
                req.scheduler,
                kind_name(self.kind),
                req.scheduler
            )
        })
    }

    /// Asks the service for one image (blocking; its own runtime, so it can be called from
    /// the check's thread).
    pub fn generate(&self, req: &ServiceRequest) -> Result<ServiceImage, String> {
        self.generate_until(req, &crate::worker::Cancel::new())
    }

    /// [`Self::generate`], given up within 50 ms of `cancel` being set (a stopping daemon must
    /// not wait out `service.timeout`).
    pub fn generate_until(
        &self,
        req: &ServiceRequest,
        cancel: &crate::worker::Cancel,
    ) -> Result<ServiceImage, String> {
        let sampler = self.sampler_for(req)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("starting the HTTP runtime: {e}"))?;
        let start = std::time::Instant::now();
        let client = http::Client::new(self)?;
        let answer = rt.block_on(async {
            // Timers need the runtime: both futures are made inside it.
            let work = tokio::time::timeout(self.timeout, self.exchange(&client, req, &sampler));
            let stopped = async {
                while !cancel.is_cancelled() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            };
            tokio::select! {
                a = work => Some(a),
                () = stopped => None,
            }
        });
        let (png, info) = answer
            .ok_or("cancelled: the monitor is stopping")?
            .map_err(|_| {
                format!(
                    "no image within {} (service.timeout)",
                    ConfigDuration(self.timeout)
                )
            })??;
        let image = decode_png(&png)?;
        Ok(ServiceImage {
            image,
            info,
            sampler,
            seconds: start.elapsed().as_secs_f64(),
        })
    }

    /// One case's requests, by kind: the PNG and the service's facts.
    async fn exchange(
        &self,
        client: &http::Client<'_>,
        req: &ServiceRequest,
        sampler: &str,
    ) -> Result<http::Output, String> {
        let template = || {
            self.template
                .as_ref()
                .ok_or_else(|| "no request template".to_string())
        };
        match self.kind {
            ServiceKind::A1111 => a1111::generate(client, req, sampler).await,
            ServiceKind::ComfyUi => {
                comfyui::generate(client, template()?, req, sampler, self.poll).await
            }
            ServiceKind::HttpJson => {
                http_json::generate(
                    client,
                    template()?,
                    req,
                    sampler,
                    &self.path,
                    &self.image_pointer,
                    self.info_pointer.as_deref(),
                )
                .await
            }
        }
    }

    /// The API kind's config name.
    pub fn kind_name(&self) -> &'static str {
        kind_name(self.kind)
    }

    /// Scheme, host and port of the service (never credentials, path or query).
    pub fn origin(&self) -> String {
        self.base.origin().ascii_serialization()
    }

    /// sha256 of the request template as read (ComfyUI workflow, http-json body), if any.
    pub fn template_sha256(&self) -> Option<String> {
        let t = self.template.as_ref()?;
        Some(crate::sd::model::sha256_hex(t.to_string().as_bytes()))
    }

    /// The secret, for redacting it from anything the service echoes.
    fn redact(&self, text: &str) -> String {
        match &self.auth {
            Some((_, s)) => s.redact(text),
            None => text.to_string(),
        }
    }
}

fn kind_name(k: ServiceKind) -> &'static str {
    match k {
        ServiceKind::A1111 => "a1111",
        ServiceKind::ComfyUi => "comfyui",
        ServiceKind::HttpJson => "http-json",
    }
}

/// The service's name for a scheduler, where it has one.
pub fn default_sampler(kind: ServiceKind, s: SchedulerKind, karras: bool) -> Option<String> {
    use SchedulerKind as S;
    let name = match kind {
        // A1111's names; "PLMS" is PNDM's sampler in the WebUI (Forge dropped it: override).
        ServiceKind::A1111 | ServiceKind::HttpJson => match (s, karras) {
            (S::Pndm, _) => "PLMS",
            (S::Ddim, _) => "DDIM",
            (S::Euler, _) => "Euler",
            (S::EulerAncestral, _) => "Euler a",
            (S::Lms, false) => "LMS",
            (S::Lms, true) => "LMS Karras",
            (S::DpmPp2m, false) => "DPM++ 2M",
            (S::DpmPp2m, true) => "DPM++ 2M Karras",
        },
        // ComfyUI's KSampler names (its `scheduler` input, normal or karras, is {{sigmas}}).
        ServiceKind::ComfyUi => match s {
            S::Pndm => return None,
            S::Ddim => "ddim",
            S::Euler => "euler",
            S::EulerAncestral => "euler_ancestral",
            S::Lms => "lms",
            S::DpmPp2m => "dpmpp_2m",
        },
    };
    Some(name.to_string())
}

/// Decodes the service's image; anything but a PNG is refused by what it looks like.
pub fn decode_png(bytes: &[u8]) -> Result<RgbImage, String> {
    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n";
    if !bytes.starts_with(PNG) {
        let looks = if bytes.starts_with(b"\xff\xd8\xff") {
            "a JPEG".to_string()
        } else if bytes.starts_with(b"RIFF") && bytes.get(8..12) == Some(b"WEBP") {
            "a WebP".to_string()
        } else if bytes.is_empty() {
            "empty".to_string()
        } else {
            let head: String = bytes
                .iter()
                .take(8)
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(" ");
            format!("not an image format this monitor reads (first bytes {head})")
        };
        return Err(format!(
            "the service's image is not a PNG: it is {looks}; configure the service to return PNG (a lossy format would hide or invent drift)"
        ));
    }
    RgbImage::from_png(bytes).map_err(|e| format!("the service's PNG does not decode: {e}"))
}

/// Decodes standard base64 (with or without padding, a `data:image/png;base64,` prefix and
/// line breaks allowed).
pub fn base64_decode(text: &str) -> Result<Vec<u8>, String> {
    use base64::Engine;
    let body = match text.split_once(";base64,") {
        Some((head, rest)) if head.starts_with("data:") => rest,
        _ => text,
    };
    let clean: String = body.chars().filter(|c| !c.is_whitespace()).collect();
    base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(clean.trim_end_matches('='))
        .map_err(|e| format!("the image is not valid base64: {e}"))
}
