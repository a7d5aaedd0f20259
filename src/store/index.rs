//! The access index: per manifest (model) and per blob, when it was last used, how often, and
//! whether the daemon fetched it itself (as opposed to finding it in the directory: a user's own
//! Ollama models, which prune and eviction leave alone unless told otherwise).
//!
//! Stored in redb (`.lancached/index.redb`): pure Rust (no C toolchain, no shared library to
//! ship), one file, ACID with copy-on-write B-trees and checksummed commits, so a crash leaves the
//! last committed state and a damaged file is detected on open rather than read as garbage.
//! SQLite would do as well, but its query language buys nothing for two key/value tables.
//!
//! The hot path never touches the database: [`Index::touch_manifest`] and friends add to an
//! in-memory buffer (one short mutex section; repeated touches of one key coalesce), and the cache
//! subsystem flushes it in one write transaction about once a second. The database is opened by
//! that subsystem too, in the background, so start-up never waits for it: a file that fails to
//! open (corrupt, wrong format) is moved aside and a new one is built from the directory.
//!
//! The index is advisory. What exists is decided by the directory; an entry says only how
//! recently something was used and whether we fetched it. A model with no entry counts as local
//! (not fetched), the safe side: losing the index never makes a user's model evictable.

use anyhow::{anyhow, Context, Result};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

use super::layout::Layout;
use super::manifest::Manifest;
use super::names::{Digest, ModelRef};

/// (last access, seconds since the epoch; hits; fetched by the daemon).
type Record = (u64, u64, bool);

/// Keyed by the canonical model name `host/namespace/model:tag`.
const MANIFESTS: TableDefinition<&str, Record> = TableDefinition::new("manifests");
/// Keyed by the digest's 64 hex characters.
const BLOBS: TableDefinition<&str, Record> = TableDefinition::new("blobs");
/// Keyed by a [`super::tenant::Unit`]'s key (opaque here): the hub cache's snapshots.
const UNITS: TableDefinition<&str, Record> = TableDefinition::new("units");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const SCHEMA_VERSION: u64 = 1;

pub const INDEX_FILE: &str = "index.redb";

/// What the index knows about one manifest or blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Entry {
    /// Seconds since the Unix epoch.
    pub last_access: u64,
    pub hits: u64,
    pub fetched: bool,
}

impl Entry {
    fn from_record((last_access, hits, fetched): Record) -> Entry {
        Entry {
            last_access,
            hits,
            fetched,
        }
    }
    fn record(self) -> Record {
        (self.last_access, self.hits, self.fetched)
    }
    fn merge(self, newer: Entry) -> Entry {
        Entry {
            last_access: self.last_access.max(newer.last_access),
            hits: self.hits + newer.hits,
            fetched: self.fetched || newer.fetched,
        }
    }
}

#[derive(Default)]
struct Pending {
    manifests: HashMap<String, Entry>,
    blobs: HashMap<String, Entry>,
    forget_manifests: Vec<String>,
    forget_blobs: Vec<String>,
    units: HashMap<String, Entry>,
    forget_units: Vec<String>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.manifests.is_empty()
            && self.blobs.is_empty()
            && self.forget_manifests.is_empty()
            && self.forget_blobs.is_empty()
            && self.units.is_empty()
            && self.forget_units.is_empty()
    }
}

pub struct Index {
    path: PathBuf,
    pending: Mutex<Pending>,
    db: OnceLock<Database>,
    /// Wakes readers waiting for the database to open; carries the last open error, if any.
    state_tx: watch::Sender<OpenState>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum OpenState {
    Opening,
    Open,
    Failed(String),
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn mtime_secs(path: &Path) -> Option<u64> {
    let m = std::fs::metadata(path).ok()?.modified().ok()?;
    Some(m.duration_since(UNIX_EPOCH).ok()?.as_secs())
}

impl Index {
    /// An index for the cache at `layout`; nothing is opened until [`Index::open`].
    pub fn new(layout: &Layout) -> Index {
        let (state_tx, _) = watch::channel(OpenState::Opening);
        Index {
            path: layout.state_dir().join(INDEX_FILE),
            pending: Mutex::new(Pending::default()),
            db: OnceLock::new(),
            state_tx,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    // ---- the hot path: buffer only ----

    /// A client asked for this model's manifest.
    pub fn touch_manifest(&self, model: &ModelRef) {
        self.add_manifest(model, 1, false);
    }

    /// A client read this blob.
    pub fn touch_blob(&self, digest: &Digest) {
        self.add_blob(digest, 1, false);
    }

    /// The daemon wrote this model's manifest from upstream: it is ours to evict.
    pub fn record_fetched(&self, model: &ModelRef) {
        self.add_manifest(model, 0, true);
    }

    /// The daemon published this blob from an upstream fill.
    pub fn record_fetched_blob(&self, digest: &Digest) {
        self.add_blob(digest, 0, true);
    }

    /// Merges a known entry for a model (restoring usage from elsewhere, building test caches):
    /// the later access time wins, hits add up, fetched sticks.
    pub fn record_manifest_entry(&self, model: &ModelRef, entry: Entry) {
        let mut p = self.pending.lock().unwrap();
        let slot = p.manifests.entry(model.to_string()).or_default();
        *slot = slot.merge(entry);
    }

    fn add_manifest(&self, model: &ModelRef, hits: u64, fetched: bool) {
        let e = Entry {
            last_access: now_secs(),
            hits,
            fetched,
        };
        let mut p = self.pending.lock().unwrap();
        let slot = p.manifests.entry(model.to_string()).or_default();
        *slot = slot.merge(e);
    }

    fn add_blob(&self, digest: &Digest, hits: u64, fetched: bool) {
        let e = Entry {
            last_access: now_secs(),
            hits,
            fetched,
        };
        let mut p = self.pending.lock().unwrap();
        let slot = p.blobs.entry(digest.hex().to_string()).or_default();
        *slot = slot.merge(e);
    }

    /// The model was removed from the cache.
    pub fn forget_manifest(&self, model: &ModelRef) {
        let key = model.to_string();
        let mut p = self.pending.lock().unwrap();
        p.manifests.remove(&key);
        p.forget_manifests.push(key);
    }

    /// The blob was removed from the cache.
    pub fn forget_blob(&self, digest: &Digest) {
        let key = digest.hex().to_string();
        let mut p = self.pending.lock().unwrap();
        p.blobs.remove(&key);
        p.forget_blobs.push(key);
    }

    /// A client used this tenant unit (a hub snapshot's file was served).
    pub fn touch_unit(&self, key: &str) {
        self.add_unit(key, 1, false);
    }

    /// The daemon wrote this unit from upstream (or an import): it is ours to evict.
    pub fn record_fetched_unit(&self, key: &str) {
        self.add_unit(key, 0, true);
    }

    fn add_unit(&self, key: &str, hits: u64, fetched: bool) {
        let e = Entry {
            last_access: now_secs(),
            hits,
            fetched,
        };
        let mut p = self.pending.lock().unwrap();
        let slot = p.units.entry(key.to_string()).or_default();
        *slot = slot.merge(e);
    }

    /// The unit was removed from the cache.
    pub fn forget_unit(&self, key: &str) {
        let mut p = self.pending.lock().unwrap();
        p.units.remove(key);
        p.forget_units.push(key.to_string());
    }

    // ---- opening, rebuilding, flushing (blocking; run on a blocking thread) ----

    pub fn is_open(&self) -> bool {
        self.db.get().is_some()
    }

    /// Waits (at most `timeout`) for the database to be open.
    pub async fn wait_open(&self, timeout: Duration) -> Result<()> {
        let mut rx = self.state_tx.subscribe();
        let waited = tokio::time::timeout(timeout, async {
            loop {
                match &*rx.borrow_and_update() {
                    OpenState::Open => return Ok(()),
                    OpenState::Failed(e) if !self.is_open() => {
                        return Err(anyhow!("the access index is not available: {e}"))
                    }
                    _ => {}
                }
                if rx.changed().await.is_err() {
                    return Err(anyhow!("the access index was dropped"));
                }
            }
        })
        .await;
        waited.unwrap_or_else(|_| {
            Err(anyhow!(
                "the access index at {} did not open within {timeout:?}",
                self.path.display()
            ))
        })
    }

    /// Opens the database, or builds a new one when the file is missing or unusable (the bad
    /// file is kept beside it as `index.redb.corrupt-<time>` for inspection). Idempotent.
    pub fn open(&self) -> Result<()> {
        if self.is_open() {
            return Ok(());
        }
        let result = self.open_inner();
        match result {
            Ok(db) => {
                let _ = self.db.set(db);
                self.state_tx.send_replace(OpenState::Open);
            }
            Err(e) => {
                self.state_tx
                    .send_replace(OpenState::Failed(format!("{e:#}")));
                return Err(e);
            }
        }
        Ok(())
    }

    fn open_inner(&self) -> Result<Database> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let existed = self.path.exists();
        let db = match Database::create(&self.path).map_err(anyhow::Error::from) {
            Ok(db) => match check_schema(&db) {
                Ok(()) => db,
                Err(e) => {
                    drop(db);
                    self.move_aside(&e)?
                }
            },
            Err(e) if is_locked(&e) => {
                return Err(e.context(format!(
                    "the access index {} is in use by another process (another lancached on the same cache.dir?)",
                    self.path.display()
                )))
            }
            Err(e) => self.move_aside(&e)?,
        };
        if !existed {
            tracing::info!(path = %self.path.display(), "created a new access index");
        }
        Ok(db)
    }

    fn move_aside(&self, why: &anyhow::Error) -> Result<Database> {
        let aside = self
            .path
            .with_file_name(format!("{INDEX_FILE}.corrupt-{}", now_secs()));
        tracing::warn!(
            path = %self.path.display(),
            moved_to = %aside.display(),
            "the access index cannot be used ({why:#}); keeping it aside and rebuilding from the cache directory"
        );
        std::fs::rename(&self.path, &aside)
            .with_context(|| format!("moving {} aside", self.path.display()))?;
        let db = Database::create(&self.path)
            .with_context(|| format!("creating {}", self.path.display()))?;
        check_schema(&db)?;
        Ok(db)
    }

    fn db(&self) -> Result<&Database> {
        self.db
            .get()
            .ok_or_else(|| anyhow!("the access index is still opening"))
    }

    /// Writes the buffered touches in one transaction. Cheap when nothing is pending.
    pub fn flush(&self) -> Result<()> {
        let db = self.db()?;
        let pending = std::mem::take(&mut *self.pending.lock().unwrap());
        if pending.is_empty() {
            return Ok(());
        }
        let tx = db.begin_write()?;
        {
            let mut t = tx.open_table(MANIFESTS)?;
            for key in &pending.forget_manifests {
                t.remove(key.as_str())?;
            }
            for (key, e) in &pending.manifests {
                let old = t.get(key.as_str())?.map(|v| Entry::from_record(v.value()));
                let merged = old.map(|o| o.merge(*e)).unwrap_or(*e);
                t.insert(key.as_str(), merged.record())?;
            }
            let mut t = tx.open_table(BLOBS)?;
            for key in &pending.forget_blobs {
                t.remove(key.as_str())?;
            }
            for (key, e) in &pending.blobs {
                let old = t.get(key.as_str())?.map(|v| Entry::from_record(v.value()));
                let merged = old.map(|o| o.merge(*e)).unwrap_or(*e);
                t.insert(key.as_str(), merged.record())?;
            }
            let mut t = tx.open_table(UNITS)?;
            for key in &pending.forget_units {
                t.remove(key.as_str())?;
            }
            for (key, e) in &pending.units {
                let old = t.get(key.as_str())?.map(|v| Entry::from_record(v.value()));
                let merged = old.map(|o| o.merge(*e)).unwrap_or(*e);
                t.insert(key.as_str(), merged.record())?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Brings the index in line with the directory: every manifest on disk gets an entry (last
    /// access = the file's mtime, not fetched), as does every blob it references; entries of
    /// manifests and blobs no longer on disk (say, after `ollama rm`) are dropped. Runs after every open, in the
    /// background, so models that were already in the directory are known without delaying
    /// start-up. Returns how many new models it indexed.
    pub fn reconcile(&self, layout: &Layout) -> Result<usize> {
        let db = self.db()?;
        let on_disk = layout.list_manifests();
        let mut new_models = 0;
        let tx = db.begin_write()?;
        {
            let mut manifests = tx.open_table(MANIFESTS)?;
            let mut blobs = tx.open_table(BLOBS)?;
            let mut present = std::collections::HashSet::new();
            for (model, path) in &on_disk {
                let key = model.to_string();
                present.insert(key.clone());
                if manifests.get(key.as_str())?.is_none() {
                    let last = mtime_secs(path).unwrap_or(0);
                    manifests.insert(key.as_str(), (last, 0, false))?;
                    new_models += 1;
                }
                let Ok(bytes) = std::fs::read(path) else {
                    continue;
                };
                let Ok(m) = Manifest::parse(&bytes) else {
                    continue;
                };
                for layer in m.blobs() {
                    let hex = layer.digest.hex();
                    if blobs.get(hex)?.is_none() {
                        let last = mtime_secs(&layout.blob_path(&layer.digest)).unwrap_or(0);
                        blobs.insert(hex, (last, 0, false))?;
                    }
                }
            }
            manifests.retain(|k, _| present.contains(k))?;
            let files: std::collections::HashSet<String> = std::fs::read_dir(layout.blobs_dir())
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| Digest::from_file_name(e.file_name().to_str()?))
                .map(|d| d.hex().to_string())
                .collect();
            blobs.retain(|k, _| files.contains(k))?;
        }
        tx.commit()?;
        Ok(new_models)
    }

    /// Every manifest entry, by canonical model name (pending touches included).
    pub fn manifests(&self) -> Result<HashMap<String, Entry>> {
        let mut out = HashMap::new();
        if let Ok(db) = self.db() {
            let tx = db.begin_read()?;
            let t = tx.open_table(MANIFESTS)?;
            for row in t.iter()? {
                let (k, v) = row?;
                out.insert(k.value().to_string(), Entry::from_record(v.value()));
            }
        }
        let p = self.pending.lock().unwrap();
        for k in &p.forget_manifests {
            out.remove(k);
        }
        for (k, e) in &p.manifests {
            let merged = out.get(k).map(|o| o.merge(*e)).unwrap_or(*e);
            out.insert(k.clone(), merged);
        }
        Ok(out)
    }

    /// Every tenant unit's entry, by key (pending touches included).
    pub fn units(&self) -> Result<HashMap<String, Entry>> {
        let mut out = HashMap::new();
        if let Ok(db) = self.db() {
            let tx = db.begin_read()?;
            // An index written before units existed has no such table until its first flush.
            if let Ok(t) = tx.open_table(UNITS) {
                for row in t.iter()? {
                    let (k, v) = row?;
                    out.insert(k.value().to_string(), Entry::from_record(v.value()));
                }
            }
        }
        let p = self.pending.lock().unwrap();
        for k in &p.forget_units {
            out.remove(k);
        }
        for (k, e) in &p.units {
            let merged = out.get(k).map(|o| o.merge(*e)).unwrap_or(*e);
            out.insert(k.clone(), merged);
        }
        Ok(out)
    }

    /// One blob's entry (pending touches included).
    pub fn blob(&self, digest: &Digest) -> Result<Option<Entry>> {
        let mut stored = None;
        if let Ok(db) = self.db() {
            let tx = db.begin_read()?;
            let t = tx.open_table(BLOBS)?;
            stored = t.get(digest.hex())?.map(|v| Entry::from_record(v.value()));
        }
        let p = self.pending.lock().unwrap();
        Ok(match (stored, p.blobs.get(digest.hex())) {
            (Some(s), Some(e)) => Some(s.merge(*e)),
            (s, e) => s.or(e.copied()),
        })
    }
}

fn is_locked(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<redb::DatabaseError>(),
        Some(redb::DatabaseError::DatabaseAlreadyOpen)
    )
}

/// Creates the tables on a new file; refuses a file written by a different schema.
fn check_schema(db: &Database) -> Result<()> {
    let tx = db.begin_write()?;
    {
        let mut meta = tx.open_table(META)?;
        let version = meta.get("schema")?.map(|v| v.value());
        match version {
            None => {
                meta.insert("schema", SCHEMA_VERSION)?;
            }
            Some(SCHEMA_VERSION) => {}
            Some(v) => {
                return Err(anyhow!(
                    "schema version {v}, this lancached writes {SCHEMA_VERSION}"
                ))
            }
        }
        tx.open_table(MANIFESTS)?;
        tx.open_table(BLOBS)?;
        tx.open_table(UNITS)?;
    }
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testutil::write_model;

    #[test]
    fn buffer_flush_reconcile_and_rebuild() {
        let tmp = tempfile::tempdir().unwrap();
        let l = Layout::new(tmp.path());
        l.create().unwrap();
        let a = write_model(&l, "a", &[b"one"]);
        let b = write_model(&l, "b", &[b"two"]);
        let idx = Index::new(&l);
        idx.touch_manifest(&a);
        idx.open().unwrap();
        assert_eq!(idx.reconcile(&l).unwrap(), 2);
        idx.record_fetched(&b);
        idx.touch_manifest(&b);
        idx.touch_blob(&Digest::of(b"two"));
        idx.flush().unwrap();
        let all = idx.manifests().unwrap();
        assert!(all[&b.to_string()].fetched && all[&b.to_string()].hits == 1);
        assert!(!all[&a.to_string()].fetched);
        assert_eq!(all[&a.to_string()].hits, 1, "touch before open kept");
        assert_eq!(idx.blob(&Digest::of(b"two")).unwrap().unwrap().hits, 1);
        drop(idx);

        // Reopen: entries survive.
        let idx = Index::new(&l);
        idx.open().unwrap();
        assert!(idx.manifests().unwrap()[&b.to_string()].fetched);
        drop(idx);

        // Corrupt: moved aside, rebuilt from the directory (everything local again).
        std::fs::write(l.state_dir().join(INDEX_FILE), b"garbage, not a database").unwrap();
        let idx = Index::new(&l);
        idx.open().unwrap();
        assert_eq!(idx.reconcile(&l).unwrap(), 2);
        assert!(!idx.manifests().unwrap()[&b.to_string()].fetched);
        let aside = std::fs::read_dir(l.state_dir())
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().contains(".corrupt-"));
        assert!(aside);

        // A manifest removed behind our back loses its entry.
        std::fs::remove_file(l.manifest_path(&a)).unwrap();
        idx.reconcile(&l).unwrap();
        assert!(!idx.manifests().unwrap().contains_key(&a.to_string()));
        std::fs::remove_file(l.blob_path(&Digest::of(b"one"))).unwrap();
        idx.reconcile(&l).unwrap();
        assert!(idx.blob(&Digest::of(b"one")).unwrap().is_none());
        assert!(idx.blob(&Digest::of(b"two")).unwrap().is_some());
        idx.forget_manifest(&b);
        assert!(idx.manifests().unwrap().is_empty());
        idx.flush().unwrap();
        assert!(idx.manifests().unwrap().is_empty());
    }

    #[test]
    fn touches_are_cheap_and_coalesce() {
        let tmp = tempfile::tempdir().unwrap();
        let l = Layout::new(tmp.path());
        let idx = Index::new(&l);
        let models: Vec<ModelRef> = (0..100)
            .map(|i| ModelRef::parse(&format!("m{i}:q4")).unwrap())
            .collect();
        let digests: Vec<Digest> = (0..100u32).map(|i| Digest::of(&i.to_be_bytes())).collect();
        let t = std::time::Instant::now();
        for i in 0..100_000 {
            idx.touch_manifest(&models[i % 100]);
            idx.touch_blob(&digests[i % 100]);
        }
        let took = t.elapsed();
        eprintln!("200,000 touches: {took:?}");
        // Generous for a debug build on a loaded machine; a release build does ~10x better.
        assert!(took < std::time::Duration::from_secs(2), "{took:?}");
        let p = idx.pending.lock().unwrap();
        assert_eq!((p.manifests.len(), p.blobs.len()), (100, 100));
        assert_eq!(p.manifests[&models[0].to_string()].hits, 1000);
    }
}
