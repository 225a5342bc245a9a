//! Loopback peers for the alert tests, started by the tests themselves (plain std threads): an
//! SMTP sink that keeps what it receives and can be taken down and brought back on the same
//! port, a scripted HTTP server that records every request, and a small MIME reader to check
//! what an email holds.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How often an idle accept loop looks for a connection or a stop request.
const POLL: Duration = Duration::from_millis(5);

/// Accepts connections on a non-blocking listener (swappable, so a peer can go down and come
/// back on the same port) until `stop`, handing each to `handle` on its own thread.
fn serve<F>(listener: Arc<Mutex<Option<TcpListener>>>, stop: Arc<AtomicBool>, handle: F)
where
    F: Fn(TcpStream) + Send + Sync + 'static,
{
    let handle = Arc::new(handle);
    thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            let accepted = match listener.lock().unwrap().as_ref() {
                Some(l) => l.accept().ok(),
                None => None,
            };
            match accepted {
                Some((stream, _)) => {
                    stream.set_nonblocking(false).unwrap();
                    stream
                        .set_read_timeout(Some(Duration::from_secs(10)))
                        .unwrap();
                    let handle = Arc::clone(&handle);
                    thread::spawn(move || handle(stream));
                }
                None => thread::sleep(POLL),
            }
        }
    });
}

fn bind(addr: &str) -> TcpListener {
    let l = TcpListener::bind(addr).unwrap_or_else(|e| panic!("binding {addr}: {e}"));
    l.set_nonblocking(true).unwrap();
    l
}

/// One message as the sink received it.
#[derive(Debug, Clone)]
pub struct ReceivedMail {
    /// MAIL FROM address.
    pub from: String,
    /// RCPT TO addresses.
    pub to: Vec<String>,
    /// The DATA section, dot-unstuffed, CRLF line ends.
    pub data: String,
}

#[derive(Default)]
struct SmtpState {
    messages: Vec<ReceivedMail>,
    /// Replies that replace the normal one for a command verb ("RCPT", "AUTH", ...).
    replies: Vec<(String, String)>,
    /// Advertise AUTH PLAIN in the EHLO reply.
    auth: bool,
    /// AUTH lines as received (to check what a client sent).
    auth_lines: Vec<String>,
    /// Wait this long before the greeting (to make a client time out).
    stall: Duration,
}

/// A minimal SMTP server that accepts every message (no TLS).
pub struct SmtpSink {
    addr: SocketAddr,
    listener: Arc<Mutex<Option<TcpListener>>>,
    state: Arc<Mutex<SmtpState>>,
    stop: Arc<AtomicBool>,
}

impl SmtpSink {
    /// Listens on a free loopback port.
    pub fn start() -> SmtpSink {
        let listener = bind("127.0.0.1:0");
        let addr = listener.local_addr().unwrap();
        let sink = SmtpSink {
            addr,
            listener: Arc::new(Mutex::new(Some(listener))),
            state: Arc::default(),
            stop: Arc::default(),
        };
        let state = Arc::clone(&sink.state);
        serve(
            Arc::clone(&sink.listener),
            Arc::clone(&sink.stop),
            move |s| {
                // A client that hangs up mid-conversation is not the sink's problem.
                let _ = smtp_session(s, &state);
            },
        );
        sink
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Down: the listening socket is closed (connections are refused). Up: listening again on
    /// the same port. Returns once the change is in effect.
    pub fn set_down(&self, down: bool) {
        let mut l = self.listener.lock().unwrap();
        if down {
            *l = None;
        } else if l.is_none() {
            *l = Some(bind(&self.addr.to_string()));
        }
    }

    /// Answers `verb` ("RCPT", "MAIL", "DATA", "AUTH", or "." for the end of data) with `reply`
    /// (e.g. "550 5.1.1 no such user") instead of accepting.
    pub fn reply(&self, verb: &str, reply: &str) {
        self.state
            .lock()
            .unwrap()
            .replies
            .push((verb.to_string(), reply.to_string()));
    }

    /// Advertises AUTH PLAIN and accepts any credentials (unless [`SmtpSink::reply`] says
    /// otherwise for "AUTH").
    pub fn require_auth(&self) {
        self.state.lock().unwrap().auth = true;
    }

    /// Makes new sessions wait `stall` before greeting (a server that accepts but hangs).
    pub fn set_stall(&self, stall: Duration) {
        self.state.lock().unwrap().stall = stall;
    }

    /// Every message received so far.
    pub fn messages(&self) -> Vec<ReceivedMail> {
        self.state.lock().unwrap().messages.clone()
    }

    /// Every AUTH command line received.
    pub fn auth_lines(&self) -> Vec<String> {
        self.state.lock().unwrap().auth_lines.clone()
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn smtp_session(stream: TcpStream, state: &Mutex<SmtpState>) -> std::io::Result<()> {
    let mut out = stream.try_clone()?;
    let mut input = BufReader::new(stream);
    let mut send = |line: &str| out.write_all(format!("{line}\r\n").as_bytes());
    let stall = state.lock().unwrap().stall;
    thread::sleep(stall);
    send("220 sink.test ESMTP ready")?;
    let override_for = |verb: &str| {
        let st = state.lock().unwrap();
        st.replies
            .iter()
            .find(|(v, _)| v.eq_ignore_ascii_case(verb))
            .map(|(_, r)| r.clone())
    };
    let mut from = String::new();
    let mut to = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        if input.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let cmd = line.trim_end_matches(['\r', '\n']).to_string();
        let verb = cmd
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_ascii_uppercase();
        if let Some(r) = override_for(&verb) {
            if verb == "AUTH" {
                state.lock().unwrap().auth_lines.push(cmd.clone());
            }
            send(&r)?;
            continue;
        }
        match verb.as_str() {
            "EHLO" => {
                let auth = state.lock().unwrap().auth;
                send("250-sink.test")?;
                send("250-8BITMIME")?;
                if auth {
                    send("250-AUTH PLAIN")?;
                }
                send("250 SIZE 10485760")?;
            }
            "HELO" => send("250 sink.test")?,
            "AUTH" => {
                state.lock().unwrap().auth_lines.push(cmd.clone());
                send("235 2.7.0 authenticated")?;
            }
            "MAIL" => {
                from = address(&cmd);
                to.clear();
                send("250 2.1.0 ok")?;
            }
            "RCPT" => {
                to.push(address(&cmd));
                send("250 2.1.5 ok")?;
            }
            "DATA" => {
                send("354 end with <CRLF>.<CRLF>")?;
                let mut data = String::new();
                loop {
                    line.clear();
                    if input.read_line(&mut line)? == 0 {
                        return Ok(());
                    }
                    if line == ".\r\n" || line == ".\n" {
                        break;
                    }
                    data.push_str(line.strip_prefix('.').unwrap_or(&line));
                }
                if let Some(r) = override_for(".") {
                    send(&r)?;
                    continue;
                }
                state.lock().unwrap().messages.push(ReceivedMail {
                    from: from.clone(),
                    to: std::mem::take(&mut to),
                    data,
                });
                send("250 2.0.0 queued")?;
            }
            "RSET" => {
                to.clear();
                send("250 2.0.0 ok")?;
            }
            "NOOP" => send("250 2.0.0 ok")?,
            "QUIT" => {
                send("221 2.0.0 bye")?;
                return Ok(());
            }
            _ => send("502 5.5.2 command not recognized")?,
        }
    }
}

/// The address inside `<...>` of a MAIL FROM / RCPT TO line.
fn address(cmd: &str) -> String {
    match (cmd.find('<'), cmd.find('>')) {
        (Some(a), Some(b)) if a < b => cmd[a + 1..b].to_string(),
        _ => String::new(),
    }
}

/// One scripted HTTP answer.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Extra headers, e.g. ("Retry-After", "1").
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: String,
    /// How long to wait before answering (to make a client time out).
    pub delay: Duration,
}

impl Reply {
    /// A reply with `status` and `body`, no extra headers.
    pub fn new(status: u16, body: &str) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: body.to_string(),
            delay: Duration::ZERO,
        }
    }

    /// The same reply, sent only after `delay`.
    pub fn after(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }

    /// The same reply with one more header.
    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
}

/// One request as the peer received it.
#[derive(Debug, Clone)]
pub struct Request {
    /// "POST", ...
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
    /// When it had been read completely.
    pub at: Instant,
}

impl Request {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// An HTTP/1.1 server answering each request with the next scripted reply, then `200 ok`.
pub struct HttpPeer {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<Request>>>,
    stop: Arc<AtomicBool>,
}

impl HttpPeer {
    /// Listens on a free loopback port with `script`.
    pub fn start(script: Vec<Reply>) -> HttpPeer {
        let listener = bind("127.0.0.1:0");
        let addr = listener.local_addr().unwrap();
        let peer = HttpPeer {
            addr,
            requests: Arc::default(),
            stop: Arc::default(),
        };
        let script = Arc::new(Mutex::new(VecDeque::from(script)));
        let requests = Arc::clone(&peer.requests);
        serve(
            Arc::new(Mutex::new(Some(listener))),
            Arc::clone(&peer.stop),
            move |s| {
                let _ = http_session(s, &script, &requests);
            },
        );
        peer
    }

    /// `http://127.0.0.1:PORT` (no trailing slash).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for HttpPeer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Reads one HTTP/1.1 request: method, path, headers (names lower-cased) and the body of its
/// Content-Length; `None` when the client closed without sending one.
pub type RawRequest = (String, String, Vec<(String, String)>, Vec<u8>);

/// See [`RawRequest`].
pub fn read_request(stream: TcpStream) -> std::io::Result<Option<RawRequest>> {
    let mut input = BufReader::new(stream);
    let mut line = String::new();
    if input.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("").to_string();
    let mut headers = Vec::new();
    loop {
        line.clear();
        input.read_line(&mut line)?;
        let l = line.trim_end_matches(['\r', '\n']);
        if l.is_empty() {
            break;
        }
        if let Some((n, v)) = l.split_once(':') {
            headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    input.read_exact(&mut body)?;
    Ok(Some((method, path, headers, body)))
}

fn http_session(
    stream: TcpStream,
    script: &Mutex<VecDeque<Reply>>,
    requests: &Mutex<Vec<Request>>,
) -> std::io::Result<()> {
    let mut out = stream.try_clone()?;
    let Some((method, path, headers, body)) = read_request(stream)? else {
        return Ok(());
    };
    requests.lock().unwrap().push(Request {
        method,
        path,
        headers,
        body,
        at: Instant::now(),
    });
    let reply = script
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or_else(|| Reply::new(200, "ok"));
    thread::sleep(reply.delay);
    let mut head = format!(
        "HTTP/1.1 {} Scripted\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n",
        reply.status,
        reply.body.len()
    );
    for (n, v) in &reply.headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str("\r\n");
    out.write_all(head.as_bytes())?;
    out.write_all(reply.body.as_bytes())?;
    out.flush()
}

/// An email taken apart: decoded subject, text and HTML parts, attachments.
#[derive(Debug, Default)]
pub struct ParsedMail {
    /// Top-level headers (names lower-cased, folded lines joined).
    pub headers: Vec<(String, String)>,
    /// The Subject, RFC 2047 words decoded.
    pub subject: String,
    /// The first text/plain part, decoded.
    pub text: Option<String>,
    /// The first text/html part, decoded.
    pub html: Option<String>,
    /// (file name, decoded bytes) of each attachment.
    pub attachments: Vec<(String, Vec<u8>)>,
}

/// Parses a received message (MIME, base64 / quoted-printable / 7bit parts).
pub fn parse_mail(data: &str) -> ParsedMail {
    let (headers, body) = split_headers(data);
    let mut mail = ParsedMail {
        subject: decode_words(&header(&headers, "subject").unwrap_or_default()),
        ..ParsedMail::default()
    };
    walk(&headers, body, &mut mail);
    mail.headers = headers;
    mail
}

fn walk(headers: &[(String, String)], body: &str, mail: &mut ParsedMail) {
    let ctype = header(headers, "content-type").unwrap_or_else(|| "text/plain".into());
    let lower = ctype.to_ascii_lowercase();
    if lower.starts_with("multipart/") {
        let boundary = param(&ctype, "boundary").expect("multipart without boundary");
        let delimiter = format!("--{boundary}");
        for chunk in body.split(&delimiter).skip(1) {
            if chunk.starts_with("--") {
                break;
            }
            let chunk = chunk.strip_prefix("\r\n").unwrap_or(chunk);
            let (h, b) = split_headers(chunk);
            let b = b.strip_suffix("\r\n").unwrap_or(b);
            walk(&h, b, mail);
        }
        return;
    }
    let bytes = match header(headers, "content-transfer-encoding")
        .map(|e| e.to_ascii_lowercase())
        .as_deref()
    {
        Some("base64") => base64_decode(body),
        Some("quoted-printable") => qp_decode(body),
        _ => body.as_bytes().to_vec(),
    };
    let disposition = header(headers, "content-disposition").unwrap_or_default();
    let filename = param(&disposition, "filename").or_else(|| param(&ctype, "name"));
    if disposition.to_ascii_lowercase().starts_with("attachment") || filename.is_some() {
        mail.attachments
            .push((decode_words(&filename.unwrap_or_default()), bytes));
    } else if lower.starts_with("text/plain") && mail.text.is_none() {
        mail.text = Some(String::from_utf8(bytes).expect("text part is not UTF-8"));
    } else if lower.starts_with("text/html") && mail.html.is_none() {
        mail.html = Some(String::from_utf8(bytes).expect("html part is not UTF-8"));
    }
}

/// Headers (unfolded, names lower-cased) and the body after the blank line.
fn split_headers(data: &str) -> (Vec<(String, String)>, &str) {
    let (head, body) = data.split_once("\r\n\r\n").unwrap_or((data, ""));
    let mut headers: Vec<(String, String)> = Vec::new();
    for line in head.split("\r\n") {
        if line.starts_with([' ', '\t']) {
            if let Some(last) = headers.last_mut() {
                last.1.push(' ');
                last.1.push_str(line.trim());
            }
        } else if let Some((n, v)) = line.split_once(':') {
            headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    (headers, body)
}

fn header(headers: &[(String, String)], name: &str) -> Option<String> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.clone())
}

/// A `name=value` parameter of a structured header (quoted or not).
fn param(value: &str, name: &str) -> Option<String> {
    value.split(';').skip(1).find_map(|p| {
        let (n, v) = p.split_once('=')?;
        (n.trim().eq_ignore_ascii_case(name)).then(|| v.trim().trim_matches('"').to_string())
    })
}

/// Decodes RFC 2047 encoded words (`=?utf-8?b?...?=`, `=?utf-8?q?...?=`).
pub fn decode_words(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    let mut last_was_word = false;
    while let Some(start) = rest.find("=?") {
        let before = &rest[..start];
        // Whitespace between two encoded words is not part of the text.
        if !(last_was_word && before.trim().is_empty()) {
            out.push_str(before);
        }
        let word = &rest[start + 2..];
        let parts: Vec<&str> = word.splitn(3, '?').collect();
        let Some(end) = parts.get(2).and_then(|p| p.find("?=")) else {
            out.push_str(&rest[start..]);
            return out;
        };
        let text = &parts[2][..end];
        let bytes = if parts[1].eq_ignore_ascii_case("b") {
            base64_decode(text)
        } else {
            qp_decode(&text.replace('_', " "))
        };
        out.push_str(&String::from_utf8_lossy(&bytes));
        let consumed = 2 + parts[0].len() + 1 + parts[1].len() + 1 + end + 2;
        rest = &rest[start + consumed..];
        last_was_word = true;
    }
    out.push_str(rest);
    out
}

/// Standard base64 (whitespace ignored, padding optional).
pub fn base64_decode(s: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {:?}", c as char),
        }
    };
    let digits: Vec<u8> = s
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
        .collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &c)| acc | (value(c) << (18 - 6 * i)));
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..chunk.len() - 1]);
    }
    out
}

/// Quoted-printable (soft line breaks removed, `=XX` decoded).
pub fn qp_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'=' {
            if b[i + 1..].starts_with(b"\r\n") {
                i += 3;
                continue;
            }
            if b[i + 1..].starts_with(b"\n") {
                i += 2;
                continue;
            }
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap();
            out.push(
                u8::from_str_radix(hex, 16).unwrap_or_else(|_| panic!("bad QP escape ={hex}")),
            );
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}
