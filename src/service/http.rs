//! The HTTP client a probe uses: auth header, same-origin redirects only, a size limit on every
//! response body, and errors worded without the URL's secrets.

use std::collections::BTreeMap;

use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, Url};
use serde_json::Value;

use super::Service;

/// A client for one service.
pub struct Client<'a> {
    service: &'a Service,
    inner: reqwest::Client,
}

/// What the protocol modules return: PNG bytes and the service's facts.
pub type Output = (Vec<u8>, BTreeMap<String, Value>);

impl<'a> Client<'a> {
    /// A client that sends the service's auth header and follows redirects only to the same
    /// scheme, host and port (at most 5).
    pub fn new(service: &'a Service) -> Result<Client<'a>, String> {
        let origin = service.base.clone();
        let policy = reqwest::redirect::Policy::custom(move |attempt| {
            let u = attempt.url();
            let same = u.scheme() == origin.scheme()
                && u.host_str() == origin.host_str()
                && u.port_or_known_default() == origin.port_or_known_default();
            if !same {
                let host = u.host_str().unwrap_or("?").to_string();
                attempt.error(format!(
                    "the service redirected to another host ({host}); not followed"
                ))
            } else if attempt.previous().len() >= 5 {
                attempt.error("more than 5 redirects")
            } else {
                attempt.follow()
            }
        });
        let mut headers = HeaderMap::new();
        if let Some((name, secret)) = &service.auth {
            let mut v = HeaderValue::from_str(secret.expose())
                .map_err(|_| "service.auth: not a valid header value".to_string())?;
            v.set_sensitive(true);
            headers.insert(name.clone(), v);
        }
        let inner = reqwest::Client::builder()
            .user_agent(concat!("monitor/", env!("CARGO_PKG_VERSION")))
            .redirect(policy)
            .default_headers(headers)
            .build()
            .map_err(|e| format!("cannot set up the HTTP client: {e}"))?;
        Ok(Client { service, inner })
    }

    /// The service's URL for `path` (which may carry a query).
    pub fn url(&self, path: &str) -> Result<Url, String> {
        let base = self.service.base.as_str().trim_end_matches('/');
        Url::parse(&format!("{base}/{}", path.trim_start_matches('/')))
            .map_err(|e| format!("{path}: not a valid URL path ({e})"))
    }

    /// Sends a request and returns the body of a 2xx answer (at most `max_response_mb`).
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        json: Option<&Value>,
    ) -> Result<Vec<u8>, String> {
        let url = self.url(path)?;
        let what = format!("{method} {}", url.path());
        let mut rb = self.inner.request(method, url);
        if let Some(body) = json {
            rb = rb.json(body);
        }
        let mut resp = rb.send().await.map_err(|e| self.describe(&what, e))?;
        let status = resp.status();
        let limit = self.service.max_bytes;
        if resp.content_length().is_some_and(|n| n > limit) {
            return Err(format!(
                "{what}: the response is {} bytes, over the {} MiB limit (service.max_response_mb)",
                resp.content_length().unwrap_or(0),
                limit >> 20
            ));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| self.describe(&what, e))? {
            if (body.len() + chunk.len()) as u64 > limit {
                return Err(format!(
                    "{what}: the response is over the {} MiB limit (service.max_response_mb)",
                    limit >> 20
                ));
            }
            body.extend_from_slice(&chunk);
        }
        if !status.is_success() {
            let text: String = String::from_utf8_lossy(&body)
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .take(200)
                .collect();
            return Err(self.service.redact(&format!(
                "{what}: HTTP {}{}",
                status.as_u16(),
                if text.trim().is_empty() {
                    String::new()
                } else {
                    format!(": {}", text.trim())
                }
            )));
        }
        Ok(body)
    }

    /// [`Client::send`] with a JSON answer.
    pub async fn send_json(
        &self,
        method: Method,
        path: &str,
        json: Option<&Value>,
    ) -> Result<Value, String> {
        let body = self.send(method, path, json).await?;
        serde_json::from_slice(&body).map_err(|e| {
            let path = path.split('?').next().unwrap_or(path);
            format!("{path}: the answer is not JSON ({e})")
        })
    }

    /// One line for a transport error: what was asked, and the innermost cause.
    fn describe(&self, what: &str, e: reqwest::Error) -> String {
        let e = e.without_url();
        let mut inner: &dyn std::error::Error = &e;
        let mut parts = vec![e.to_string()];
        while let Some(next) = inner.source() {
            parts.push(next.to_string());
            inner = next;
        }
        let io = inner
            .downcast_ref::<std::io::Error>()
            .map(std::io::Error::kind);
        let reason = match io {
            Some(std::io::ErrorKind::ConnectionRefused) => {
                "connection refused (is the service running?)".to_string()
            }
            Some(std::io::ErrorKind::ConnectionReset) => "connection reset".to_string(),
            _ => {
                parts.dedup();
                parts.join(": ")
            }
        };
        self.service.redact(&format!("{what}: {reason}"))
    }
}
