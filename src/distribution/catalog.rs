//! The models in the cache directory, as the distribution endpoints see them: one entry per
//! manifest Ollama would read (`manifests/<host>/<ns>/<model>/<tag>`), with its ID (sha256 of the
//! manifest bytes, exactly what `ollama list` shows) and whether every blob it references is
//! present in `blobs/` at the right size.
//!
//! Freshness without a restart, by a cheap rescan rather than inotify: before answering, if the
//! snapshot is more than [`RECHECK`] old, the manifest tree is listed and each manifest file and
//! the `blobs/` directory are `stat`ed (a few hundred syscalls for a large cache); only when
//! that fingerprint changed are manifests re-read and blobs re-checked. Chosen over the `notify`
//! crate because it needs no watcher task to supervise, no per-directory watches (four levels
//! deep, re-added as Ollama creates directories, bounded by `max_user_watches`), and it also
//! works where inotify does not (NFS, some overlay and FUSE mounts a models directory may live on).
//! A blob lands in or leaves `blobs/` only by rename or unlink, which changes the directory's
//! mtime, so blob presence is covered by the same fingerprint.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::store::{Digest, Layout, Manifest, ModelRef};

/// How stale a snapshot may be before a request re-checks the directory.
pub const RECHECK: Duration = Duration::from_millis(500);

/// Manifests larger than this are not Ollama manifests (real ones are well under 4 KiB).
const MAX_MANIFEST: u64 = 1 << 20;

#[derive(Debug, Clone)]
pub struct Model {
    pub name: ModelRef,
    /// The manifest bytes exactly as on disk (their sha256 is the ID).
    pub manifest_bytes: Arc<Vec<u8>>,
    pub digest: Digest,
    pub manifest: Manifest,
    pub modified: SystemTime,
    /// Every referenced blob is in `blobs/` with the size the manifest says.
    pub complete: bool,
    /// Blobs that are missing or have the wrong size.
    pub missing: Vec<Digest>,
}

impl Model {
    pub fn size(&self) -> u64 {
        self.manifest.total_size()
    }
}

/// One consistent view of the directory.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    pub models: Vec<Model>,
    /// Bytes in `blobs/` (regular files only) plus the manifests.
    pub usage_bytes: u64,
    pub blob_count: u64,
    /// Manifests that could not be used, with why (shown to the operator, never served).
    pub skipped: Vec<(ModelRef, String)>,
}

impl Snapshot {
    pub fn find(&self, name: &ModelRef) -> Option<&Model> {
        self.models.iter().find(|m| &m.name == name)
    }
}

type Fingerprint = (Vec<(PathBuf, Option<SystemTime>, u64)>, Option<SystemTime>);

#[derive(Default)]
struct Inner {
    checked: Option<Instant>,
    fingerprint: Option<Fingerprint>,
    snapshot: Arc<Snapshot>,
}

#[derive(Default)]
pub struct Catalog {
    inner: Mutex<Inner>,
}

impl Catalog {
    /// The models now in `layout`, rescanned first when the directory changed.
    pub fn snapshot(&self, layout: &Layout) -> Arc<Snapshot> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if inner.checked.is_some_and(|t| t.elapsed() < RECHECK) {
            return inner.snapshot.clone();
        }
        let fp = fingerprint(layout);
        if inner.fingerprint.as_ref() != Some(&fp) {
            inner.snapshot = Arc::new(scan(layout, &fp.0));
            inner.fingerprint = Some(fp);
        }
        inner.checked = Some(Instant::now());
        inner.snapshot.clone()
    }
}

/// [`Catalog::snapshot`] off the async workers: a rescan reads files, and a cache on a slow disk
/// must not stall every connection served by the same worker thread.
pub async fn current(state: &Arc<crate::state::State>) -> Arc<Snapshot> {
    let st = state.clone();
    tokio::task::spawn_blocking(move || st.distribution.catalog.snapshot(&st.layout))
        .await
        .unwrap_or_default()
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::symlink_metadata(p).and_then(|m| m.modified()).ok()
}

fn fingerprint(layout: &Layout) -> Fingerprint {
    let files = layout
        .list_manifests()
        .into_iter()
        .map(|(_, p)| {
            let meta = std::fs::symlink_metadata(&p).ok();
            let len = meta.as_ref().map(|m| m.len()).unwrap_or(0);
            let t = meta.and_then(|m| m.modified().ok());
            (p, t, len)
        })
        .collect();
    (files, mtime(&layout.blobs_dir()))
}

/// Reads a manifest without following a symlink anywhere on its way out of the cache: the final
/// component is opened `O_NOFOLLOW`, and the resolved path must still lie under `manifests/`
/// (a symlinked host or namespace directory pointing elsewhere is refused).
fn read_manifest(layout: &Layout, path: &Path) -> Result<(Vec<u8>, SystemTime), String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let root = std::fs::canonicalize(layout.manifests_dir()).map_err(|e| e.to_string())?;
    let real = std::fs::canonicalize(path).map_err(|e| e.to_string())?;
    if !real.starts_with(&root) {
        return Err("resolves outside the manifests directory".into());
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| e.to_string())?;
    let meta = f.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() || meta.len() > MAX_MANIFEST {
        return Err("not a manifest file".into());
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    f.take(MAX_MANIFEST + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    Ok((bytes, meta.modified().unwrap_or(SystemTime::UNIX_EPOCH)))
}

/// Sizes of the regular files in `blobs/` named like blobs.
fn blob_sizes(layout: &Layout) -> BTreeMap<Digest, u64> {
    std::fs::read_dir(layout.blobs_dir())
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let d = Digest::from_file_name(e.file_name().to_str()?)?;
            // DirEntry::metadata does not follow symlinks: a link is not a blob.
            let m = e.metadata().ok()?;
            m.is_file().then_some((d, m.len()))
        })
        .collect()
}

fn scan(layout: &Layout, files: &[(PathBuf, Option<SystemTime>, u64)]) -> Snapshot {
    let blobs = blob_sizes(layout);
    let mut snap = Snapshot {
        usage_bytes: blobs.values().sum::<u64>() + files.iter().map(|f| f.2).sum::<u64>(),
        blob_count: blobs.len() as u64,
        ..Default::default()
    };
    for (name, path) in layout.list_manifests() {
        let parsed = read_manifest(layout, &path).and_then(|(bytes, modified)| {
            let manifest = Manifest::parse(&bytes)?;
            Ok((bytes, modified, manifest))
        });
        let (bytes, modified, manifest) = match parsed {
            Ok(x) => x,
            Err(why) => {
                tracing::debug!(model = %name, "manifest skipped: {why}");
                snap.skipped.push((name, why));
                continue;
            }
        };
        let missing: Vec<Digest> = manifest
            .blobs()
            .filter(|l| blobs.get(&l.digest) != Some(&l.size))
            .map(|l| l.digest.clone())
            .collect();
        snap.models.push(Model {
            name,
            digest: Digest::of(&bytes),
            manifest_bytes: Arc::new(bytes),
            manifest,
            modified,
            complete: missing.is_empty(),
            missing,
        });
    }
    snap
}
