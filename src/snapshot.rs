//! Host snapshots: one host's outputs for the configured cases, packed so that another host (or
//! the same one later) can compare with them. A snapshot is a folder, or a tar of that folder:
//!
//! ```text
//! snapshot.json            what took it: host, platform, environment, runtime settings, cases
//! cases/<case>/latents.npy, image.png, metadata.json   one generation folder per case
//! MANIFEST.sha256          sha256 of every other file (`sha256sum -c` reads it too); last
//! ```
//!
//! Reading verifies everything: the manifest against every file (nothing missing, nothing
//! extra), then each case folder against the hashes its own metadata records. A baseline store
//! (`storage.baselines`) reads as a snapshot of its current versions.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::baseline::{Baseline, BaselineStore};
use crate::generation::{self, GenerationFiles};

/// `snapshot.json`.
pub const INFO_FILE: &str = "snapshot.json";
/// The manifest, written last.
pub const MANIFEST_FILE: &str = "MANIFEST.sha256";
/// `format` of `snapshot.json`.
pub const FORMAT: &str = "monitor-snapshot";
/// The snapshot format this monitor writes and the newest it reads.
pub const FORMAT_VERSION: u32 = 1;
/// Bounds on what a snapshot tar may hold, so a hostile file cannot fill the disk.
const MAX_FILE_BYTES: u64 = 1 << 30;
const MAX_TOTAL_BYTES: u64 = 8 << 30;
const MAX_ENTRIES: usize = 10_000;

/// `snapshot.json`: what a snapshot is of.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    /// Always [`FORMAT`].
    pub format: String,
    /// [`FORMAT_VERSION`] when written.
    pub format_version: u32,
    /// RFC 3339 UTC.
    pub created_at: String,
    /// Host name.
    pub host: Option<String>,
    /// A name the operator gave it (`--label`), else the host name.
    pub label: Option<String>,
    /// `linux x86_64`, `windows x86_64`, ...
    pub platform: String,
    /// The monitor that took it.
    pub monitor_version: String,
    /// The host fingerprint (GPU, driver, CUDA, CPU, OS).
    pub environment: serde_json::Value,
    /// Execution provider and every setting that changes bits.
    pub runtime: serde_json::Value,
    /// The model folder as configured.
    pub model_path: String,
    /// Cases whose outputs are in `cases/`, in config order.
    pub cases: Vec<String>,
    /// Cases that could not run, with why.
    #[serde(default)]
    pub errors: BTreeMap<String, String>,
}

/// What a snapshot was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// A snapshot tar file.
    Tar,
    /// A snapshot folder.
    Folder,
    /// A baseline store: the current version of each case.
    BaselineStore,
}

/// A verified snapshot, ready to compare.
#[derive(Debug)]
pub struct Snapshot {
    /// The path given.
    pub source: PathBuf,
    /// Tar, folder or baseline store.
    pub kind: SourceKind,
    /// `snapshot.json` (a baseline store has none).
    pub info: Option<SnapshotInfo>,
    /// Per case, in the snapshot's order.
    pub cases: Vec<(String, Baseline)>,
    /// Cases the snapshot says could not run.
    pub errors: BTreeMap<String, String>,
    /// The extracted tar, removed on drop.
    _extracted: Option<tempfile::TempDir>,
}

impl Snapshot {
    /// Opens and verifies a snapshot tar or folder, or reads a baseline store as one.
    pub fn open(path: &Path) -> Result<Snapshot> {
        let meta = std::fs::metadata(path)
            .with_context(|| format!("opening snapshot {}", path.display()))?;
        if meta.is_file() {
            let tmp = extract_tar(path)?;
            let mut s = open_folder(tmp.path(), path, SourceKind::Tar)?;
            s._extracted = Some(tmp);
            return Ok(s);
        }
        if path.join(INFO_FILE).exists() || path.join(MANIFEST_FILE).exists() {
            return open_folder(path, path, SourceKind::Folder);
        }
        open_store(path)
    }

    /// A short name for tables: the label, else the host, else the file name.
    pub fn name(&self) -> String {
        self.info
            .as_ref()
            .and_then(|i| i.label.clone().or_else(|| i.host.clone()))
            .or_else(|| {
                self.source
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
            })
            .unwrap_or_else(|| self.source.display().to_string())
    }

    /// One case's outputs.
    pub fn case(&self, name: &str) -> Option<&Baseline> {
        self.cases.iter().find(|(n, _)| n == name).map(|(_, b)| b)
    }
}

/// Builds a snapshot folder at `staging` from worker outputs (`done`: case → its folder).
pub fn write_folder(staging: &Path, info: &SnapshotInfo, done: &[(String, PathBuf)]) -> Result<()> {
    let cases = staging.join("cases");
    std::fs::create_dir_all(&cases).with_context(|| format!("creating {}", cases.display()))?;
    for (name, dir) in done {
        let to = cases.join(name);
        std::fs::create_dir(&to).with_context(|| format!("creating {}", to.display()))?;
        generation::copy_folder(dir, &to, true)?;
    }
    let mut json = serde_json::to_vec_pretty(info).context("encoding snapshot.json")?;
    json.push(b'\n');
    let p = staging.join(INFO_FILE);
    std::fs::write(&p, json).with_context(|| format!("writing {}", p.display()))?;
    let mut manifest = String::new();
    for rel in list_files(staging)? {
        if rel == MANIFEST_FILE {
            continue;
        }
        manifest.push_str(&format!(
            "{}  {rel}\n",
            crate::sd::model::sha256_file(&staging.join(&rel))?
        ));
    }
    let p = staging.join(MANIFEST_FILE);
    std::fs::write(&p, manifest).with_context(|| format!("writing {}", p.display()))?;
    Ok(())
}

/// Packs the folder `dir` into the tar file `out`, atomically (temp file, fsync, rename).
pub fn write_tar(dir: &Path, out: &Path) -> Result<()> {
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = tempfile::Builder::new()
        .prefix(".snapshot-")
        .suffix(".tmp")
        .tempfile_in(&parent)
        .with_context(|| format!("creating a temporary file in {}", parent.display()))?;
    {
        let mut builder = tar::Builder::new(std::io::BufWriter::new(tmp.as_file()));
        builder.mode(tar::HeaderMode::Deterministic);
        for rel in list_files(dir)? {
            builder
                .append_path_with_name(dir.join(&rel), &rel)
                .with_context(|| format!("adding {rel} to {}", out.display()))?;
        }
        let mut w = builder
            .into_inner()
            .with_context(|| format!("writing {}", out.display()))?;
        w.flush()
            .with_context(|| format!("writing {}", out.display()))?;
    }
    // tempfile creates 0600; a snapshot is meant to be copied between hosts and read by others.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))
            .with_context(|| format!("setting the mode of {}", out.display()))?;
    }
    tmp.as_file()
        .sync_all()
        .with_context(|| format!("syncing {}", out.display()))?;
    tmp.persist(out)
        .map_err(|e| e.error)
        .with_context(|| format!("renaming the temporary file to {}", out.display()))?;
    Ok(())
}

/// Every regular file under `dir`, as `/`-separated relative paths, sorted (so tars and
/// manifests are the same on every platform).
fn list_files(dir: &Path) -> Result<Vec<String>> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
        let rd = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
        for entry in rd {
            let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
            let path = entry.path();
            let ty = entry
                .file_type()
                .with_context(|| format!("reading {}", path.display()))?;
            if ty.is_dir() {
                walk(root, &path, out)?;
            } else if ty.is_file() {
                let rel = path.strip_prefix(root).expect("under root");
                let parts: Vec<String> = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                out.push(parts.join("/"));
            } else {
                bail!(
                    "{}: not a regular file or folder (snapshots hold no links)",
                    path.display()
                );
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out)?;
    out.sort();
    Ok(out)
}

/// The tar crate quotes raw header bytes in some errors (found by fuzzing: a checksum field
/// holding JSON); errors here are one line of bounded length.
fn tar_error(e: std::io::Error) -> anyhow::Error {
    let text: String = e
        .to_string()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let mut text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if text.chars().count() > 160 {
        text = text.chars().take(160).collect::<String>() + "…";
    }
    anyhow::anyhow!(text)
}

/// Extracts a snapshot tar into a private temporary folder: regular files and folders only,
/// plain relative names only, bounded sizes.
fn extract_tar(path: &Path) -> Result<tempfile::TempDir> {
    let what = || format!("snapshot {}", path.display());
    let file = std::fs::File::open(path).with_context(what)?;
    let tmp = tempfile::Builder::new()
        .prefix("monitor-snapshot-read-")
        .tempdir()
        .context("creating a temporary folder to read the snapshot")?;
    let mut archive = tar::Archive::new(std::io::BufReader::new(file));
    let mut total = 0u64;
    let entries = archive
        .entries()
        .map_err(tar_error)
        .with_context(|| format!("{}: not a tar file", what()))?;
    for (i, entry) in entries.enumerate() {
        if i >= MAX_ENTRIES {
            bail!("{}: more than {MAX_ENTRIES} entries", what());
        }
        let mut entry = entry
            .map_err(tar_error)
            .with_context(|| format!("{}: damaged tar entry", what()))?;
        let rel = entry
            .path()
            .map_err(tar_error)
            .with_context(|| format!("{}: an entry's name is not valid", what()))?
            .into_owned();
        if rel.as_os_str().is_empty()
            || !rel.components().all(|c| matches!(c, Component::Normal(_)))
        {
            bail!(
                "{}: entry {} is not a plain relative path",
                what(),
                rel.display()
            );
        }
        let dest = tmp.path().join(&rel);
        match entry.header().entry_type() {
            tar::EntryType::Directory => {
                std::fs::create_dir_all(&dest)
                    .with_context(|| format!("extracting {}", rel.display()))?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let size = entry.header().size().unwrap_or(u64::MAX);
                total = total.saturating_add(size);
                if size > MAX_FILE_BYTES || total > MAX_TOTAL_BYTES {
                    bail!(
                        "{}: entry {} is too large ({size} bytes; limits {MAX_FILE_BYTES} per file, {MAX_TOTAL_BYTES} in all)",
                        what(),
                        rel.display()
                    );
                }
                if let Some(parent) = dest.parent() {
                    std::fs::create_dir_all(parent)
                        .with_context(|| format!("extracting {}", rel.display()))?;
                }
                if dest.exists() {
                    bail!("{}: entry {} appears twice", what(), rel.display());
                }
                let mut out = std::fs::File::create(&dest)
                    .with_context(|| format!("extracting {}", rel.display()))?;
                let copied = std::io::copy(&mut (&mut entry).take(size), &mut out)
                    .map_err(tar_error)
                    .with_context(|| format!("{}: reading entry {}", what(), rel.display()))?;
                if copied != size {
                    bail!("{}: entry {} is truncated", what(), rel.display());
                }
            }
            other => bail!(
                "{}: entry {} is a {other:?}, not a file or folder (snapshots hold no links)",
                what(),
                rel.display()
            ),
        }
    }
    Ok(tmp)
}

/// Verifies and reads a snapshot folder at `dir` (`source`: what the user named).
fn open_folder(dir: &Path, source: &Path, kind: SourceKind) -> Result<Snapshot> {
    let name = source.display().to_string();
    let manifest_path = dir.join(MANIFEST_FILE);
    let manifest = std::fs::read_to_string(&manifest_path).with_context(|| {
        format!("snapshot {name}: reading {MANIFEST_FILE} (not a snapshot, or not finished)")
    })?;
    let mut listed = BTreeMap::new();
    for (i, line) in manifest.lines().enumerate() {
        let Some((sha, rel)) = line.split_once("  ") else {
            bail!(
                "snapshot {name}: {MANIFEST_FILE} line {}: expected \"SHA256  PATH\"",
                i + 1
            );
        };
        if !generation::is_sha256(sha) {
            bail!(
                "snapshot {name}: {MANIFEST_FILE} line {}: {sha:?} is not a sha256",
                i + 1
            );
        }
        listed.insert(rel.to_string(), sha.to_string());
    }
    let present = list_files(dir).with_context(|| format!("snapshot {name}"))?;
    for rel in &present {
        if rel == MANIFEST_FILE {
            continue;
        }
        let Some(want) = listed.get(rel) else {
            bail!("snapshot {name}: {rel} is not in {MANIFEST_FILE} (added after the snapshot was taken?)");
        };
        let got = crate::sd::model::sha256_file(&dir.join(rel))?;
        if &got != want {
            bail!(
                "snapshot {name}: {rel}: sha256 {} does not match the manifest's {} (the file was changed)",
                &got[..12],
                &want[..12]
            );
        }
    }
    for rel in listed.keys() {
        if !present.contains(rel) {
            bail!("snapshot {name}: {rel} is in {MANIFEST_FILE} but missing");
        }
    }
    let info_path = dir.join(INFO_FILE);
    let bytes = std::fs::read(&info_path)
        .with_context(|| format!("snapshot {name}: reading {INFO_FILE}"))?;
    let info: SnapshotInfo = serde_json::from_slice(&bytes)
        .with_context(|| format!("snapshot {name}: {INFO_FILE} is not valid"))?;
    if info.format != FORMAT {
        bail!(
            "snapshot {name}: {INFO_FILE}: format {:?}, expected {FORMAT:?}",
            info.format
        );
    }
    if info.format_version > FORMAT_VERSION {
        bail!(
            "snapshot {name}: format version {} is newer than this monitor reads ({FORMAT_VERSION}); upgrade the monitor",
            info.format_version
        );
    }
    let mut cases = Vec::new();
    for case in &info.cases {
        crate::baseline::validate_case(case)
            .with_context(|| format!("snapshot {name}: {INFO_FILE}: case {case:?}"))?;
        let case_dir = dir.join("cases").join(case);
        let files = generation::read(&case_dir)
            .map_err(|e| anyhow::anyhow!("snapshot {name}: case {case}: {e}"))?;
        crate::metadata::validate(&files.metadata, case).map_err(|reason| {
            anyhow::anyhow!("snapshot {name}: cases/{case}/metadata.json: {reason}")
        })?;
        cases.push((case.clone(), baseline_of(files, case_dir, 0)));
    }
    Ok(Snapshot {
        source: source.to_path_buf(),
        kind,
        errors: info.errors.clone(),
        info: Some(info),
        cases,
        _extracted: None,
    })
}

fn baseline_of(files: GenerationFiles, dir: PathBuf, version: u32) -> Baseline {
    Baseline {
        version,
        dir,
        latents: files.latents,
        image: files.image,
        metadata: files.metadata,
        stages: files.stages,
    }
}

/// A baseline store read as a snapshot: the current version of every case.
fn open_store(path: &Path) -> Result<Snapshot> {
    let store = BaselineStore::new(path);
    let names = store.cases().with_context(|| {
        format!(
            "{} is neither a snapshot (no {INFO_FILE}) nor a baseline store",
            path.display()
        )
    })?;
    if names.is_empty() {
        bail!(
            "{} is neither a snapshot (no {INFO_FILE}) nor a baseline store with cases",
            path.display()
        );
    }
    let mut cases = Vec::new();
    for name in names {
        if let Some(b) = store
            .current(&name)
            .with_context(|| format!("baseline store {}: case {name}", path.display()))?
        {
            crate::metadata::check_baseline(&b, &name).map_err(|e| anyhow::anyhow!(e))?;
            cases.push((name, b));
        }
    }
    Ok(Snapshot {
        source: path.to_path_buf(),
        kind: SourceKind::BaselineStore,
        info: None,
        cases,
        errors: BTreeMap::new(),
        _extracted: None,
    })
}

/// This platform, as snapshots record it.
pub fn platform() -> String {
    format!("{} {}", std::env::consts::OS, std::env::consts::ARCH)
}

/// What `monitor snapshot` wrote.
#[derive(Debug, Clone, Serialize)]
pub struct Taken {
    /// The snapshot file or folder.
    pub path: PathBuf,
    /// Its `snapshot.json`.
    pub info: SnapshotInfo,
}

/// Runs `names` (all cases when empty) and writes their outputs as a snapshot at `out` (a tar
/// when the name ends in `.tar`, else a folder). Needs no baselines. Cases that fail are listed
/// in `snapshot.json`'s `errors`; a snapshot with no case at all is not written.
pub fn take(
    config: &crate::config::Config,
    names: &[String],
    out: &Path,
    label: Option<String>,
) -> Result<Taken> {
    if out.exists() {
        bail!(
            "{} already exists; a snapshot is never overwritten",
            out.display()
        );
    }
    let as_tar = out.extension().is_some_and(|e| e == "tar");
    let cases = crate::check::pipeline_cases(config, names, "a snapshot")?;
    let environment = crate::fingerprint::collect();
    let work = crate::worker::work_dir("snapshot")?;
    let run = crate::check::run_worker(
        config,
        &cases,
        &environment,
        &work.path().join("outputs"),
        std::time::Duration::from_secs_f64(config.worker.timeout_s),
        &crate::worker::Cancel::new(),
    )?;
    let mut done = Vec::new();
    let mut errors = BTreeMap::new();
    for (name, outcome) in run.outcomes {
        match outcome {
            crate::worker::Outcome::Done { dir, .. } => done.push((name, dir)),
            crate::worker::Outcome::Failed(e) => {
                errors.insert(name, e);
            }
        }
    }
    if done.is_empty() {
        let why: Vec<String> = errors.iter().map(|(c, e)| format!("{c}: {e}")).collect();
        bail!("no case ran, nothing to snapshot: {}", why.join("; "));
    }
    let host = crate::fingerprint::hostname();
    let info = SnapshotInfo {
        format: FORMAT.into(),
        format_version: FORMAT_VERSION,
        created_at: crate::clock::utc_now_rfc3339(),
        label: label.or_else(|| host.clone()),
        host,
        platform: platform(),
        monitor_version: env!("CARGO_PKG_VERSION").into(),
        environment: serde_json::to_value(&environment)?,
        runtime: serde_json::to_value(config.model.runtime_settings())?,
        model_path: config.model.path.display().to_string(),
        cases: done.iter().map(|(n, _)| n.clone()).collect(),
        errors,
    };
    if as_tar {
        let staging = work.path().join("snapshot");
        write_folder(&staging, &info, &done)?;
        write_tar(&staging, out)?;
    } else {
        // Built beside its final place, then renamed: a folder that exists is complete.
        let parent = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let staging = tempfile::Builder::new()
            .prefix(".snapshot-")
            .tempdir_in(&parent)
            .with_context(|| format!("creating a temporary folder in {}", parent.display()))?;
        write_folder(staging.path(), &info, &done)?;
        std::fs::rename(staging.path(), out).with_context(|| {
            format!("renaming {} to {}", staging.path().display(), out.display())
        })?;
        // The TempDir no longer exists at its path; dropping it is a no-op.
    }
    Ok(Taken {
        path: out.to_path_buf(),
        info,
    })
}
