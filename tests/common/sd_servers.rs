//! Fake generation services on loopback with the real request/response shapes of AUTOMATIC1111
//! (`/sdapi/v1/txt2img`: base64 PNGs, `info` as a JSON string) and ComfyUI (`/prompt`,
//! `/history/{id}`, `/view`, `/system_stats`). Images are a deterministic function of the request
//! (seed, size, prompt); switches perturb them, change the reported model, or make the server
//! misbehave the ways real ones do.

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use base64::Engine;
use monitor::sd::image::RgbImage;
use serde_json::{json, Value};

/// How the server answers.
#[derive(Debug, Clone, PartialEq)]
pub enum Mode {
    /// As a healthy server.
    Normal,
    /// One pixel of every image changed by one level.
    Perturbed,
    /// The top half of every image changed by 40 levels (what another sampler or fp16 gives).
    Drifted,
    /// Every second request answered as `Perturbed`: a server that does not repeat itself
    /// (non-deterministic kernels, a sampler with unseeded noise).
    Unstable,
    /// HTTP 500 with a Python traceback's last line.
    Error500,
    /// A body that is not JSON.
    Malformed,
    /// A JPEG instead of a PNG.
    Jpeg,
    /// An image of `n` bytes (over a small `max_response_mb`).
    Oversized(usize),
    /// Answers after this long.
    Slow(Duration),
    /// 302 to the same path on another host.
    RedirectElsewhere(String),
}

/// A request the server received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Value,
}

struct State {
    mode: Mode,
    model_hash: String,
    seen: Vec<Seen>,
    /// ComfyUI: queued prompts (id → the filled workflow) and /history polls so far.
    queued: Vec<(String, Value)>,
    polls: usize,
}

/// A fake server; stops when dropped.
pub struct FakeService {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
}

/// Which API it speaks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Api {
    A1111,
    ComfyUi,
}

/// The image a request gets: a pattern of seed, position and prompt length.
pub fn image_for(seed: u64, width: u32, height: u32, prompt: &str) -> RgbImage {
    let mut pixels = Vec::with_capacity((width * height * 3) as usize);
    for y in 0..height {
        for x in 0..width {
            for c in 0..3u64 {
                let v = seed.wrapping_mul(6364136223846793005).wrapping_add(
                    u64::from(x) * 31 + u64::from(y) * 17 + c * 7 + prompt.len() as u64,
                );
                pixels.push((v >> 24) as u8);
            }
        }
    }
    RgbImage {
        width,
        height,
        pixels,
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

impl FakeService {
    pub fn start(api: Api) -> FakeService {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let state = Arc::new(Mutex::new(State {
            mode: Mode::Normal,
            model_hash: "6ce0161689".into(),
            seen: Vec::new(),
            queued: Vec::new(),
            polls: 0,
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (Arc::clone(&state), Arc::clone(&stop));
        thread::spawn(move || {
            while !sp.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((s, _)) => {
                        let st = Arc::clone(&st);
                        thread::spawn(move || {
                            let _ = session(s, api, &st);
                        });
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        FakeService { addr, state, stop }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_mode(&self, m: Mode) {
        self.state.lock().unwrap().mode = m;
    }

    pub fn set_model_hash(&self, h: &str) {
        self.state.lock().unwrap().model_hash = h.to_string();
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }
}

impl Drop for FakeService {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

struct Reply {
    status: u16,
    content_type: &'static str,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

fn reply(status: u16, ct: &'static str, body: Vec<u8>) -> Reply {
    Reply {
        status,
        content_type: ct,
        headers: Vec::new(),
        body,
    }
}

fn session(stream: TcpStream, api: Api, state: &Mutex<State>) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut out = stream.try_clone()?;
    let Some((method, path, headers, raw)) = super::peers::read_request(stream)? else {
        return Ok(());
    };
    let body: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    let mode = {
        let mut s = state.lock().unwrap();
        s.seen.push(Seen {
            method: method.clone(),
            path: path.clone(),
            headers,
            body: body.clone(),
        });
        match s.mode {
            Mode::Unstable if s.seen.len().is_multiple_of(2) => Mode::Perturbed,
            Mode::Unstable => Mode::Normal,
            _ => s.mode.clone(),
        }
    };
    if let Mode::Slow(d) = &mode {
        thread::sleep(*d);
    }
    let r = match &mode {
        Mode::Error500 => reply(
            500,
            "text/plain",
            b"Internal Server Error\nRuntimeError: CUDA out of memory".to_vec(),
        ),
        Mode::Malformed => reply(200, "application/json", b"{\"images\": [\"iVBOR".to_vec()),
        Mode::RedirectElsewhere(to) => Reply {
            status: 302,
            content_type: "text/plain",
            headers: vec![("Location".into(), format!("{to}{path}"))],
            body: Vec::new(),
        },
        _ => match api {
            Api::A1111 => a1111(&method, &path, &body, &mode, state),
            Api::ComfyUi => comfyui(&method, &path, &body, &mode, state),
        },
    };
    let mut head = format!(
        "HTTP/1.1 {} Fake\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        r.status,
        r.content_type,
        r.body.len()
    );
    for (n, v) in &r.headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str("\r\n");
    out.write_all(head.as_bytes())?;
    out.write_all(&r.body)?;
    out.flush()
}

/// The image bytes a request gets in `mode`.
fn image_bytes(seed: u64, w: u32, h: u32, prompt: &str, mode: &Mode) -> Vec<u8> {
    match mode {
        Mode::Jpeg => {
            let mut b = vec![0xff, 0xd8, 0xff, 0xe0, 0, 16, b'J', b'F', b'I', b'F'];
            b.resize(2000, 0);
            b
        }
        Mode::Oversized(n) => {
            let mut b = image_for(seed, w, h, prompt).to_png().unwrap();
            b.resize(*n, 0);
            b
        }
        _ => {
            let mut img = image_for(seed, w, h, prompt);
            if *mode == Mode::Perturbed {
                img.pixels[0] = img.pixels[0].wrapping_add(1);
            }
            if *mode == Mode::Drifted {
                let half = img.pixels.len() / 2;
                for p in &mut img.pixels[..half] {
                    *p = p.wrapping_add(40);
                }
            }
            img.to_png().unwrap()
        }
    }
}

fn a1111(method: &str, path: &str, body: &Value, mode: &Mode, state: &Mutex<State>) -> Reply {
    if method != "POST" || path != "/sdapi/v1/txt2img" {
        return reply(
            404,
            "application/json",
            br#"{"detail":"Not Found"}"#.to_vec(),
        );
    }
    let seed = body["seed"].as_u64().unwrap_or(0);
    let (w, h) = (
        body["width"].as_u64().unwrap_or(8) as u32,
        body["height"].as_u64().unwrap_or(8) as u32,
    );
    let prompt = body["prompt"].as_str().unwrap_or("");
    let png = image_bytes(seed, w, h, prompt, mode);
    let hash = state.lock().unwrap().model_hash.clone();
    let info = json!({
        "prompt": prompt, "all_prompts": [prompt], "seed": seed, "all_seeds": [seed],
        "sampler_name": body["sampler_name"], "cfg_scale": body["cfg_scale"], "steps": body["steps"],
        "sd_model_name": "v1-5-pruned-emaonly", "sd_model_hash": hash, "sd_vae_name": null,
        "version": "v1.10.1", "clip_skip": 1,
    });
    let doc = json!({"images": [b64(&png)], "parameters": body, "info": info.to_string()});
    reply(200, "application/json", serde_json::to_vec(&doc).unwrap())
}

fn comfyui(method: &str, path: &str, body: &Value, mode: &Mode, state: &Mutex<State>) -> Reply {
    let json_reply = |v: Value| reply(200, "application/json", serde_json::to_vec(&v).unwrap());
    if method == "POST" && path == "/prompt" {
        let mut s = state.lock().unwrap();
        let id = format!("p{}", s.queued.len() + 1);
        s.queued.push((id.clone(), body["prompt"].clone()));
        s.polls = 0;
        return json_reply(json!({"prompt_id": id, "number": s.queued.len(), "node_errors": {}}));
    }
    if method == "GET" && path.starts_with("/history/") {
        let id = &path["/history/".len()..];
        let mut s = state.lock().unwrap();
        s.polls += 1;
        // Still running at the first poll, as a real queue is.
        if s.polls < 2 {
            return json_reply(json!({}));
        }
        return json_reply(json!({id: {
            "prompt": [1, id, {}, {}, ["9"]],
            "outputs": {"9": {"images": [{"filename": format!("ComfyUI_{id}_.png"), "subfolder": "", "type": "output"}]}},
            "status": {"status_str": "success", "completed": true, "messages": []}
        }}));
    }
    if method == "GET" && path.starts_with("/view?") {
        let s = state.lock().unwrap();
        let Some((_, wf)) = s.queued.last() else {
            return reply(404, "text/plain", b"no such image".to_vec());
        };
        let find = |class: &str, input: &str| -> Value {
            wf.as_object()
                .into_iter()
                .flatten()
                .find(|(_, n)| n["class_type"] == class)
                .map(|(_, n)| n["inputs"][input].clone())
                .unwrap_or(Value::Null)
        };
        let seed = find("KSampler", "seed").as_u64().unwrap_or(0);
        let w = find("EmptyLatentImage", "width").as_u64().unwrap_or(8) as u32;
        let h = find("EmptyLatentImage", "height").as_u64().unwrap_or(8) as u32;
        let prompt_len = wf
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(_, n)| n["class_type"] == "CLIPTextEncode")
            .map(|(_, n)| n["inputs"]["text"].as_str().unwrap_or("").to_string())
            .next()
            .unwrap_or_default();
        return reply(200, "image/png", image_bytes(seed, w, h, &prompt_len, mode));
    }
    if method == "GET" && path == "/system_stats" {
        return json_reply(
            json!({"system": {"os": "posix", "comfyui_version": "0.3.40", "python_version": "3.12.3", "pytorch_version": "2.7.1+cu128"},
            "devices": [{"name": "cuda:0 NVIDIA H100 80GB HBM3 : cudaMallocAsync", "type": "cuda"}]}),
        );
    }
    reply(404, "text/plain", b"404: Not Found".to_vec())
}

/// A loopback address where nothing listens (a service that is down).
pub fn dead_url() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    drop(l);
    format!("http://{a}")
}
