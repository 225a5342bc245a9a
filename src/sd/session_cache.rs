//! ONNX Runtime's optimized-model cache. Graph optimisation at session creation dominates a
//! cold start on a real export (12.2 s of the UNet's session creation on a CPU, against 1.85 s to
//! load the saved optimized model with optimisation off). The first session of a model writes
//! ONNX Runtime's optimized graph (`optimized_model_filepath`, weights in an external file) into
//! a new entry; later sessions load that entry instead.
//!
//! An entry is found by a cheap key: the ONNX Runtime version, every session setting, the host
//! (CPU and its vector units, GPU and driver) and the size and modification time of every file in
//! the network's folder. The model files' sha256, which the caller computes beside session
//! creation anyway, is what decides: a new entry is committed (renamed into place, with the
//! hashes in its `key.json`) only once the hashes are known, and an entry whose recorded hashes
//! are not the files' is removed and its session rebuilt from the model ([`SessionCache::settle`]).
//! So a file replaced with the same size and time is caught, and no session ever runs weights
//! other than the ones whose hashes the result records.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::model::sha256_hex;

/// Bumped when an entry's layout changes: older entries are then simply not found.
const FORMAT: u32 = 1;
/// Entries kept per network folder: the one in use and the one before it (an ONNX Runtime
/// upgrade and its rollback both start warm). Older ones are removed when a new one is written:
/// a full-size UNet's entry is 3.4 GB.
const KEEP_PER_NETWORK: usize = 2;
const KEY_FILE: &str = "key.json";
/// The optimized graph in an entry.
pub const MODEL_FILE: &str = "model.onnx";
/// Its weights, beside it.
pub const WEIGHTS_FILE: &str = "weights.bin";
const TMP_PREFIX: &str = ".tmp-";

/// One source file of a network, as found when the session was made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Source {
    file: String,
    size: u64,
    mtime_ns: u128,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sha256: Option<String>,
}

/// `key.json` of an entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Key {
    format: u32,
    onnxruntime: String,
    settings: serde_json::Value,
    host: String,
    network: String,
    /// The network's folder (canonical), for keeping only the newest entries of each.
    #[serde(default)]
    model_dir: PathBuf,
    sources: Vec<Source>,
}

/// A session asked of the cache.
#[derive(Debug)]
pub enum Lookup {
    /// Load this optimized model, with graph optimisation off.
    Hit(PathBuf),
    /// Create the session from the model, writing its optimized graph to this file.
    Miss(PathBuf),
}

#[derive(Debug)]
struct Pending {
    /// The network's folder in the model (`…/unet`).
    network_dir: PathBuf,
    entry: PathBuf,
    /// A miss: the temp folder the optimized graph went into.
    tmp: Option<PathBuf>,
    key: Key,
}

/// What [`SessionCache::settle`] did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Settled {
    /// Sessions loaded from an entry whose hashes were confirmed.
    pub hits: usize,
    /// New entries committed.
    pub written: usize,
    /// Network folders whose entry did not match the files' hashes (removed): their sessions
    /// must be rebuilt from the model.
    pub stale: Vec<PathBuf>,
    /// Entries that could not be written or removed (the cache is an optimisation: the
    /// sessions stand).
    pub warnings: Vec<String>,
}

/// A cache folder, and what makes this host's optimized graphs its own.
#[derive(Debug)]
pub struct SessionCache {
    dir: PathBuf,
    host: String,
    pending: Mutex<Vec<Pending>>,
}

fn mtime_ns(meta: &std::fs::Metadata) -> u128 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos())
}

impl SessionCache {
    /// A cache in `dir` (created when first written), keyed additionally by `host`.
    pub fn new(dir: impl Into<PathBuf>, host: impl Into<String>) -> Self {
        SessionCache {
            dir: dir.into(),
            host: host.into(),
            pending: Mutex::new(Vec::new()),
        }
    }

    /// The cache folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Finds the entry for `model_file` under these ONNX Runtime version and settings, or
    /// prepares a new one. Errors (an unreadable model folder) mean: do not use the cache.
    pub fn lookup(
        &self,
        model_file: &Path,
        onnxruntime: &str,
        settings: &serde_json::Value,
    ) -> std::io::Result<Lookup> {
        let network_dir = model_file.parent().unwrap_or(Path::new(".")).to_path_buf();
        let mut sources = Vec::new();
        for e in std::fs::read_dir(&network_dir)? {
            let e = e?;
            let meta = e.metadata()?;
            if meta.is_file() {
                sources.push(Source {
                    file: e.file_name().to_string_lossy().into_owned(),
                    size: meta.len(),
                    mtime_ns: mtime_ns(&meta),
                    sha256: None,
                });
            }
        }
        sources.sort_by(|a, b| a.file.cmp(&b.file));
        let network = network_dir
            .file_name()
            .map_or("model".into(), |n| n.to_string_lossy().into_owned());
        let key = Key {
            format: FORMAT,
            onnxruntime: onnxruntime.to_string(),
            settings: settings.clone(),
            host: self.host.clone(),
            network: network.clone(),
            model_dir: std::fs::canonicalize(&network_dir).unwrap_or(network_dir.clone()),
            sources,
        };
        let canonical =
            serde_json::to_vec(&(&key, model_file.file_name().map(|n| n.to_string_lossy())))
                .map_err(std::io::Error::other)?;
        let id = &sha256_hex(&canonical)[..24];
        let entry = self.dir.join(format!("{network}-{id}"));
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if entry.join(KEY_FILE).is_file() && entry.join(MODEL_FILE).is_file() {
            // Recently used entries are the ones kept (see KEEP_PER_NETWORK).
            if let Ok(f) = std::fs::File::options()
                .append(true)
                .open(entry.join(KEY_FILE))
            {
                let _ = f.set_modified(std::time::SystemTime::now());
            }
            pending.push(Pending {
                network_dir,
                entry: entry.clone(),
                tmp: None,
                key,
            });
            return Ok(Lookup::Hit(entry.join(MODEL_FILE)));
        }
        std::fs::create_dir_all(&self.dir)?;
        self.sweep_dead_temps();
        let tmp = self
            .dir
            .join(format!("{TMP_PREFIX}{network}-{id}-{}", std::process::id()));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)?;
        }
        std::fs::create_dir(&tmp)?;
        pending.push(Pending {
            network_dir,
            entry,
            tmp: Some(tmp.clone()),
            key,
        });
        Ok(Lookup::Miss(tmp.join(MODEL_FILE)))
    }

    /// Drops what a failed lookup left: an entry that would not load (removed, so the next
    /// session rebuilds it), or a miss whose session failed (its temp folder).
    pub fn forget(&self, model_file: &Path) {
        let dir = model_file.parent().unwrap_or(Path::new("."));
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.retain(|p| {
            let this = p.network_dir == dir || p.tmp.as_deref() == Some(dir) || p.entry == dir;
            if this {
                let _ = std::fs::remove_dir_all(p.tmp.as_deref().unwrap_or(&p.entry));
            }
            !this
        });
    }

    /// Once the model files' sha256 are known (`sha256_of` a source file's path): confirms each
    /// entry used, and commits each new one with the hashes in its key. Entries made for other
    /// bytes are removed and reported as stale.
    pub fn settle(&self, sha256_of: &dyn Fn(&Path) -> Option<String>) -> Settled {
        let mut out = Settled::default();
        let pending = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        for mut p in pending {
            let hashes: BTreeMap<String, Option<String>> = p
                .key
                .sources
                .iter()
                .map(|s| (s.file.clone(), sha256_of(&p.network_dir.join(&s.file))))
                .collect();
            match p.tmp.take() {
                Some(tmp) => {
                    for s in &mut p.key.sources {
                        s.sha256 = hashes.get(&s.file).cloned().flatten();
                    }
                    match commit(&tmp, &p.entry, &p.key) {
                        Ok(()) => {
                            out.written += 1;
                            self.evict_older(&p.entry, &p.key);
                        }
                        Err(e) => {
                            let _ = std::fs::remove_dir_all(&tmp);
                            out.warnings
                                .push(format!("session cache: writing {}: {e}", p.entry.display()));
                        }
                    }
                }
                None => {
                    let recorded: Option<Key> = std::fs::read(p.entry.join(KEY_FILE))
                        .ok()
                        .and_then(|b| serde_json::from_slice(&b).ok());
                    let same = recorded.is_some_and(|k| {
                        k.sources.len() == hashes.len()
                            && k.sources.iter().all(|s| {
                                s.sha256.is_some()
                                    && hashes.get(&s.file).cloned().flatten() == s.sha256
                            })
                    });
                    if same {
                        out.hits += 1;
                    } else {
                        if let Err(e) = std::fs::remove_dir_all(&p.entry) {
                            out.warnings.push(format!(
                                "session cache: removing stale {}: {e}",
                                p.entry.display()
                            ));
                        }
                        out.stale.push(p.network_dir);
                    }
                }
            }
        }
        out
    }
}

impl SessionCache {
    /// Removes the entries of the same network folder beyond the newest [`KEEP_PER_NETWORK`]
    /// (by last use), after `kept` was written.
    fn evict_older(&self, kept: &Path, key: &Key) {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut same: Vec<(std::time::SystemTime, PathBuf)> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p != kept && !is_temp(p))
            .filter_map(|p| {
                let k: Key = serde_json::from_slice(&std::fs::read(p.join(KEY_FILE)).ok()?).ok()?;
                if k.network != key.network || k.model_dir != key.model_dir {
                    return None;
                }
                let used = std::fs::metadata(p.join(KEY_FILE)).ok()?.modified().ok()?;
                Some((used, p))
            })
            .collect();
        same.sort_by(|a, b| b.0.cmp(&a.0));
        for (_, p) in same.into_iter().skip(KEEP_PER_NETWORK - 1) {
            if let Err(e) = std::fs::remove_dir_all(&p) {
                eprintln!(
                    "monitor: warning: session cache: removing old {}: {e}",
                    p.display()
                );
            }
        }
    }

    /// Removes temp folders whose writer is gone (killed while ONNX Runtime wrote its graph).
    fn sweep_dead_temps(&self) {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for p in rd.flatten().map(|e| e.path()).filter(|p| is_temp(p)) {
            let pid = p
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.rsplit('-').next())
                .and_then(|n| n.parse::<u32>().ok());
            if pid.is_some_and(|pid| pid != std::process::id() && !alive(pid)) {
                let _ = std::fs::remove_dir_all(&p);
            }
        }
    }
}

fn is_temp(p: &Path) -> bool {
    p.file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with(TMP_PREFIX))
}

/// Whether a process `pid` exists (on systems without /proc: assumed, so nothing is removed).
fn alive(pid: u32) -> bool {
    let proc = Path::new("/proc");
    !proc.is_dir() || proc.join(pid.to_string()).exists()
}

/// Writes `key.json` into the temp folder and renames it into place (replacing an entry of the
/// same name, which a concurrent writer may have committed).
fn commit(tmp: &Path, entry: &Path, key: &Key) -> std::io::Result<()> {
    if !tmp.join(MODEL_FILE).is_file() {
        return Err(std::io::Error::other(
            "ONNX Runtime wrote no optimized model",
        ));
    }
    let json = serde_json::to_vec_pretty(key).map_err(std::io::Error::other)?;
    // The folder becomes visible whole, by the rename below: its files need no renames.
    std::fs::write(tmp.join(KEY_FILE), json)?;
    for f in [MODEL_FILE, WEIGHTS_FILE, KEY_FILE] {
        if let Ok(file) = std::fs::File::open(tmp.join(f)) {
            file.sync_all()?;
        }
    }
    if entry.exists() {
        std::fs::remove_dir_all(entry)?;
    }
    std::fs::rename(tmp, entry)
}
