//! Crash-safe file writes: a reader sees the old file or the new one, never half of either.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` via a temp file in the same folder, fsync, rename, then fsyncs the folder.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp: PathBuf = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // The rename is only durable once the directory entry is on disk.
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Creates the folder `target` all or nothing: `fill` writes into a fresh temp folder beside it
/// (`.tmp-NAME-PID`, a stale one from a dead run of this pid removed first), which is renamed
/// into place when `fill` succeeds and removed when anything fails.
pub fn write_dir(
    target: &Path,
    fill: impl FnOnce(&Path) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let parent = target
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = target
        .file_name()
        .with_context(|| format!("{} is not a folder name", target.display()))?
        .to_string_lossy()
        .into_owned();
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let tmp = parent.join(format!(".tmp-{name}-{}", std::process::id()));
    let result = (|| {
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).with_context(|| format!("removing {}", tmp.display()))?;
        }
        std::fs::create_dir(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        fill(&tmp)?;
        std::fs::rename(&tmp, target)
            .with_context(|| format!("renaming {} to {}", tmp.display(), target.display()))
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

/// Flushes a folder's entries (a rename or a new file in it) to disk. A no-op on Windows, where a
/// folder cannot be opened as a file and NTFS journals its metadata itself.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    return std::fs::File::open(dir)?.sync_all();
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_and_leaves_no_temp() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.json");
        atomic_write(&p, b"one").unwrap();
        atomic_write(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn failure_keeps_old_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sub");
        std::fs::create_dir(&p).unwrap();
        // Renaming a file over a directory fails; nothing else may change.
        assert!(atomic_write(&p, b"x").is_err());
        assert!(p.is_dir());
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }
}
