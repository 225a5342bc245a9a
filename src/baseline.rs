//! The baseline store: versioned, crash-safe folders of `latents.npy`, `image.png` and
//! `metadata.json`, one series of versions per test case.
//!
//! Layout (`root` is the config's `storage.baselines`, `baselines/` by default):
//!
//! ```text
//! <root>/<case>/.lock                 exclusive lock taken by every writer (never removed)
//! <root>/<case>/v0001/latents.npy     float32 [1, 4, h, w]
//! <root>/<case>/v0001/image.png       RGB8, (8w) x (8h)
//! <root>/<case>/v0001/metadata.json   the run's metadata plus a "baseline" key
//! <root>/<case>/v0002/...             the next version; older ones are never changed or deleted
//! <root>/<case>/.tmp-v0003-<pid>/     a write in progress (or left by a crash): readers ignore it
//! ```
//!
//! The current baseline of a case is its highest version. A version folder only ever appears
//! by `rename` of a complete, fsynced temp folder, so every `vNNNN` folder is complete; readers
//! still validate every file and report a damaged one as an error naming the file (never by
//! silently falling back to an older version, which would hide the damage).
//!
//! Writing (see [`BaselineStore::write`]):
//! 1. take the case's lock (`flock`, released by the kernel if the process dies);
//! 2. remove every `.tmp-*` entry: writers create temp folders only while holding the lock, so
//!    any temp folder seen by the lock holder belongs to a writer that died (no pid check needed,
//!    and none would be safe anyway: pids are reused);
//! 3. pick `max(version) + 1`, write the three files into `.tmp-vNNNN-<pid>/`, fsync each file
//!    and the temp folder;
//! 4. `rename` the temp folder to `vNNNN` (atomic), fsync the case folder.
//!
//! Killed before 4, a temp folder is left that readers ignore and the next writer removes;
//! killed after the rename, the version is complete. Any error removes the temp folder.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::sd::image::RgbImage;
use crate::sd::npy::{self, NpyError};

/// File names inside a version folder.
pub const LATENTS_FILE: &str = "latents.npy";
/// See [`LATENTS_FILE`].
pub const IMAGE_FILE: &str = "image.png";
/// See [`LATENTS_FILE`].
pub const METADATA_FILE: &str = "metadata.json";
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
    /// A file of a version is missing.
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
    /// `latents.npy` is not a valid array (the npy error names the file).
    #[error(transparent)]
    Npy(#[from] NpyError),
    /// `latents.npy` has the wrong shape.
    #[error("{path}: latents shape {shape:?} is not [1, 4, h, w]")]
    LatentShape {
        /// The file.
        path: PathBuf,
        /// Its shape.
        shape: Vec<usize>,
    },
    /// `image.png` cannot be decoded.
    #[error("{path}: not a decodable PNG: {reason}")]
    Png {
        /// The file.
        path: PathBuf,
        /// Decoder's message.
        reason: String,
    },
    /// `image.png` does not match the latents' size.
    #[error("{path}: image is {width}x{height} but the latents ({latent_w}x{latent_h}) need {}x{}", latent_w * 8, latent_h * 8)]
    ImageSize {
        /// The file.
        path: PathBuf,
        /// Image width.
        width: u32,
        /// Image height.
        height: u32,
        /// Latent width.
        latent_w: usize,
        /// Latent height.
        latent_h: usize,
    },
    /// `metadata.json` is not a JSON object.
    #[error("{path}: invalid metadata: {reason}")]
    Metadata {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
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
    /// Latents, C order.
    pub latents: Vec<f32>,
    /// `[1, 4, h, w]`.
    pub shape: Vec<usize>,
    /// The decoded image, `(8w) x (8h)`.
    pub image: RgbImage,
    /// The whole `metadata.json`, `baseline` key included.
    pub metadata: Value,
}

/// A new baseline to write.
#[derive(Debug, Clone)]
pub struct NewBaseline<'a> {
    /// Latents, C order.
    pub latents: &'a [f32],
    /// `[1, 4, h, w]`.
    pub shape: &'a [usize],
    /// Image, `(8w) x (8h)`.
    pub image: &'a RgbImage,
    /// The run's metadata (a JSON object); a `baseline` key is added (replacing any present).
    pub metadata: Value,
    /// Who made it (user name, or "monitor check" etc.).
    pub who: String,
    /// Why.
    pub why: String,
    /// The version this one restores, if it is a restore.
    pub restored_from: Option<u32>,
}

/// One line of a case's history, from each version's `metadata.json` `baseline` key
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
#[derive(Debug, Clone)]
pub struct BaselineStore {
    root: PathBuf,
    /// Test hook: make the write of this file fail half-way with "no space left on device".
    fail_write_of: Option<&'static str>,
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
    File::open(dir)?.sync_all()
}

/// Checks `shape` is `[1, 4, h, w]` (h, w > 0) and returns `(h, w)`.
fn latent_hw(shape: &[usize]) -> Option<(usize, usize)> {
    match *shape {
        [1, 4, h, w] if h > 0 && w > 0 => Some((h, w)),
        _ => None,
    }
}

impl BaselineStore {
    /// A store at `root` (nothing is touched until a write).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            fail_write_of: None,
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
        self.fail_write_of = Some(file);
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

    /// The case's version numbers, ascending (only canonical `vNNNN` folders count; temp
    /// folders and anything else are ignored). A missing case has none.
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
            if entry.path().is_dir() {
                out.push(v);
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// The highest version number, if any.
    pub fn latest_version(&self, case: &str) -> Result<Option<u32>> {
        Ok(self.version_numbers(case)?.last().copied())
    }

    /// The current (highest) version, loaded and validated; `None` if the case has none.
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

    /// Loads and validates one version: all three files present, latents a float `[1,4,h,w]`
    /// array, the PNG decodable and `(8w) x (8h)`, metadata.json a JSON object.
    pub fn load(&self, case: &str, version: u32) -> Result<Baseline> {
        let dir = self.version_dir(case, version)?;
        if !dir.is_dir() {
            return Err(BaselineError::NoSuchVersion {
                case: case.to_string(),
                version,
                path: dir,
            });
        }
        let GenerationFiles {
            latents,
            shape,
            image,
            metadata,
        } = read_generation(&dir)?;
        Ok(Baseline {
            version,
            dir,
            latents,
            shape,
            image,
            metadata,
        })
    }

    /// The case's history, oldest first, from each version's metadata.json (which must parse;
    /// the other files are not read).
    pub fn versions(&self, case: &str) -> Result<Vec<VersionInfo>> {
        let mut out = Vec::new();
        for v in self.version_numbers(case)? {
            let meta = read_metadata(&self.version_dir(case, v)?.join(METADATA_FILE))?;
            let b = &meta["baseline"];
            let s = |k: &str| b[k].as_str().unwrap_or_default().to_string();
            out.push(VersionInfo {
                version: v,
                created_at: s("created_at"),
                who: s("who"),
                why: s("why"),
                restored_from: b["restored_from"]
                    .as_u64()
                    .and_then(|x| u32::try_from(x).ok()),
            });
        }
        Ok(out)
    }

    /// Writes a new version and returns its number; earlier versions are never touched.
    pub fn write(&self, case: &str, new: &NewBaseline<'_>) -> Result<u32> {
        let invalid = |reason: String| BaselineError::Invalid {
            case: case.to_string(),
            reason,
        };
        validate_case(case)?;
        let Some((h, w)) = latent_hw(new.shape) else {
            return Err(invalid(format!(
                "latents shape {:?} is not [1, 4, h, w]",
                new.shape
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
        let encode = |file, reason: String| BaselineError::Encode {
            case: case.to_string(),
            file,
            reason,
        };
        let mut npy_bytes = Vec::new();
        npy::write_npy_f32(&mut npy_bytes, new.shape, new.latents)
            .map_err(|e| encode(LATENTS_FILE, e.to_string()))?;
        let png = new
            .image
            .to_png()
            .map_err(|e| encode(IMAGE_FILE, e.to_string()))?;
        if !new.metadata.is_object() {
            return Err(invalid("metadata is not a JSON object".to_string()));
        }
        self.write_encoded(
            case,
            &npy_bytes,
            &png,
            new.metadata.clone(),
            &new.who,
            &new.why,
            new.restored_from,
        )
    }

    /// Undo: copies version `version`'s files (latents.npy and image.png byte for byte,
    /// metadata.json with a new `baseline` key) into a new version with
    /// `restored_from = version`, and returns the new number. History stays linear; nothing is
    /// deleted. The old version is validated first.
    pub fn restore(&self, case: &str, version: u32, who: &str, why: &str) -> Result<u32> {
        let old = self.load(case, version)?;
        let lat = old.dir.join(LATENTS_FILE);
        let img = old.dir.join(IMAGE_FILE);
        let npy_bytes = fs::read(&lat).map_err(read_err(&lat))?;
        let png = fs::read(&img).map_err(read_err(&img))?;
        self.write_encoded(
            case,
            &npy_bytes,
            &png,
            old.metadata,
            who,
            why,
            Some(version),
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn write_encoded(
        &self,
        case: &str,
        npy_bytes: &[u8],
        png: &[u8],
        mut metadata: Value,
        who: &str,
        why: &str,
        restored_from: Option<u32>,
    ) -> Result<u32> {
        let case_dir = self.case_dir(case)?;
        if !case_dir.is_dir() {
            // The nearest existing ancestor: every folder below it is new and its entry must be
            // made durable by syncing its parent.
            let mut existing = case_dir.as_path();
            while !existing.is_dir() {
                match existing.parent() {
                    Some(p) if !p.as_os_str().is_empty() => existing = p,
                    _ => {
                        existing = Path::new(".");
                        break;
                    }
                }
            }
            fs::create_dir_all(&case_dir).map_err(write_err(&case_dir, "creating case folder"))?;
            let mut dir = case_dir.as_path();
            while let Some(parent) = dir.parent() {
                let parent = if parent.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    parent
                };
                fsync_dir(parent).map_err(write_err(parent, "syncing folder"))?;
                if parent == existing || parent == Path::new(".") {
                    break;
                }
                dir = parent;
            }
        }
        let lock_path = case_dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(write_err(&lock_path, "opening lock file"))?;
        lock.lock().map_err(write_err(&lock_path, "locking"))?;

        self.remove_stale_temps(&case_dir)?;
        let version = self.latest_version(case)?.unwrap_or(0) + 1;
        let final_dir = case_dir.join(version_dir_name(version));

        let obj = metadata
            .as_object_mut()
            .ok_or_else(|| BaselineError::Invalid {
                case: case.to_string(),
                reason: "metadata is not a JSON object".to_string(),
            })?;
        obj.insert(
            "baseline".to_string(),
            json!({
                "case": case,
                "version": version,
                "created_at": crate::clock::utc_now_rfc3339(),
                "who": who,
                "why": why,
                "restored_from": restored_from,
            }),
        );
        let meta_bytes = crate::case::pretty_json(&metadata);

        let tmp = case_dir.join(format!(
            "{TMP_PREFIX}{}-{}",
            version_dir_name(version),
            std::process::id()
        ));
        let result = (|| {
            fs::create_dir(&tmp).map_err(write_err(&tmp, "creating temp folder"))?;
            for (name, bytes) in [
                (LATENTS_FILE, npy_bytes),
                (IMAGE_FILE, png),
                (METADATA_FILE, &meta_bytes[..]),
            ] {
                self.write_file(&tmp.join(name), name, bytes)?;
            }
            fsync_dir(&tmp).map_err(write_err(&tmp, "syncing temp folder"))?;
            fs::rename(&tmp, &final_dir).map_err(|source| BaselineError::Write {
                path: final_dir.clone(),
                action: "renaming the temp folder into place",
                source,
            })?;
            Ok(())
        })();
        if let Err(e) = result {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
        // The rename is durable only once the case folder's entry is on disk. If this fails the
        // version is complete and visible, but may not survive a power cut: report it.
        fsync_dir(&case_dir).map_err(write_err(&case_dir, "syncing case folder"))?;
        drop(lock);
        Ok(version)
    }

    fn write_file(&self, path: &Path, name: &'static str, bytes: &[u8]) -> Result<()> {
        let err = || write_err(path, "writing baseline file");
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(err())?;
        if self.fail_write_of == Some(name) {
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

/// The three files of a generation — a baseline version or a run's output — read back.
#[derive(Debug, Clone)]
pub struct GenerationFiles {
    /// Final latents, flat.
    pub latents: Vec<f32>,
    /// Their shape, `[1, 4, h, w]`.
    pub shape: Vec<usize>,
    /// The image, `(8w) x (8h)`.
    pub image: RgbImage,
    /// metadata.json, a JSON object.
    pub metadata: Value,
}

/// Reads and validates `latents.npy`, `image.png` and `metadata.json` in `dir`: all present,
/// latents a float `[1,4,h,w]` array, the PNG decodable and `(8w) x (8h)`, metadata an object.
pub fn read_generation(dir: &Path) -> Result<GenerationFiles> {
    let lat_path = dir.join(LATENTS_FILE);
    if !lat_path.exists() {
        return Err(BaselineError::Missing { path: lat_path });
    }
    let arr = npy::read_npy(&lat_path)?;
    let Some((h, w)) = latent_hw(&arr.shape) else {
        return Err(BaselineError::LatentShape {
            path: lat_path,
            shape: arr.shape,
        });
    };
    let img_path = dir.join(IMAGE_FILE);
    let png = fs::read(&img_path).map_err(read_err(&img_path))?;
    let image = RgbImage::from_png(&png).map_err(|e| BaselineError::Png {
        path: img_path.clone(),
        reason: e.to_string(),
    })?;
    if image.width as usize != w * 8 || image.height as usize != h * 8 {
        return Err(BaselineError::ImageSize {
            path: img_path,
            width: image.width,
            height: image.height,
            latent_w: w,
            latent_h: h,
        });
    }
    let metadata = read_metadata(&dir.join(METADATA_FILE))?;
    Ok(GenerationFiles {
        latents: arr.data,
        shape: arr.shape,
        image,
        metadata,
    })
}

/// Reads a metadata.json that must be a JSON object.
fn read_metadata(path: &Path) -> Result<Value> {
    let bytes = fs::read(path).map_err(read_err(path))?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|e| BaselineError::Metadata {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    if !v.is_object() {
        return Err(BaselineError::Metadata {
            path: path.to_path_buf(),
            reason: "not a JSON object".to_string(),
        });
    }
    Ok(v)
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
