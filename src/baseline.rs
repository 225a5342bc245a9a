//! The baseline store: versioned, crash-safe folders of `latents.npy`, `image.png` and
//! `metadata.json`, one series of versions per test case.
//!
//! Layout (`root` is the config's `storage.baselines`, `baselines/` by default):
//!
//! ```text
//! <root>/<case>/.lock                 exclusive lock taken by every writer (never removed)
//! <root>/<case>/v0001/latents.npy     float32 [1, 4, h, w]
//! <root>/<case>/v0001/image.png       RGB8, (8w) x (8h)
//! <root>/<case>/v0001/metadata.json   the run's metadata plus a "baseline" block
//! <root>/<case>/v0002/...             the next version; older ones are never changed or deleted
//! <root>/<case>/.tmp-v0003-<pid>/     a write in progress (or left by a crash): readers ignore it
//! ```
//!
//! Each version folder is a generation folder (see [`crate::generation`], which owns the file
//! names, the metadata format and the verifying reader).
//!
//! The current baseline of a case is its highest version. A version folder only ever appears
//! by `rename` of a complete, fsynced temp folder, so every `vNNNN` folder is complete; readers
//! still validate every file and report a damaged one as an error naming the file (never by
//! silently falling back to an older version, which would hide the damage).
//!
//! Writing (see [`BaselineStore::write_batch`]; [`BaselineStore::write`] is a batch of one):
//! 1. take the store's lock (`<root>/.lock`, `flock`, released by the kernel if the process
//!    dies), then finish any batch a dead writer left half-committed (step 5);
//! 2. per case, in name order: take the case's lock, remove every `.tmp-*` entry (writers create
//!    temp folders only while holding the lock, so any temp folder seen by the lock holder belongs
//!    to a writer that died), pick `max(version) + 1` (refusing to wrap at `u32::MAX`), write the
//!    three files into `.tmp-vNNNN-<pid>/`, fsync each file and the folder;
//! 3. a batch of several cases writes `<root>/.journal.json` (atomically) listing every temp
//!    folder and its final name: from this moment the batch is committed;
//! 4. `rename` each temp folder to `vNNNN`, fsync each case folder, remove the journal;
//! 5. recovery: a journal found under the store lock means its writer died after step 3, when
//!    every temp folder was complete and synced, so the remaining renames are done (roll forward).
//!
//! So a batch is all-or-nothing: killed before step 3, only temp folders are left (ignored by
//! readers, removed by the next writer); killed after it, the next writer or check completes
//! it. Any error before step 3 removes the temp folders; a rename that fails in step 4 is undone.
//! Readers that need every case's current version from the same moment ([`BaselineStore::read_lock`])
//! hold the store lock shared.
//!
//! Every version records the sha256 of its latents.npy bytes and of its image's RGB pixels in the
//! `baseline` block of metadata.json (versions written before that carry the same hashes in the
//! `outputs` block), and [`BaselineStore::load`] verifies them: a file changed on disk is
//! reported as damaged, never compared as if it were genuine.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::generation::{
    self, latent_hw, BaselineRecord, GenerationError, GenerationFiles, Latents, Metadata,
};
use crate::sd::image::RgbImage;
use crate::sd::model::sha256_hex;
use crate::stage_data::{StoredStages, STAGES_FILE};

/// File names inside a version folder: a generation folder's.
pub use crate::generation::{IMAGE_FILE, LATENTS_FILE, METADATA_FILE};
/// Name of the per-case lock file.
pub const LOCK_FILE: &str = ".lock";
/// Prefix of temp folders (writes in progress or left by a crash).
pub const TMP_PREFIX: &str = ".tmp-";

/// Errors of the store; every message is one line and names the file or folder concerned.
#[derive(Debug, thiserror::Error)]
pub enum BaselineError {
    /// A case name that cannot be a folder name here.
    #[error("case name {name:?} is invalid: {reason}")]
    InvalidCase {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The requested version does not exist.
    #[error("{path}: baseline {case} v{version:04} does not exist")]
    NoSuchVersion {
        /// Case name.
        case: String,
        /// Version asked for.
        version: u32,
        /// The folder that would hold it.
        path: PathBuf,
    },
    /// The case has no baseline at all.
    #[error("{path}: case {case} has no baselines")]
    NoSuchCase {
        /// Case name.
        case: String,
        /// The case folder.
        path: PathBuf,
    },
    /// A file of a version is missing (outside reading a version: see `Generation`).
    #[error("{path}: missing (incomplete or damaged)")]
    Missing {
        /// The file.
        path: PathBuf,
    },
    /// A file or folder could not be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The file or folder.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// A version's files are missing, unreadable, invalid or damaged (the error names the file).
    #[error(transparent)]
    Generation(#[from] GenerationError),
    /// The data handed to `write` is not a valid baseline (nothing was written).
    #[error("baseline {case}: {reason} (nothing written)")]
    Invalid {
        /// Case name.
        case: String,
        /// What is wrong.
        reason: String,
    },
    /// A file could not be encoded (nothing was written).
    #[error("baseline {case}: cannot encode {file}: {reason} (nothing written)")]
    Encode {
        /// Case name.
        case: String,
        /// File being encoded.
        file: &'static str,
        /// Encoder's message.
        reason: String,
    },
    /// A stored file does not match what was recorded when it was written (or nothing was
    /// recorded): the baseline cannot be trusted, so it is never compared.
    #[error("{path}: baseline damaged: {reason}")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What does not match.
        reason: String,
    },
    /// A version entry that is not a folder: a dangling symlink or a file. Readers never fall
    /// back to an older version past it.
    #[error("{path}: baseline {case} v{version:04} is {what}, not a folder; move it aside")]
    NotAFolder {
        /// Case name.
        case: String,
        /// The version its name claims.
        version: u32,
        /// The entry.
        path: PathBuf,
        /// "a dangling symlink", "a file", ...
        what: &'static str,
    },
    /// The case's newest version is `u32::MAX`: there is no next number.
    #[error("{path}: case {case} already has version v{version}, the highest possible; move old versions aside (nothing written)")]
    VersionOverflow {
        /// Case name.
        case: String,
        /// Its newest version.
        version: u32,
        /// The case folder.
        path: PathBuf,
    },
    /// A committed batch could not be moved fully into place; its journal stays, and the next
    /// writer or check finishes it.
    #[error("{path}: {reason}; the batch is committed and the next monitor command that writes or checks baselines completes it (in place now: {in_place})")]
    Incomplete {
        /// The journal file.
        path: PathBuf,
        /// What failed.
        reason: String,
        /// `case vNNNN` entries already in place.
        in_place: String,
    },
    /// Writing failed; earlier versions are untouched and the temp folder was removed.
    #[error(
        "{path}: {action} failed: {source} (no new baseline written; earlier versions untouched)"
    )]
    Write {
        /// File or folder being written.
        path: PathBuf,
        /// What was being done.
        action: &'static str,
        /// Underlying error.
        source: std::io::Error,
    },
}

type Result<T> = std::result::Result<T, BaselineError>;

/// One stored, validated baseline version.
#[derive(Debug, Clone)]
pub struct Baseline {
    /// Version number (1-based).
    pub version: u32,
    /// Its folder.
    pub dir: PathBuf,
    /// Final latents (`None`: an image-only version, a generation service's answer).
    pub latents: Option<Latents>,
    /// The image (`(8w) x (8h)` of the latents, when there are some).
    pub image: RgbImage,
    /// The whole `metadata.json`, `baseline` block included.
    pub metadata: Metadata,
    /// Its stage tensors (`stages.npy`), verified; absent in versions made before them.
    pub stages: Option<StoredStages>,
}

/// A new baseline to write.
#[derive(Debug, Clone)]
pub struct NewBaseline<'a> {
    /// Final latents (`None`: image-only, for a generation service's answer, whose metadata
    /// must then have a `service` block).
    pub latents: Option<&'a Latents>,
    /// Image, `(8w) x (8h)` of the latents when there are some.
    pub image: &'a RgbImage,
    /// The run's metadata; a `baseline` block is added (replacing any present).
    pub metadata: Metadata,
    /// The run's stage tensors, kept as `stages.npy` when present.
    pub stages: Option<&'a StoredStages>,
    /// Who made it (user name, or "monitor check" etc.).
    pub who: String,
    /// Why.
    pub why: String,
    /// The version this one restores, if it is a restore.
    pub restored_from: Option<u32>,
}

/// One line of a case's history, from each version's `metadata.json` `baseline` block
/// (fields absent there read as empty strings / `None`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct VersionInfo {
    /// Version number.
    pub version: u32,
    /// RFC 3339 UTC.
    pub created_at: String,
    /// Who wrote it.
    pub who: String,
    /// Why.
    pub why: String,
    /// The version it restores, if a restore.
    pub restored_from: Option<u32>,
}

/// A baseline store rooted at a folder (created on first write).
#[derive(Debug, Clone, Default)]
pub struct BaselineStore {
    root: PathBuf,
    hooks: Hooks,
}

/// Failures injected by tests, standing in for a full disk or a failing rename.
#[derive(Debug, Clone, Default)]
struct Hooks {
    /// Every write of this file fails half-way with "no space left on device".
    fail_write_of: Option<&'static str>,
    /// Every file write of this case fails so.
    fail_case: Option<String>,
    /// Moving this case's new version into place fails.
    fail_rename_of: Option<String>,
    /// Writing a batch's journal fails with "no space left on device".
    fail_journal: bool,
}

/// Checks that `name` is usable as a case (folder) name: non-empty, `[A-Za-z0-9._-]` only,
/// not starting with '.'.
pub fn validate_case(name: &str) -> Result<()> {
    let bad = |reason| {
        Err(BaselineError::InvalidCase {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name.starts_with('.') {
        return bad("must not start with '.'");
    }
    if name.len() > 200 {
        return bad("longer than 200 bytes");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return bad("only letters, digits, '.', '_' and '-' are allowed");
    }
    Ok(())
}

/// The folder name of a version: `v0001`.
pub fn version_dir_name(version: u32) -> String {
    format!("v{version:04}")
}

/// Parses a canonical version folder name (`v0001`, `v12345`); anything else is `None`.
pub fn parse_version_dir_name(name: &str) -> Option<u32> {
    let digits = name.strip_prefix('v')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let v: u32 = digits.parse().ok()?;
    (v >= 1 && version_dir_name(v) == name).then_some(v)
}

/// Reading a file outside [`generation::read`] (restore re-reads the verified files' bytes).
fn read_err(path: &Path) -> impl FnOnce(std::io::Error) -> BaselineError + '_ {
    move |source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            BaselineError::Missing {
                path: path.to_path_buf(),
            }
        } else {
            BaselineError::Read {
                path: path.to_path_buf(),
                source,
            }
        }
    }
}

fn write_err(path: &Path, action: &'static str) -> impl FnOnce(std::io::Error) -> BaselineError {
    let path = path.to_path_buf();
    move |source| BaselineError::Write {
        path,
        action,
        source,
    }
}

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    crate::fsutil::sync_dir(dir)
}

/// What an entry named like a version is, when it is not a folder.
fn not_a_folder(path: &Path) -> Option<&'static str> {
    let meta = fs::symlink_metadata(path).ok()?;
    if path.is_dir() {
        return None;
    }
    Some(if meta.file_type().is_symlink() {
        "a dangling symlink (or a link to something that is not a folder)"
    } else if meta.is_file() {
        "a file"
    } else {
        "neither a folder nor a file"
    })
}

/// A version's files encoded and ready to be written.
struct Encoded {
    case: String,
    /// latents.npy (`None`: an image-only version).
    npy: Option<Vec<u8>>,
    png: Vec<u8>,
    stages: Option<Vec<u8>>,
    image_rgb_sha256: String,
    metadata: Metadata,
    who: String,
    why: String,
    restored_from: Option<u32>,
}

/// A version written into its temp folder, waiting to be renamed into place.
struct Staged {
    case: String,
    case_dir: PathBuf,
    tmp: PathBuf,
    final_dir: PathBuf,
    version: u32,
    /// The case's lock, held until the batch is done.
    _lock: File,
}

/// `<root>/.journal.json`: the renames of a committed batch.
#[derive(serde::Serialize, serde::Deserialize)]
struct Journal {
    entries: Vec<JournalEntry>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct JournalEntry {
    case: String,
    /// The temp folder's name inside the case folder.
    tmp: String,
    version: u32,
}

/// Name of the store-wide lock file in the root.
pub const STORE_LOCK_FILE: &str = ".lock";
/// Name of the journal of a batch being committed, in the root.
pub const JOURNAL_FILE: &str = ".journal.json";

/// A shared hold on the store lock (see [`BaselineStore::read_lock`]).
#[derive(Debug)]
pub struct ReadLock {
    _file: Option<File>,
}

impl Baseline {
    /// What a comparison reads of this version.
    pub fn outputs(&self) -> crate::compare::Outputs<'_> {
        crate::compare::Outputs::of(
            self.latents.as_ref(),
            &self.image,
            &self.metadata,
            self.stages.as_ref(),
        )
    }
}

impl BaselineStore {
    /// A store at `root` (nothing is touched until a write).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            hooks: Hooks::default(),
        }
    }

    /// The store's root folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Test hook: every later write fails half-way through `file` (one of the three file
    /// names) with "no space left on device", as a full disk would.
    #[doc(hidden)]
    pub fn fail_write_of(mut self, file: &'static str) -> Self {
        self.hooks.fail_write_of = Some(file);
        self
    }

    /// Test hook: every file write of `case` fails half-way with "no space left on device".
    #[doc(hidden)]
    pub fn fail_case(mut self, case: &str) -> Self {
        self.hooks.fail_case = Some(case.to_string());
        self
    }

    /// Test hook: renaming `case`'s new version into place fails.
    #[doc(hidden)]
    pub fn fail_rename_of(mut self, case: &str) -> Self {
        self.hooks.fail_rename_of = Some(case.to_string());
        self
    }

    /// Test hook: writing a batch's journal fails with "no space left on device".
    #[doc(hidden)]
    pub fn fail_journal(mut self) -> Self {
        self.hooks.fail_journal = true;
        self
    }

    /// A case's folder (the name is validated).
    pub fn case_dir(&self, case: &str) -> Result<PathBuf> {
        validate_case(case)?;
        Ok(self.root.join(case))
    }

    /// Cases with at least one version, sorted. A missing root is an empty store.
    pub fn cases(&self) -> Result<Vec<String>> {
        let entries = match fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(BaselineError::Read {
                    path: self.root.clone(),
                    source,
                })
            }
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| BaselineError::Read {
                path: self.root.clone(),
                source,
            })?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if validate_case(&name).is_err() || !entry.path().is_dir() {
                continue;
            }
            if !self.version_numbers(&name)?.is_empty() {
                out.push(name);
            }
        }
        out.sort();
        Ok(out)
    }

    /// The case's version numbers, ascending (only canonical `vNNNN` names count; temp folders
    /// and anything else are ignored). A missing case has none. An entry with a version's name
    /// that is not a folder (a dangling symlink, a file) is an error: skipping it would make an
    /// older version current without anyone deciding so.
    pub fn version_numbers(&self, case: &str) -> Result<Vec<u32>> {
        let dir = self.case_dir(case)?;
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(BaselineError::Read { path: dir, source }),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| BaselineError::Read {
                path: dir.clone(),
                source,
            })?;
            let Some(v) = entry.file_name().to_str().and_then(parse_version_dir_name) else {
                continue;
            };
            let path = entry.path();
            if let Some(what) = not_a_folder(&path) {
                return Err(BaselineError::NotAFolder {
                    case: case.to_string(),
                    version: v,
                    path,
                    what,
                });
            }
            out.push(v);
        }
        out.sort_unstable();
        Ok(out)
    }

    /// The highest version number, if any.
    pub fn latest_version(&self, case: &str) -> Result<Option<u32>> {
        Ok(self.version_numbers(case)?.last().copied())
    }

    /// The current (highest) version, loaded and verified; `None` if the case has none.
    /// A damaged current version is an error, not a reason to fall back to an older one.
    pub fn current(&self, case: &str) -> Result<Option<Baseline>> {
        match self.latest_version(case)? {
            Some(v) => self.load(case, v).map(Some),
            None => Ok(None),
        }
    }

    /// The folder of a version (whether or not it exists).
    pub fn version_dir(&self, case: &str, version: u32) -> Result<PathBuf> {
        Ok(self.case_dir(case)?.join(version_dir_name(version)))
    }

    /// Loads and verifies one version (see [`generation::read`]).
    pub fn load(&self, case: &str, version: u32) -> Result<Baseline> {
        let dir = self.version_dir(case, version)?;
        if let Some(what) = not_a_folder(&dir) {
            return Err(BaselineError::NotAFolder {
                case: case.to_string(),
                version,
                path: dir,
                what,
            });
        }
        if !dir.is_dir() {
            return Err(BaselineError::NoSuchVersion {
                case: case.to_string(),
                version,
                path: dir,
            });
        }
        let GenerationFiles {
            latents,
            image,
            metadata,
            stages,
        } = generation::read(&dir)?;
        Ok(Baseline {
            version,
            dir,
            latents,
            image,
            metadata,
            stages,
        })
    }

    /// The case's history, oldest first, from each version's metadata.json (which must parse;
    /// the other files are not read).
    pub fn versions(&self, case: &str) -> Result<Vec<VersionInfo>> {
        let mut out = Vec::new();
        for v in self.version_numbers(case)? {
            let meta = generation::read_metadata(&self.version_dir(case, v)?.join(METADATA_FILE))?;
            let b = meta.baseline.unwrap_or_default();
            out.push(VersionInfo {
                version: v,
                created_at: b.created_at.unwrap_or_default(),
                who: b.who.unwrap_or_default(),
                why: b.why.unwrap_or_default(),
                restored_from: b.restored_from,
            });
        }
        Ok(out)
    }

    /// Writes a new version and returns its number; earlier versions are never touched.
    pub fn write(&self, case: &str, new: &NewBaseline<'_>) -> Result<u32> {
        let written = self.write_batch(&[(case, new.clone())])?;
        Ok(written[0].1)
    }

    /// Writes one new version of each case, all or nothing: either every case gets its new
    /// current version or none does (see the module docs). Returns `(case, version)` in the
    /// order given.
    pub fn write_batch(&self, batch: &[(&str, NewBaseline<'_>)]) -> Result<Vec<(String, u32)>> {
        let encoded = batch
            .iter()
            .map(|(case, new)| encode(case, new))
            .collect::<Result<Vec<_>>>()?;
        let written = self.commit(encoded)?;
        Ok(batch
            .iter()
            .map(|(case, _)| {
                let v = written.iter().find(|(c, _)| c == case).map_or(0, |w| w.1);
                (case.to_string(), v)
            })
            .collect())
    }

    /// Undo: copies version `version`'s files (latents.npy and image.png byte for byte,
    /// metadata.json with a new `baseline` block) into a new version with
    /// `restored_from = version`, and returns the new number. History stays linear; nothing is
    /// deleted. The old version is verified first.
    pub fn restore(&self, case: &str, version: u32, who: &str, why: &str) -> Result<u32> {
        let old = self.load(case, version)?;
        let lat = old.dir.join(LATENTS_FILE);
        let img = old.dir.join(IMAGE_FILE);
        let npy = match old.latents {
            Some(_) => Some(fs::read(&lat).map_err(read_err(&lat))?),
            None => None,
        };
        let png = fs::read(&img).map_err(read_err(&img))?;
        let written = self.commit(vec![Encoded {
            case: case.to_string(),
            npy,
            png,
            stages: old.stages.map(|s| s.bytes),
            image_rgb_sha256: sha256_hex(&old.image.pixels),
            metadata: old.metadata,
            who: who.to_string(),
            why: why.to_string(),
            restored_from: Some(version),
        }])?;
        Ok(written[0].1)
    }

    /// Holds the store lock shared until dropped, so that no batch is half-renamed while the
    /// caller reads several cases. Finishes an interrupted batch first ([`Self::recover`]). A
    /// store never written to (no lock file) needs no lock.
    pub fn read_lock(&self) -> Result<ReadLock> {
        self.recover()?;
        let path = self.root.join(STORE_LOCK_FILE);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(ReadLock { _file: None })
            }
            Err(source) => return Err(BaselineError::Read { path, source }),
        };
        file.lock_shared()
            .map_err(|source| BaselineError::Read { path, source })?;
        Ok(ReadLock { _file: Some(file) })
    }

    /// Completes a batch whose writer died after committing it (a journal is present). Cheap
    /// when there is none (one `stat`).
    pub fn recover(&self) -> Result<()> {
        if !self.root.join(JOURNAL_FILE).exists() {
            return Ok(());
        }
        let _lock = self.lock_store()?;
        self.recover_locked()
    }

    fn lock_store(&self) -> Result<File> {
        let path = self.root.join(STORE_LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(write_err(&path, "opening the store lock"))?;
        lock.lock().map_err(write_err(&path, "locking the store"))?;
        Ok(lock)
    }

    /// Rolls a journal forward; the store lock must be held.
    fn recover_locked(&self) -> Result<()> {
        let path = self.root.join(JOURNAL_FILE);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(source) => return Err(BaselineError::Read { path, source }),
        };
        let journal: Journal =
            serde_json::from_slice(&bytes).map_err(|e| BaselineError::Damaged {
                path: path.clone(),
                reason: format!("unreadable journal of an interrupted batch ({e}); move it aside"),
            })?;
        let mut dirs = Vec::new();
        for e in &journal.entries {
            let case_dir = self.case_dir(&e.case)?;
            let final_dir = case_dir.join(version_dir_name(e.version));
            let tmp = case_dir.join(&e.tmp);
            let tmp_ok = e.tmp.starts_with(TMP_PREFIX) && !e.tmp.contains('/');
            match (tmp_ok && tmp.is_dir(), final_dir.is_dir()) {
                (true, false) => fs::rename(&tmp, &final_dir)
                    .map_err(write_err(&final_dir, "completing an interrupted batch"))?,
                (false, true) => {}
                _ => {
                    return Err(BaselineError::Damaged {
                        path: path.clone(),
                        reason: format!(
                            "journal entry {} v{:04}: expected exactly one of {} and {}; move the journal aside",
                            e.case,
                            e.version,
                            tmp.display(),
                            final_dir.display()
                        ),
                    })
                }
            }
            dirs.push(case_dir);
        }
        for d in &dirs {
            fsync_dir(d).map_err(write_err(d, "syncing case folder"))?;
        }
        fs::remove_file(&path).map_err(write_err(&path, "removing the journal"))?;
        fsync_dir(&self.root).map_err(write_err(&self.root, "syncing the store folder"))
    }

    /// Creates `dir` and every missing ancestor, syncing each new entry's parent.
    fn create_durably(dir: &Path) -> Result<()> {
        if dir.is_dir() {
            return Ok(());
        }
        // The nearest existing ancestor: every folder below it is new and its entry must be
        // made durable by syncing its parent.
        let mut existing = dir;
        while !existing.is_dir() {
            match existing.parent() {
                Some(p) if !p.as_os_str().is_empty() => existing = p,
                _ => {
                    existing = Path::new(".");
                    break;
                }
            }
        }
        fs::create_dir_all(dir).map_err(write_err(dir, "creating folder"))?;
        let mut d = dir;
        while let Some(parent) = d.parent() {
            let parent = if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            };
            fsync_dir(parent).map_err(write_err(parent, "syncing folder"))?;
            if parent == existing || parent == Path::new(".") {
                break;
            }
            d = parent;
        }
        Ok(())
    }

    fn commit(&self, mut items: Vec<Encoded>) -> Result<Vec<(String, u32)>> {
        items.sort_by(|a, b| a.case.cmp(&b.case));
        if let Some(w) = items.windows(2).find(|w| w[0].case == w[1].case) {
            return Err(BaselineError::Invalid {
                case: w[0].case.clone(),
                reason: "named twice in one batch".into(),
            });
        }
        for it in &items {
            Self::create_durably(&self.case_dir(&it.case)?)?;
        }
        let _store_lock = self.lock_store()?;
        self.recover_locked()?;
        let mut staged: Vec<Staged> = Vec::new();
        let cleanup = |staged: &[Staged]| {
            for s in staged {
                let _ = fs::remove_dir_all(&s.tmp);
            }
        };
        for it in &items {
            match self.stage(it) {
                Ok(s) => staged.push(s),
                Err(e) => {
                    cleanup(&staged);
                    return Err(e);
                }
            }
        }
        let journal_path = self.root.join(JOURNAL_FILE);
        let journaled = staged.len() > 1;
        if journaled {
            let journal = Journal {
                entries: staged
                    .iter()
                    .map(|s| JournalEntry {
                        case: s.case.clone(),
                        tmp: s
                            .tmp
                            .file_name()
                            .map(|n| n.to_string_lossy().into_owned())
                            .unwrap_or_default(),
                        version: s.version,
                    })
                    .collect(),
            };
            let bytes = serde_json::to_vec_pretty(&journal).unwrap_or_default();
            let written = if self.hooks.fail_journal {
                Err(std::io::Error::new(
                    std::io::ErrorKind::StorageFull,
                    "No space left on device (injected)",
                ))
            } else {
                crate::fsutil::atomic_write(&journal_path, &bytes)
            };
            if let Err(e) = written {
                cleanup(&staged);
                return Err(write_err(&journal_path, "writing the batch journal")(e));
            }
        }
        for (i, s) in staged.iter().enumerate() {
            if let Err(e) = self.rename_into_place(s) {
                // Undo the renames done so far, so that the batch is all or nothing.
                let undone = staged[..i]
                    .iter()
                    .rev()
                    .all(|d| fs::rename(&d.final_dir, &d.tmp).is_ok());
                if undone {
                    cleanup(&staged);
                    if journaled {
                        let _ = fs::remove_file(&journal_path);
                    }
                    return Err(e);
                }
                let in_place: Vec<String> = staged[..i]
                    .iter()
                    .map(|d| format!("{} v{:04}", d.case, d.version))
                    .collect();
                return Err(BaselineError::Incomplete {
                    path: journal_path,
                    reason: e.to_string(),
                    in_place: in_place.join(", "),
                });
            }
        }
        // A rename is durable only once its folder's entry is on disk. If this fails the
        // versions are complete and visible, but may not survive a power cut: report it.
        for s in &staged {
            fsync_dir(&s.case_dir).map_err(write_err(&s.case_dir, "syncing case folder"))?;
        }
        if journaled {
            fs::remove_file(&journal_path)
                .map_err(write_err(&journal_path, "removing the batch journal"))?;
            fsync_dir(&self.root).map_err(write_err(&self.root, "syncing the store folder"))?;
        }
        Ok(staged.into_iter().map(|s| (s.case, s.version)).collect())
    }

    /// Writes one version into a fresh temp folder of its case, under the case lock.
    fn stage(&self, it: &Encoded) -> Result<Staged> {
        let case_dir = self.case_dir(&it.case)?;
        let lock_path = case_dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(write_err(&lock_path, "opening lock file"))?;
        lock.lock().map_err(write_err(&lock_path, "locking"))?;
        self.remove_stale_temps(&case_dir)?;
        let latest = self.latest_version(&it.case)?.unwrap_or(0);
        let version = latest
            .checked_add(1)
            .ok_or_else(|| BaselineError::VersionOverflow {
                case: it.case.clone(),
                version: latest,
                path: case_dir.clone(),
            })?;
        let final_dir = case_dir.join(version_dir_name(version));
        let mut metadata = it.metadata.clone();
        metadata.baseline = Some(BaselineRecord {
            case: Some(it.case.clone()),
            version: Some(version),
            created_at: Some(crate::clock::utc_now_rfc3339()),
            who: Some(it.who.clone()),
            why: Some(it.why.clone()),
            restored_from: it.restored_from,
            latents_npy_sha256: it.npy.as_deref().map(sha256_hex),
            image_rgb_sha256: Some(it.image_rgb_sha256.clone()),
            extra: Default::default(),
        });
        let meta_bytes = metadata.to_json().map_err(|e| BaselineError::Encode {
            case: it.case.clone(),
            file: METADATA_FILE,
            reason: e.to_string(),
        })?;
        let tmp = case_dir.join(format!(
            "{TMP_PREFIX}{}-{}",
            version_dir_name(version),
            std::process::id()
        ));
        let result = (|| {
            fs::create_dir(&tmp).map_err(write_err(&tmp, "creating temp folder"))?;
            if let Some(bytes) = &it.stages {
                self.write_file(&it.case, &tmp.join(STAGES_FILE), STAGES_FILE, bytes)?;
            }
            let files = [
                (LATENTS_FILE, it.npy.as_ref()),
                (IMAGE_FILE, Some(&it.png)),
                (METADATA_FILE, Some(&meta_bytes)),
            ];
            for (name, bytes) in files {
                if let Some(bytes) = bytes {
                    self.write_file(&it.case, &tmp.join(name), name, bytes)?;
                }
            }
            fsync_dir(&tmp).map_err(write_err(&tmp, "syncing temp folder"))
        })();
        if let Err(e) = result {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
        Ok(Staged {
            case: it.case.clone(),
            case_dir,
            tmp,
            final_dir,
            version,
            _lock: lock,
        })
    }

    fn rename_into_place(&self, s: &Staged) -> Result<()> {
        let fail = |source| BaselineError::Write {
            path: s.final_dir.clone(),
            action: "renaming the temp folder into place",
            source,
        };
        if self.hooks.fail_rename_of.as_deref() == Some(s.case.as_str()) {
            return Err(fail(std::io::Error::other("rename failed (injected)")));
        }
        fs::rename(&s.tmp, &s.final_dir).map_err(fail)
    }

    fn write_file(&self, case: &str, path: &Path, name: &'static str, bytes: &[u8]) -> Result<()> {
        let err = || write_err(path, "writing baseline file");
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(err())?;
        if self.hooks.fail_write_of == Some(name) || self.hooks.fail_case.as_deref() == Some(case) {
            f.write_all(&bytes[..bytes.len() / 2]).map_err(err())?;
            return Err(err()(std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                "No space left on device (injected)",
            )));
        }
        f.write_all(bytes).map_err(err())?;
        f.sync_all().map_err(err())
    }

    /// Removes every `.tmp-*` entry of a case. Only called with the case lock held: writers
    /// create temp folders only under the lock, so each one found belongs to a dead writer.
    fn remove_stale_temps(&self, case_dir: &Path) -> Result<()> {
        let entries = fs::read_dir(case_dir).map_err(|source| BaselineError::Read {
            path: case_dir.to_path_buf(),
            source,
        })?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            if !name.to_string_lossy().starts_with(TMP_PREFIX) {
                continue;
            }
            let p = entry.path();
            let r = if p.is_dir() && !p.is_symlink() {
                fs::remove_dir_all(&p)
            } else {
                fs::remove_file(&p)
            };
            r.map_err(write_err(&p, "removing stale temp folder"))?;
        }
        Ok(())
    }
}

/// Validates a new baseline and encodes its files; nothing touches the disk.
fn encode(case: &str, new: &NewBaseline<'_>) -> Result<Encoded> {
    let invalid = |reason: String| BaselineError::Invalid {
        case: case.to_string(),
        reason,
    };
    validate_case(case)?;
    match new.latents {
        Some(latents) => {
            let Some((h, w)) = latent_hw(&latents.shape) else {
                return Err(invalid(format!(
                    "latents shape {:?} is not [1, 4, h, w]",
                    latents.shape
                )));
            };
            if new.image.width as usize != w * 8 || new.image.height as usize != h * 8 {
                return Err(invalid(format!(
                    "image is {}x{} but the latents ({w}x{h}) need {}x{}",
                    new.image.width,
                    new.image.height,
                    w * 8,
                    h * 8
                )));
            }
            let non_finite = latents.values.iter().filter(|v| !v.is_finite()).count();
            if non_finite > 0 {
                return Err(invalid(format!(
                    "latents contain {non_finite} NaN/inf values; a baseline must be finite"
                )));
            }
        }
        None if !new.metadata.is_image_only() => {
            return Err(invalid(
                "no latents, and the metadata has no service block (only a generation service's answer is image-only)".into(),
            ));
        }
        None => {}
    }
    let want_len = new.image.width as usize * new.image.height as usize * 3;
    if new.image.pixels.len() != want_len {
        return Err(BaselineError::Encode {
            case: case.to_string(),
            file: IMAGE_FILE,
            reason: format!(
                "{}x{} RGB needs {want_len} bytes, got {}",
                new.image.width,
                new.image.height,
                new.image.pixels.len()
            ),
        });
    }
    let encode_err = |file, reason: String| BaselineError::Encode {
        case: case.to_string(),
        file,
        reason,
    };
    let npy_bytes = match new.latents {
        Some(l) => Some(
            generation::encode_latents(&l.shape, &l.values)
                .map_err(|e| encode_err(LATENTS_FILE, e.to_string()))?,
        ),
        None => None,
    };
    let png = new
        .image
        .to_png()
        .map_err(|e| encode_err(IMAGE_FILE, e.to_string()))?;
    // The metadata describes the stage file this version has, or none (a run's record of a file
    // not handed over must not be copied).
    let mut metadata = new.metadata.clone();
    if let Some(outputs) = metadata.outputs.as_mut() {
        outputs.stages = new.stages.map(|s| s.record.clone());
    }
    Ok(Encoded {
        case: case.to_string(),
        npy: npy_bytes,
        png,
        stages: new.stages.map(|s| s.bytes.clone()),
        image_rgb_sha256: sha256_hex(&new.image.pixels),
        metadata,
        who: new.who.clone(),
        why: new.why.clone(),
        restored_from: new.restored_from,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_names() {
        assert_eq!(version_dir_name(1), "v0001");
        assert_eq!(version_dir_name(12345), "v12345");
        assert_eq!(parse_version_dir_name("v0001"), Some(1));
        assert_eq!(parse_version_dir_name("v12345"), Some(12345));
        for bad in [
            "v0000",
            "v001",
            "v00001",
            "v",
            "x0001",
            "v00a1",
            ".tmp-v0001-3",
            "v-001",
        ] {
            assert_eq!(parse_version_dir_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn case_names() {
        for ok in ["fox", "fox_512.pndm-s20", "A1"] {
            validate_case(ok).unwrap();
        }
        for bad in ["", ".hidden", "a/b", "..", "sp ace", "é"] {
            let e = validate_case(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
    }
}
