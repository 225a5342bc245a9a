//! The generic webhook: POSTs the [`Alert`] document as JSON. Also the HTTP plumbing Slack
//! shares: one client, the status classification, and keeping the URL (a secret) out of errors.

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use reqwest::{Client, StatusCode};

use super::{Alert, Channel, SendError, SendFuture, ALERT_VERSION};
use crate::secret::Secret;

/// Header telling receivers the [`Alert`] document's version.
pub const VERSION_HEADER: &str = "X-Monitor-Alert-Version";

/// Longest Retry-After honoured: a server cannot park a delivery for longer than a day.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(86_400);

/// POSTs each alert as JSON to a URL.
pub struct WebhookChannel {
    client: Client,
    url: Secret,
    timeout: Duration,
}

impl WebhookChannel {
    /// A channel posting to `url` (checked to be an http(s) URL; the error never shows it).
    pub fn new(client: Client, url: Secret, timeout: Duration) -> Result<WebhookChannel, String> {
        check_url(&url)?;
        Ok(WebhookChannel {
            client,
            url,
            timeout,
        })
    }
}

impl Channel for WebhookChannel {
    fn name(&self) -> &'static str {
        "webhook"
    }

    fn send<'a>(&'a self, alert: &'a Alert) -> SendFuture<'a> {
        Box::pin(async move {
            let mut headers = HeaderMap::new();
            headers.insert(VERSION_HEADER, HeaderValue::from(ALERT_VERSION));
            post_json(&self.client, &self.url, self.timeout, alert, headers).await
        })
    }
}

/// The HTTP client the channels share (proxies from the environment; timeouts are per request).
pub fn http_client() -> Result<Client, String> {
    let builder = || Client::builder().user_agent(concat!("monitor/", env!("CARGO_PKG_VERSION")));
    match builder().build() {
        Ok(c) => Ok(c),
        // The platform verifier refuses to start without system CA certificates (a minimal
        // container without ca-certificates): plain-http channels must still work, and an https
        // delivery then fails with its own certificate error, retried, instead of the whole
        // daemon refusing to start.
        Err(e) => {
            tracing::warn!(
                "no usable system CA certificates ({}); alerts over https will fail until the ca-certificates package is installed",
                error_chain(&e)
            );
            builder()
                .tls_certs_only(Vec::<reqwest::Certificate>::new())
                .build()
                .map_err(|e| format!("cannot set up the HTTP client: {}", error_chain(&e)))
        }
    }
}

/// An error and its sources on one line (reqwest's own Display says only "builder error").
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        parts.push(s.to_string());
        cur = s.source();
    }
    parts.join(": ")
}

/// Refuses anything but an absolute http(s) URL, without echoing it.
pub(crate) fn check_url(url: &Secret) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url.expose()).map_err(|e| format!("not a valid URL ({e})"))?;
    match parsed.scheme() {
        "http" | "https" if parsed.host_str().is_some() => Ok(()),
        "http" | "https" => Err("the URL has no host".into()),
        other => Err(format!("the URL scheme must be http or https, not {other}")),
    }
}

/// POSTs `body` as JSON and classifies the outcome: 2xx delivered; 408, 429 and 5xx, network
/// errors and timeouts worth retrying (honouring Retry-After); any other status permanent.
pub(crate) async fn post_json<T: serde::Serialize + ?Sized>(
    client: &Client,
    url: &Secret,
    timeout: Duration,
    body: &T,
    headers: HeaderMap,
) -> Result<(), SendError> {
    let json = serde_json::to_vec(body)
        .map_err(|e| SendError::Permanent(format!("cannot encode the alert as JSON: {e}")))?;
    let request = client
        .post(url.expose())
        .timeout(timeout)
        .header(CONTENT_TYPE, "application/json")
        .headers(headers)
        .body(json);
    // reqwest's own timeout covers the whole request; this one also bounds a stalled body read.
    let response = match tokio::time::timeout(timeout, request.send()).await {
        Err(_) => return Err(timed_out(timeout)),
        Ok(Err(e)) => return Err(request_error(e, url, timeout)),
        Ok(Ok(r)) => r,
    };
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let after = retry_after(response.headers());
    let excerpt = match tokio::time::timeout(timeout, response.text()).await {
        Ok(Ok(body)) => excerpt(&body),
        _ => String::new(),
    };
    let reason = redact_url(url, &status_reason(status, &excerpt));
    Err(classify_status(status, reason, after))
}

/// Whether a non-2xx status is worth retrying.
pub(crate) fn classify_status(
    status: StatusCode,
    reason: String,
    after: Option<Duration>,
) -> SendError {
    if status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
        || status.is_server_error()
    {
        SendError::Retry { reason, after }
    } else {
        SendError::Permanent(reason)
    }
}

/// "HTTP 404 no_service", or "HTTP 429 Too Many Requests" when the body says nothing.
fn status_reason(status: StatusCode, excerpt: &str) -> String {
    if excerpt.is_empty() {
        format!(
            "HTTP {} {}",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        )
        .trim_end()
        .to_string()
    } else {
        format!("HTTP {} {excerpt}", status.as_u16())
    }
}

/// The first 200 characters of a response body, on one line.
fn excerpt(body: &str) -> String {
    let flat: String = body.split_whitespace().collect::<Vec<_>>().join(" ");
    match flat.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &flat[..i]),
        None => flat,
    }
}

/// Retry-After in seconds (the HTTP-date form is not honoured: servers answering webhooks send
/// seconds).
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let secs: u64 = headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER))
}

fn timed_out(timeout: Duration) -> SendError {
    SendError::Retry {
        reason: format!(
            "timed out after {}",
            crate::duration::ConfigDuration(timeout)
        ),
        after: None,
    }
}

/// A transport error, worded from its innermost cause ("connection refused"), without the URL.
fn request_error(e: reqwest::Error, url: &Secret, timeout: Duration) -> SendError {
    if e.is_timeout() {
        return timed_out(timeout);
    }
    let connect = e.is_connect();
    let e = e.without_url();
    let mut innermost: &dyn std::error::Error = &e;
    let mut nested = false;
    while let Some(next) = innermost.source() {
        innermost = next;
        nested = true;
    }
    let io_kind = innermost
        .downcast_ref::<std::io::Error>()
        .map(std::io::Error::kind);
    let reason = match io_kind {
        Some(std::io::ErrorKind::ConnectionRefused) => "connection refused".to_string(),
        Some(std::io::ErrorKind::ConnectionReset) => "connection reset".to_string(),
        _ if connect => format!("cannot connect: {innermost}"),
        _ if nested => format!("{e}: {innermost}"),
        _ => e.to_string(),
    };
    SendError::Retry {
        reason: redact_url(url, &reason),
        after: None,
    }
}

/// Removes the URL, and its path and query (where the token of a Slack or webhook URL lives,
/// which a server may echo), from `text`.
pub(crate) fn redact_url(url: &Secret, text: &str) -> String {
    let mut out = url.redact(text);
    if let Ok(parsed) = reqwest::Url::parse(url.expose()) {
        let mut tail = parsed.path().to_string();
        if let Some(q) = parsed.query() {
            tail.push('?');
            tail.push_str(q);
        }
        // A bare "/hook" is no token and redacting it would garble ordinary words.
        if tail.len() >= 8 {
            out = Secret::new(tail).redact(&out);
        }
        if let Some(q) = parsed.query() {
            out = Secret::new(q).redact(&out);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified() {
        let r = |s: u16| classify_status(StatusCode::from_u16(s).unwrap(), "x".into(), None);
        assert!(matches!(r(429), SendError::Retry { .. }));
        assert!(matches!(r(408), SendError::Retry { .. }));
        assert!(matches!(r(500), SendError::Retry { .. }));
        assert!(matches!(r(503), SendError::Retry { .. }));
        assert!(matches!(r(400), SendError::Permanent(_)));
        assert!(matches!(r(404), SendError::Permanent(_)));
        assert!(matches!(r(410), SendError::Permanent(_)));
        assert_eq!(
            status_reason(StatusCode::NOT_FOUND, "no_service"),
            "HTTP 404 no_service"
        );
        assert_eq!(
            status_reason(StatusCode::TOO_MANY_REQUESTS, ""),
            "HTTP 429 Too Many Requests"
        );
    }

    #[test]
    fn retry_after_is_read_in_seconds_and_capped() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        h.insert(RETRY_AFTER, HeaderValue::from_static("99999999"));
        assert_eq!(retry_after(&h), Some(MAX_RETRY_AFTER));
        h.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn the_url_and_its_token_are_redacted() {
        let url = Secret::new("https://hooks.slack.com/services/T000/B000/SECRET-TOKEN");
        let text = "POST https://hooks.slack.com/services/T000/B000/SECRET-TOKEN: unknown path /services/T000/B000/SECRET-TOKEN";
        let out = redact_url(&url, text);
        assert!(!out.contains("SECRET-TOKEN"), "{out}");
        let q = Secret::new("https://example.com/hook?token=abcdef123");
        assert!(!redact_url(&q, "bad token=abcdef123").contains("abcdef123"));
    }

    #[test]
    fn only_http_urls_are_accepted_and_never_echoed() {
        assert!(check_url(&Secret::new("https://example.com/x")).is_ok());
        let e = check_url(&Secret::new("ftp://example.com/SECRET")).unwrap_err();
        assert!(!e.contains("SECRET"), "{e}");
        let e = check_url(&Secret::new("not a url SECRET")).unwrap_err();
        assert!(!e.contains("SECRET"), "{e}");
    }

    #[test]
    fn long_bodies_are_cut_to_one_line() {
        let body = format!("line one\nline two {}", "x".repeat(300));
        let e = excerpt(&body);
        assert!(e.starts_with("line one line two x"));
        assert_eq!(e.chars().count(), 201);
    }
}
