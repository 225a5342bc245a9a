//! `GET /metrics` and `GET /healthz` on `metrics.listen`. A minimal HTTP/1.1 responder: two
//! read-only paths for Prometheus and a load balancer's probe need no web framework. Metrics are
//! rendered from the history database per scrape (see `crate::metrics`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::clock::unix_now;
use crate::config::Config;

/// The loop's last iteration, unix seconds; `/healthz` fails once it is older than this many
/// seconds (the loop wakes at least every 30 s).
pub const STALE_AFTER_S: f64 = 90.0;

/// [`STALE_AFTER_S`], or the test hook's value (tests cannot wait 90 s for a stalled loop).
fn stale_after_s() -> f64 {
    static VALUE: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *VALUE.get_or_init(|| {
        std::env::var("MONITOR_TEST_HEALTH_STALE_S")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(STALE_AFTER_S)
    })
}

/// What the endpoint reads: the config in force (reloads replace it) and the loop's heartbeat.
#[derive(Clone)]
pub struct Shared {
    /// The current config.
    pub config: tokio::sync::watch::Receiver<Arc<Config>>,
    /// Unix seconds of the scheduler loop's last iteration, as f64 bits.
    pub heartbeat: Arc<AtomicU64>,
}

impl Shared {
    /// Records a loop iteration now.
    pub fn beat(heartbeat: &AtomicU64) {
        heartbeat.store(unix_now().to_bits(), Ordering::Relaxed);
    }
}

/// Binds `listen`; the caller logs a failure and runs on without the endpoint (metrics must never
/// stop the watchdog).
pub async fn bind(listen: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(listen).await
}

/// Connections served at once; more wait in the listen backlog (a scraper needs one).
const MAX_CONNECTIONS: usize = 8;

/// Serves connections until the task is aborted: at most [`MAX_CONNECTIONS`] at a time, each
/// given 10 s.
pub async fn serve(listener: TcpListener, shared: Shared) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(10), handle(stream, shared)).await;
            drop(permit);
        });
    }
}

async fn handle(mut stream: TcpStream, shared: Shared) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    // The request head only; bodies are not read (both paths are GET).
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 || buf.len() > 16 * 1024 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf);
    let mut parts = head.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, content_type, body) = match (method, path) {
        ("GET", "/metrics") => {
            let config = shared.config.borrow().clone();
            let rendered = tokio::task::spawn_blocking(move || {
                crate::history::History::open(&config.storage.database)
                    .map_err(anyhow::Error::from)
                    .and_then(|h| crate::metrics::render(&config, &h))
            })
            .await;
            match rendered {
                Ok(Ok(text)) => (
                    "200 OK",
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    text,
                ),
                Ok(Err(e)) => (
                    "500 Internal Server Error",
                    "text/plain; charset=utf-8",
                    format!("{}\n", e.to_string().replace('\n', " ")),
                ),
                Err(e) => (
                    "500 Internal Server Error",
                    "text/plain; charset=utf-8",
                    format!("{e}\n"),
                ),
            }
        }
        ("GET", "/healthz") => {
            let last = f64::from_bits(shared.heartbeat.load(Ordering::Relaxed));
            let age = unix_now() - last;
            if age <= stale_after_s() {
                ("200 OK", "text/plain; charset=utf-8", "ok\n".to_string())
            } else {
                (
                    "503 Service Unavailable",
                    "text/plain; charset=utf-8",
                    format!("scheduler loop stalled: last iteration {age:.0} s ago\n"),
                )
            }
        }
        ("GET", _) => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "only /metrics and /healthz\n".to_string(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "GET only\n".to_string(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}
