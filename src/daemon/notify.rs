//! The sd_notify protocol, without libsystemd: one datagram per message to the socket systemd
//! names in `NOTIFY_SOCKET`, so a `Type=notify` unit learns when the daemon is ready, what it is
//! doing, that it is alive (`WatchdogSec=`), and that it is stopping.
//!
//! Every call returns `io::Result` so the daemon can log a failure and carry on: not being able to
//! talk to systemd must never stop the monitoring itself.

use std::ffi::OsString;
use std::fmt;
use std::io;
#[cfg(unix)]
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::PathBuf;
use std::time::Duration;

/// systemd reads notifications into a PIPE_BUF-sized buffer and drops longer ones whole, so a
/// long message would be lost rather than cut.
const MAX_MESSAGE: usize = 4096;

/// `STATUS=` text is cut here: `systemctl status` shows one line, and the cut keeps the datagram
/// far below `MAX_MESSAGE`.
const MAX_STATUS: usize = 1024;

/// A notify datagram to a stuck manager must not stall the daemon's loop.
#[cfg(unix)]
const SEND_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Path(PathBuf),
    /// The name without the leading `@` (the kernel's leading NUL is added when sending).
    Abstract(Vec<u8>),
    /// A `NOTIFY_SOCKET` this implementation cannot use (e.g. a relative path or `vsock:`);
    /// kept so that each send reports it instead of the notifications vanishing silently.
    Unsupported(OsString),
}

/// A handle on systemd's notification socket (`NOTIFY_SOCKET`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notifier {
    target: Target,
}

impl Notifier {
    /// The notifier for this process's `NOTIFY_SOCKET`; None when it is unset or empty (not
    /// started by systemd as `Type=notify`).
    pub fn from_env() -> Option<Notifier> {
        Notifier::from_env_with(|key| std::env::var_os(key))
    }

    /// `from_env` with the environment read through `get` (tests pass their own).
    pub fn from_env_with(get: impl Fn(&str) -> Option<OsString>) -> Option<Notifier> {
        let value = get("NOTIFY_SOCKET").filter(|v| !v.is_empty())?;
        let bytes = value.as_encoded_bytes();
        let target = match bytes[0] {
            b'/' => Target::Path(PathBuf::from(value)),
            b'@' if bytes.len() > 1 => Target::Abstract(bytes[1..].to_vec()),
            _ => Target::Unsupported(value),
        };
        Some(Notifier { target })
    }

    /// `READY=1`: startup is finished (systemd then considers the unit started).
    pub fn ready(&self) -> io::Result<()> {
        self.send("READY=1")
    }

    /// `STATUS=text`, shown by `systemctl status`; control characters (newlines included) become
    /// spaces, since a newline would start a new protocol assignment, and long text is cut.
    pub fn status(&self, text: &str) -> io::Result<()> {
        self.send(&format!("STATUS={}", status_text(text)))
    }

    /// `WATCHDOG=1`: the keep-alive ping that `WatchdogSec=` expects.
    pub fn watchdog(&self) -> io::Result<()> {
        self.send("WATCHDOG=1")
    }

    /// `STOPPING=1`: shutdown has begun.
    pub fn stopping(&self) -> io::Result<()> {
        self.send("STOPPING=1")
    }

    /// Sends `message` verbatim as one datagram (newline-separated `KEY=value` assignments).
    pub fn send(&self, message: &str) -> io::Result<()> {
        let context = |e: io::Error| io::Error::new(e.kind(), format!("sd_notify to {self}: {e}"));
        if message.is_empty() || message.len() > MAX_MESSAGE {
            return Err(context(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "message is {} bytes; 1 to {MAX_MESSAGE} are accepted",
                    message.len()
                ),
            )));
        }
        send_datagram(&self.target, message).map_err(context)
    }
}

#[cfg(unix)]
fn send_datagram(target: &Target, message: &str) -> io::Result<()> {
    let addr = match target {
        Target::Path(p) => SocketAddr::from_pathname(p)?,
        Target::Abstract(name) => abstract_addr(name)?,
        Target::Unsupported(_) => {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "NOTIFY_SOCKET must be an absolute path or @abstract-name",
            ))
        }
    };
    // A fresh socket per message: notifications are rare (a watchdog ping a minute), and it
    // keeps Notifier a plain value that any task can clone.
    let sock = UnixDatagram::unbound()?;
    sock.set_write_timeout(Some(SEND_TIMEOUT))?;
    let sent = sock.send_to_addr(message.as_bytes(), &addr)?;
    if sent != message.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("sent {sent} of {} bytes", message.len()),
        ));
    }
    Ok(())
}

/// systemd exists only on Linux; the daemon loop that notifies it is Unix-only anyway.
#[cfg(not(unix))]
fn send_datagram(_target: &Target, _message: &str) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "sd_notify needs Unix datagram sockets",
    ))
}

impl fmt::Display for Notifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.target {
            Target::Path(p) => write!(f, "{}", p.display()),
            Target::Abstract(name) => write!(f, "@{}", String::from_utf8_lossy(name)),
            Target::Unsupported(v) => write!(f, "{}", v.to_string_lossy()),
        }
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn abstract_addr(name: &[u8]) -> io::Result<SocketAddr> {
    #[cfg(target_os = "android")]
    use std::os::android::net::SocketAddrExt;
    #[cfg(target_os = "linux")]
    use std::os::linux::net::SocketAddrExt;
    SocketAddr::from_abstract_name(name)
}

#[cfg(all(unix, not(any(target_os = "linux", target_os = "android"))))]
fn abstract_addr(_name: &[u8]) -> io::Result<SocketAddr> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "abstract socket names exist only on Linux",
    ))
}

fn status_text(text: &str) -> String {
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if out.len() > MAX_STATUS {
        let mut cut = MAX_STATUS - '…'.len_utf8();
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push('…');
    }
    out
}

/// How often to send `WATCHDOG=1`: half of `WATCHDOG_USEC`, so one late ping is not fatal; None
/// when the watchdog is off, its value is unusable, or `WATCHDOG_PID` names another process.
pub fn watchdog_interval() -> Option<Duration> {
    watchdog_interval_with(|key| std::env::var_os(key))
}

/// `watchdog_interval` with the environment read through `get` (tests pass their own).
pub fn watchdog_interval_with(get: impl Fn(&str) -> Option<OsString>) -> Option<Duration> {
    // A set WATCHDOG_PID that is not ours means the variables were inherited from a parent that
    // systemd is watching; pinging on its behalf would hide that it hung.
    if let Some(pid) = get("WATCHDOG_PID") {
        let pid: u32 = pid.to_str()?.trim().parse().ok()?;
        if pid != std::process::id() {
            return None;
        }
    }
    let usec: u64 = get("WATCHDOG_USEC")?.to_str()?.trim().parse().ok()?;
    // systemd itself treats 0 and "infinity" (u64::MAX) as "no watchdog".
    if usec == 0 || usec == u64::MAX {
        return None;
    }
    Some(Duration::from_micros(usec / 2).max(Duration::from_micros(1)))
}

// Unix datagram sockets: sd_notify exists only there.
#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let map: HashMap<String, OsString> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        move |key| map.get(key).cloned()
    }

    fn recv(sock: &UnixDatagram) -> String {
        let mut buf = [0u8; 8192];
        let n = sock.recv(&mut buf).expect("no datagram within the timeout");
        String::from_utf8(buf[..n].to_vec()).expect("datagram is not UTF-8")
    }

    fn listener() -> (tempfile::TempDir, PathBuf, UnixDatagram) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).expect("bind notify socket");
        sock.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("read timeout");
        (dir, path, sock)
    }

    #[test]
    fn messages_arrive_verbatim_on_a_path_socket() {
        let (_dir, path, sock) = listener();
        let n = Notifier::from_env_with(env(&[("NOTIFY_SOCKET", path.to_str().unwrap())]))
            .expect("NOTIFY_SOCKET is set");
        n.ready().unwrap();
        assert_eq!(recv(&sock), "READY=1");
        n.status("checking 3 cases").unwrap();
        assert_eq!(recv(&sock), "STATUS=checking 3 cases");
        n.watchdog().unwrap();
        assert_eq!(recv(&sock), "WATCHDOG=1");
        n.stopping().unwrap();
        assert_eq!(recv(&sock), "STOPPING=1");
        n.send("RELOADING=1\nSTATUS=reloading").unwrap();
        assert_eq!(recv(&sock), "RELOADING=1\nSTATUS=reloading");
        assert_eq!(n.to_string(), path.display().to_string());
    }

    #[test]
    fn status_newlines_cannot_inject_assignments() {
        let (_dir, path, sock) = listener();
        let n = Notifier::from_env_with(env(&[("NOTIFY_SOCKET", path.to_str().unwrap())])).unwrap();
        n.status("drift in case a\nREADY=1\r\nend\0x").unwrap();
        let got = recv(&sock);
        assert_eq!(got, "STATUS=drift in case a READY=1  end x");
        assert_eq!(got.lines().count(), 1);
    }

    #[test]
    fn long_status_is_cut_to_one_datagram_systemd_accepts() {
        let (_dir, path, sock) = listener();
        let n = Notifier::from_env_with(env(&[("NOTIFY_SOCKET", path.to_str().unwrap())])).unwrap();
        n.status(&"é".repeat(5000)).unwrap();
        let got = recv(&sock);
        assert!(got.starts_with("STATUS=éé"), "{got:.40}");
        assert!(got.ends_with('…'));
        assert!(got.len() <= "STATUS=".len() + MAX_STATUS, "{}", got.len());
        assert!(n.send(&"x".repeat(MAX_MESSAGE + 1)).is_err());
    }

    #[test]
    fn abstract_socket_works() {
        let name = format!(
            "monitor-notify-test-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
        );
        let sock = UnixDatagram::bind_addr(&abstract_addr(name.as_bytes()).unwrap())
            .expect("bind abstract socket");
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let n = Notifier::from_env_with(env(&[("NOTIFY_SOCKET", &format!("@{name}"))])).unwrap();
        n.ready().unwrap();
        assert_eq!(recv(&sock), "READY=1");
        n.watchdog().unwrap();
        assert_eq!(recv(&sock), "WATCHDOG=1");
        assert_eq!(n.to_string(), format!("@{name}"));
    }

    #[test]
    fn unset_or_empty_socket_means_no_notifier() {
        assert_eq!(Notifier::from_env_with(env(&[])), None);
        assert_eq!(Notifier::from_env_with(env(&[("NOTIFY_SOCKET", "")])), None);
    }

    #[test]
    fn unusable_socket_values_fail_each_send_with_context() {
        for value in ["relative/notify", "vsock:2:1234", "@"] {
            let n = Notifier::from_env_with(env(&[("NOTIFY_SOCKET", value)])).unwrap();
            let e = n.ready().unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::Unsupported, "{value}: {e}");
            assert!(e.to_string().contains(value), "{e}");
        }
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nobody-listens.sock");
        let n =
            Notifier::from_env_with(env(&[("NOTIFY_SOCKET", missing.to_str().unwrap())])).unwrap();
        let e = n.watchdog().unwrap_err();
        assert!(e.to_string().contains("nobody-listens.sock"), "{e}");
    }

    #[test]
    fn watchdog_interval_is_half_of_watchdog_usec() {
        let me = std::process::id().to_string();
        let other = std::process::id().wrapping_add(1).to_string();
        let half = |pairs: &[(&str, &str)]| watchdog_interval_with(env(pairs));
        assert_eq!(
            half(&[("WATCHDOG_USEC", "120000000")]),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            half(&[("WATCHDOG_USEC", "120000000"), ("WATCHDOG_PID", &me)]),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            half(&[("WATCHDOG_USEC", "3"), ("WATCHDOG_PID", &me)]),
            Some(Duration::from_micros(1))
        );
        assert_eq!(
            half(&[("WATCHDOG_USEC", "120000000"), ("WATCHDOG_PID", &other)]),
            None
        );
        assert_eq!(half(&[]), None);
        assert_eq!(half(&[("WATCHDOG_PID", &me)]), None);
        for bad in [
            "",
            "0",
            "-5",
            "12s",
            "1.5",
            "18446744073709551615",
            "99999999999999999999",
        ] {
            assert_eq!(
                half(&[("WATCHDOG_USEC", bad)]),
                None,
                "WATCHDOG_USEC={bad:?}"
            );
        }
        for bad_pid in ["", "abc", "0", "-1"] {
            assert_eq!(
                half(&[("WATCHDOG_USEC", "1000000"), ("WATCHDOG_PID", bad_pid)]),
                None,
                "WATCHDOG_PID={bad_pid:?}"
            );
        }
    }
}
