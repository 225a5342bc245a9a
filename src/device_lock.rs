//! One model run per device at a time: a manual `monitor check` started while the daemon checks
//! waits for it instead of loading a second model onto the same GPU.
//!
//! The lock is an `flock` (Windows: `LockFileEx`, through `File::try_lock`) on a file beside the
//! history database (the state every process of one installation shares; `/tmp` is private to a
//! systemd service), so it covers every process using that database on this host. The kernel drops
//! it when its holder dies, so a crash never leaves the device locked.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read as _, Seek as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::worker::Cancel;

/// A held device lock; released on drop.
#[derive(Debug)]
pub struct DeviceLock {
    _file: File,
    path: PathBuf,
}

impl DeviceLock {
    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The lock file for `device` (e.g. `cuda0`, `cpu`) of the installation whose database is
/// `database`.
pub fn lock_path(database: &Path, device: &str) -> PathBuf {
    let dir = database.parent().unwrap_or(Path::new("."));
    dir.join(format!(".monitor-device-{device}.lock"))
}

/// Takes the lock on `device`, waiting up to `max_wait` for another process to release it;
/// `on_wait` is called once, with who holds it, when the lock is not free at once. A set
/// `cancel` ends the wait with an error.
pub fn acquire(
    database: &Path,
    device: &str,
    max_wait: Duration,
    cancel: &Cancel,
    on_wait: impl FnOnce(&str),
) -> Result<DeviceLock> {
    let path = lock_path(database, device);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("opening device lock {}", path.display()))?;
    let start = Instant::now();
    let mut on_wait = Some(on_wait);
    loop {
        // flock(LOCK_EX | LOCK_NB) on Unix, LockFileEx(exclusive, fail at once) on Windows.
        match file.try_lock() {
            Ok(()) => break,
            Err(TryLockError::WouldBlock) => {}
            Err(TryLockError::Error(err)) => {
                return Err(err).with_context(|| format!("locking {}", path.display()))
            }
        }
        let holder = holder(&mut file);
        if let Some(f) = on_wait.take() {
            f(&holder);
        }
        if cancel.is_cancelled() {
            bail!("stopped while waiting for device {device} ({holder})");
        }
        if start.elapsed() >= max_wait {
            bail!(
                "device {device} stayed busy for {:.0} s ({holder}; lock {})",
                max_wait.as_secs_f64(),
                path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Who holds it, for the message of the next process that waits.
    let _ = file.set_len(0);
    let _ = file.rewind();
    let _ = write!(file, "pid {}", std::process::id());
    let _ = file.flush();
    Ok(DeviceLock { _file: file, path })
}

/// Windows locks are mandatory: the holder's pid cannot be read while it holds the lock, and the
/// message falls back to the generic one.
fn holder(file: &mut File) -> String {
    let mut s = String::new();
    let _ = file.rewind();
    let _ = file.read_to_string(&mut s);
    match s.trim() {
        "" => "held by another monitor process".to_string(),
        who => format!("held by {who}, a monitor process running a check"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_waits_until_the_first_releases() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("monitor.db");
        let cancel = Cancel::new();
        let first = acquire(&db, "cpu", Duration::from_secs(1), &cancel, |_| {}).unwrap();
        // flock locks belong to open file descriptions: a second open in this process competes
        // exactly like another process would.
        let mut told = String::new();
        let e = acquire(&db, "cpu", Duration::from_millis(300), &cancel, |w| {
            told = w.to_string()
        })
        .unwrap_err();
        // Windows locks are mandatory: a waiter cannot read the holder's pid there.
        assert!(
            told.contains(&format!("pid {}", std::process::id())) || cfg!(windows),
            "{told}"
        );
        assert!(e.to_string().contains("device cpu stayed busy"), "{e}");
        // Another device is independent.
        acquire(&db, "cuda0", Duration::ZERO, &cancel, |_| {}).unwrap();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            drop(first);
        });
        acquire(&db, "cpu", Duration::from_secs(5), &cancel, |_| {}).unwrap();
        t.join().unwrap();
    }

    #[test]
    fn cancel_ends_the_wait() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("monitor.db");
        let _held = acquire(&db, "cpu", Duration::ZERO, &Cancel::new(), |_| {}).unwrap();
        let cancel = Cancel::new();
        cancel.cancel();
        let e = acquire(&db, "cpu", Duration::from_secs(60), &cancel, |_| {}).unwrap_err();
        assert!(e.to_string().contains("stopped while waiting"), "{e}");
    }
}
