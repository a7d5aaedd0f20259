//! Removing models from the cache precisely: `lancachectl prune` and automatic eviction both end
//! here. A run removes the chosen manifests first, then the blobs that no remaining manifest
//! references; the directory is read again between the two steps, so a manifest written in the
//! meantime (a concurrent pull) protects its blobs.
//!
//! Safety rules, whatever the criteria:
//! - a blob referenced by a kept manifest is never removed (blobs are shared between models);
//! - a pinned blob (being filled, or streamed to a client) is never removed; a model with a
//!   pinned blob is not chosen automatically, and when its manifest goes anyway (named
//!   explicitly) its unreferenced blobs are deferred until they are unpinned;
//! - a model the daemon did not fetch (found in the directory: a user's own Ollama models) is
//!   never removed unless `include_local` says so: losing a user's models is data loss.
//!
//! Criteria combine as a union: `--model` names, models unused for `--older-than`, then least
//! recently used models until the cache is under `--max-size` (and, for eviction, until enough
//! bytes are free). Fills in progress (`.lancached/partial/`) untouched for longer than the stale
//! threshold and not pinned are removed too.
//!
//! Tenant units ([`super::tenant`]: the hub cache's snapshots) are candidates beside the
//! models, in the same order and under the same rules: a unit's blobs in `blobs/` count as
//! references, a busy unit is never chosen, a unit the index does not know as fetched is
//! local. A chosen unit is removed by its tenant (its own files and its links to `blobs/`)
//! before the unreferenced blobs go, so no link is left holding a removed blob's bytes.
//!
//! A run answers with a [`PruneReport`] of the store's own; the control layer maps it to the
//! protocol.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::index::{now_secs, Index};
use super::layout::Layout;
use super::manifest::Manifest;
use super::names::{Digest, ModelRef};
use super::pins::Pins;
use super::tenant::Tenant;
use super::usage;

/// A fill in progress untouched for this long is abandoned when no age is given.
pub const STALE_PARTIAL_SECS: u64 = 24 * 3600;

#[derive(Debug, Clone, Default)]
pub struct Criteria {
    /// Models not used for this many seconds.
    pub older_than: Option<u64>,
    /// Least recently used models until usage is at most this.
    pub max_size: Option<u64>,
    /// Least recently used models until at least this many bytes are freed (eviction).
    pub free_bytes: Option<u64>,
    /// Exactly these models.
    pub models: Vec<ModelRef>,
    /// Exactly these tenant units (by key).
    pub units: Vec<String>,
    pub include_local: bool,
    pub dry_run: bool,
    /// Fills in progress untouched for this many seconds are removed.
    pub partial_older_than: u64,
}

/// What one prune removed (or, dry, would remove).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PruneReport {
    pub dry_run: bool,
    /// The models chosen, in the order they were chosen.
    pub removed: Vec<PrunedModel>,
    pub blobs_removed: u64,
    /// Blobs and stale partial fills together.
    pub bytes_freed: u64,
    pub partial_fills_removed: u64,
}

impl PruneReport {
    /// The removed models' short names, for log lines.
    pub fn names(&self) -> Vec<String> {
        self.removed.iter().map(|m| m.what.name()).collect()
    }
}

/// What a prune removed: a model, or a tenant unit (by the name its tenant gives it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pruned {
    Model(ModelRef),
    Unit(String),
}

impl Pruned {
    /// The form the user typed and `ollama list` shows, or the unit's name.
    pub fn name(&self) -> String {
        match self {
            Pruned::Model(m) => m.short_name(),
            Pruned::Unit(n) => n.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrunedModel {
    pub what: Pruned,
    /// The bytes of the blobs that went with this model (shared blobs count for the first
    /// chosen model that held their last reference).
    pub bytes: u64,
    pub last_used: Option<SystemTime>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PruneError {
    /// A named model is not in the cache.
    NotFound(String),
    /// A named model may not be removed (local without `include_local`, or in use).
    Refused(String),
}

impl std::fmt::Display for PruneError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PruneError::NotFound(m) | PruneError::Refused(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for PruneError {}

/// Blobs that lost their last manifest while pinned: removed once nobody uses them.
#[derive(Default)]
pub struct Deferred(Mutex<HashSet<Digest>>);

impl Deferred {
    pub fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn insert(&self, d: Digest) {
        self.0.lock().unwrap().insert(d);
    }
    fn take(&self) -> HashSet<Digest> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

/// What a prune needs from the daemon.
pub struct Store<'a> {
    pub layout: &'a Layout,
    pub index: &'a Index,
    pub pins: &'a Pins,
    pub deferred: &'a Deferred,
    /// Content beside the models (the hub cache), planned over with them.
    pub tenants: &'a [Arc<dyn Tenant>],
}

/// A candidate: a model (its manifest file) or a tenant's unit.
enum Item {
    Model {
        model: ModelRef,
        path: PathBuf,
    },
    Unit {
        tenant: usize,
        key: String,
        name: String,
        own_bytes: u64,
        busy: bool,
    },
}

struct Cached {
    item: Item,
    /// Distinct blobs; `None` when the manifest could not be parsed.
    blobs: Option<Vec<Digest>>,
    last_used: Option<u64>,
    fetched: bool,
}

impl Cached {
    fn name(&self) -> String {
        match &self.item {
            Item::Model { model, .. } => model.short_name(),
            Item::Unit { name, .. } => name.clone(),
        }
    }
}

fn mtime_secs(path: &Path) -> Option<u64> {
    let m = std::fs::metadata(path).ok()?.modified().ok()?;
    Some(m.duration_since(UNIX_EPOCH).ok()?.as_secs())
}

fn manifest_blobs(path: &Path) -> Option<Vec<Digest>> {
    let bytes = std::fs::read(path).ok()?;
    let m = Manifest::parse(&bytes).ok()?;
    let mut seen = HashSet::new();
    Some(
        m.blobs()
            .filter(|l| seen.insert(l.digest.clone()))
            .map(|l| l.digest.clone())
            .collect(),
    )
}

/// Every blob some manifest in the directory, or some tenant unit, references, as of now.
pub fn referenced_blobs(layout: &Layout, tenants: &[Arc<dyn Tenant>]) -> HashSet<Digest> {
    let mut out: HashSet<Digest> = layout
        .list_manifests()
        .iter()
        .filter_map(|(_, p)| manifest_blobs(p))
        .flatten()
        .collect();
    for t in tenants {
        for u in t.units() {
            out.extend(u.blobs);
        }
    }
    out
}

/// A fill in progress: its files in `partial/` (data, slice map, ...), grouped by digest.
struct Partial {
    digest: Option<Digest>,
    files: Vec<PathBuf>,
    bytes: u64,
    newest: u64,
}

fn partials(layout: &Layout) -> Vec<Partial> {
    let mut groups: BTreeMap<String, Partial> = BTreeMap::new();
    // A `.lancached` or `partial` that is a symlink leads out of the cache: nothing found
    // through it is ours to delete.
    let real_dir = |p: &Path| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir());
    if !real_dir(&layout.state_dir()) || !real_dir(&layout.partial_dir()) {
        tracing::warn!(
            "{} is not a real directory inside the cache (a symlink?): stale fills there are left alone",
            layout.partial_dir().display()
        );
        return vec![];
    }
    for e in std::fs::read_dir(layout.partial_dir())
        .into_iter()
        .flatten()
        .flatten()
    {
        let Ok(meta) = e.metadata() else { continue };
        if !meta.is_file() {
            continue;
        }
        let name = e.file_name().to_string_lossy().to_string();
        // `sha256-<hex>` followed by anything (".data", ".map", "-partial"...).
        let digest = name.get(..71).and_then(Digest::from_file_name);
        let key = digest
            .as_ref()
            .map(|d| d.hex().to_string())
            .unwrap_or_else(|| name.clone());
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let g = groups.entry(key).or_insert_with(|| Partial {
            digest,
            files: vec![],
            bytes: 0,
            newest: 0,
        });
        g.files.push(e.path());
        g.bytes += meta.blocks() * 512;
        g.newest = g.newest.max(mtime);
    }
    groups.into_values().collect()
}

/// Removes blobs deferred earlier that are now unpinned and still unreferenced. Returns
/// (blobs, bytes) removed.
pub fn retry_deferred(store: &Store) -> (u64, u64) {
    if store.deferred.is_empty() {
        return (0, 0);
    }
    let still = referenced_blobs(store.layout, store.tenants);
    let mut removed = (0, 0);
    for d in store.deferred.take() {
        if still.contains(&d) {
            continue;
        }
        if store.pins.is_pinned(&d) {
            store.deferred.insert(d);
            continue;
        }
        if let Some(bytes) = remove_blob(store, &d) {
            removed.0 += 1;
            removed.1 += bytes;
        }
    }
    removed
}

fn remove_blob(store: &Store, d: &Digest) -> Option<u64> {
    let path = store.layout.blob_path(d);
    let len = std::fs::symlink_metadata(&path).ok()?.len();
    match std::fs::remove_file(&path) {
        Ok(()) => {
            store.index.forget_blob(d);
            Some(len)
        }
        Err(e) => {
            tracing::warn!(blob = %d, "cannot remove {}: {e}", path.display());
            None
        }
    }
}

/// Removes the manifest file and the directories it leaves empty (up to `manifests/`).
fn remove_manifest(layout: &Layout, path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let top = layout.manifests_dir();
    let mut dir = path.parent();
    while let Some(d) = dir {
        if d == top || !d.starts_with(&top) || std::fs::remove_dir(d).is_err() {
            break;
        }
        dir = d.parent();
    }
    Ok(())
}

/// Plans and (unless `dry_run`) carries out one prune.
pub fn prune(store: &Store, c: &Criteria) -> Result<PruneReport, PruneError> {
    if let Err(e) = store.index.flush() {
        tracing::debug!("index flush before prune: {e:#}");
    }
    let entries = store.index.manifests().unwrap_or_default();
    let unit_entries = store.index.units().unwrap_or_default();
    let now = now_secs();

    let mut cached = Vec::new();
    let mut refs: HashMap<Digest, usize> = HashMap::new();
    let mut sizes: HashMap<Digest, u64> = HashMap::new();
    for (model, path) in store.layout.list_manifests() {
        let blobs = manifest_blobs(&path);
        let entry = entries.get(&model.to_string());
        let last_used = entry
            .map(|e| e.last_access)
            .filter(|&t| t > 0)
            .or_else(|| mtime_secs(&path));
        cached.push(Cached {
            item: Item::Model { model, path },
            blobs,
            last_used,
            fetched: entry.is_some_and(|e| e.fetched),
        });
    }
    for (ti, t) in store.tenants.iter().enumerate() {
        for u in t.units() {
            let entry = unit_entries.get(&u.key);
            let last_used = entry
                .map(|e| e.last_access)
                .filter(|&t| t > 0)
                .or(u.modified);
            let mut seen = HashSet::new();
            let blobs = u.blobs.into_iter().filter(|d| seen.insert(d.clone()));
            cached.push(Cached {
                item: Item::Unit {
                    tenant: ti,
                    key: u.key,
                    name: u.name,
                    own_bytes: u.own_bytes,
                    busy: u.busy,
                },
                blobs: Some(blobs.collect()),
                last_used,
                fetched: entry.is_some_and(|e| e.fetched),
            });
        }
    }
    for m in &cached {
        for d in m.blobs.iter().flatten() {
            *refs.entry(d.clone()).or_default() += 1;
            sizes.entry(d.clone()).or_insert_with(|| {
                std::fs::metadata(store.layout.blob_path(d))
                    .map(|m| m.len())
                    .unwrap_or(0)
            });
        }
    }
    let in_use = |m: &Cached| {
        matches!(m.item, Item::Unit { busy: true, .. })
            || m.blobs.iter().flatten().any(|d| store.pins.is_pinned(d))
    };

    // The plan: which models go, which blobs go with them (attributed to the first chosen model
    // that held their last reference), which blobs must wait for their pins.
    let mut chosen: Vec<usize> = Vec::new();
    let mut chosen_set = HashSet::new();
    let mut remaining = refs.clone();
    let mut doomed: Vec<(Digest, usize)> = Vec::new();
    let mut wait_for_pin: Vec<Digest> = Vec::new();
    let mut freed = 0u64;
    let mut choose =
        |i: usize, chosen: &mut Vec<usize>, doomed: &mut Vec<(Digest, usize)>, freed: &mut u64| {
            if !chosen_set.insert(i) {
                return;
            }
            chosen.push(i);
            if let Item::Unit { own_bytes, .. } = &cached[i].item {
                *freed += own_bytes;
            }
            for d in cached[i].blobs.iter().flatten() {
                let r = remaining.get_mut(d).expect("counted above");
                *r -= 1;
                if *r == 0 {
                    if store.pins.is_pinned(d) {
                        wait_for_pin.push(d.clone());
                    } else {
                        *freed += sizes[d];
                        doomed.push((d.clone(), i));
                    }
                }
            }
        };

    let models = c.models.iter().map(|want| {
        let i = cached
            .iter()
            .position(|m| matches!(&m.item, Item::Model { model, .. } if model == want));
        (i, want.short_name())
    });
    let units = c.units.iter().map(|want| {
        let i = cached
            .iter()
            .position(|m| matches!(&m.item, Item::Unit { key, .. } if key == want));
        (i, want.clone())
    });
    let wanted: Vec<_> = models.chain(units).collect();
    for (i, shown) in wanted {
        let Some(i) = i else {
            return Err(PruneError::NotFound(format!("{shown} is not in the cache")));
        };
        let shown = cached[i].name();
        if !cached[i].fetched && !c.include_local {
            return Err(PruneError::Refused(format!(
                "{shown} was not fetched by lancached (it was found in the cache directory, e.g. a user's own Ollama model or hub cache); add --include-local to remove it anyway"
            )));
        }
        if in_use(&cached[i]) {
            return Err(PruneError::Refused(format!(
                "{shown} is in use (a client is pulling it or a fill is running); try again when it is done"
            )));
        }
        choose(i, &mut chosen, &mut doomed, &mut freed);
    }

    // Candidates for the automatic criteria, least recently used first.
    let mut lru: Vec<usize> = (0..cached.len())
        .filter(|&i| {
            let m = &cached[i];
            m.blobs.is_some() && (m.fetched || c.include_local) && !in_use(m)
        })
        .collect();
    lru.sort_by(|&a, &b| {
        (cached[a].last_used.unwrap_or(0), cached[a].name())
            .cmp(&(cached[b].last_used.unwrap_or(0), cached[b].name()))
    });

    if let Some(age) = c.older_than {
        let cutoff = now.saturating_sub(age);
        for &i in &lru {
            if cached[i].last_used.unwrap_or(0) < cutoff {
                choose(i, &mut chosen, &mut doomed, &mut freed);
            }
        }
    }

    // Stale fills in progress.
    let stale: Vec<Partial> = partials(store.layout)
        .into_iter()
        .filter(|p| {
            p.newest < now.saturating_sub(c.partial_older_than)
                && !p.digest.as_ref().is_some_and(|d| store.pins.is_pinned(d))
        })
        .collect();
    let partial_bytes: u64 = stale.iter().map(|p| p.bytes).sum();

    if c.max_size.is_some() || c.free_bytes.is_some() {
        let usage = usage::measure_with(store.layout, store.tenants).bytes;
        for &i in &lru {
            let gone = freed + partial_bytes;
            let size_ok = c.max_size.is_none_or(|m| usage.saturating_sub(gone) <= m);
            let free_ok = c.free_bytes.is_none_or(|f| gone >= f);
            if size_ok && free_ok {
                break;
            }
            choose(i, &mut chosen, &mut doomed, &mut freed);
        }
    }

    let mut per_model: HashMap<usize, u64> = HashMap::new();
    let mut report = PruneReport {
        dry_run: c.dry_run,
        removed: vec![],
        blobs_removed: 0,
        bytes_freed: 0,
        partial_fills_removed: 0,
    };

    if c.dry_run {
        for (d, i) in &doomed {
            *per_model.entry(*i).or_default() += sizes[d];
        }
        for &i in &chosen {
            if let Item::Unit { own_bytes, .. } = &cached[i].item {
                *per_model.entry(i).or_default() += own_bytes;
            }
        }
        report.blobs_removed = doomed.len() as u64;
        report.bytes_freed = freed + partial_bytes;
        report.partial_fills_removed = stale.len() as u64;
    } else {
        let mut removed_models = Vec::new();
        for &i in &chosen {
            match &cached[i].item {
                Item::Model { model, path } => match remove_manifest(store.layout, path) {
                    Ok(()) => {
                        store.index.forget_manifest(model);
                        removed_models.push(i);
                    }
                    Err(e) => {
                        tracing::warn!(%model, "cannot remove manifest {}: {e}", path.display())
                    }
                },
                Item::Unit {
                    tenant, key, name, ..
                } => match store.tenants[*tenant].remove(key) {
                    Ok(bytes) => {
                        store.index.forget_unit(key);
                        *per_model.entry(i).or_default() += bytes;
                        report.bytes_freed += bytes;
                        removed_models.push(i);
                    }
                    Err(e) => tracing::warn!(unit = %name, "cannot remove {name}: {e}"),
                },
            }
        }
        chosen = removed_models;
        let chosen_set: HashSet<usize> = chosen.iter().copied().collect();
        let still = referenced_blobs(store.layout, store.tenants);
        for (d, i) in &doomed {
            if !chosen_set.contains(i) || still.contains(d) {
                continue;
            }
            if store.pins.is_pinned(d) {
                store.deferred.insert(d.clone());
                continue;
            }
            if let Some(bytes) = remove_blob(store, d) {
                *per_model.entry(*i).or_default() += bytes;
                report.blobs_removed += 1;
                report.bytes_freed += bytes;
            }
        }
        for d in wait_for_pin {
            if !still.contains(&d) {
                store.deferred.insert(d);
            }
        }
        for p in &stale {
            let mut ok = true;
            for f in &p.files {
                if let Err(e) = std::fs::remove_file(f) {
                    ok = false;
                    tracing::warn!("cannot remove stale fill {}: {e}", f.display());
                }
            }
            if ok {
                report.partial_fills_removed += 1;
                report.bytes_freed += p.bytes;
            }
        }
        let (blobs, bytes) = retry_deferred(store);
        report.blobs_removed += blobs;
        report.bytes_freed += bytes;
        if let Err(e) = store.index.flush() {
            tracing::debug!("index flush after prune: {e:#}");
        }
    }
    report.removed = chosen
        .iter()
        .map(|&i| PrunedModel {
            what: match &cached[i].item {
                Item::Model { model, .. } => Pruned::Model(model.clone()),
                Item::Unit { name, .. } => Pruned::Unit(name.clone()),
            },
            bytes: per_model.get(&i).copied().unwrap_or(0),
            last_used: cached[i]
                .last_used
                .map(|t| UNIX_EPOCH + Duration::from_secs(t)),
        })
        .collect();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testutil::write_model;

    struct Fixture {
        _tmp: tempfile::TempDir,
        layout: Layout,
        index: Index,
        pins: Pins,
        deferred: Deferred,
    }

    impl Fixture {
        fn new() -> Fixture {
            let tmp = tempfile::tempdir().unwrap();
            let layout = Layout::new(tmp.path());
            layout.create().unwrap();
            let index = Index::new(&layout);
            index.open().unwrap();
            Fixture {
                _tmp: tmp,
                layout,
                index,
                pins: Pins::default(),
                deferred: Deferred::default(),
            }
        }
        fn store(&self) -> Store<'_> {
            Store {
                layout: &self.layout,
                index: &self.index,
                pins: &self.pins,
                deferred: &self.deferred,
                tenants: &[],
            }
        }
        fn fetched(&self, name: &str, blobs: &[&[u8]]) -> ModelRef {
            let m = write_model(&self.layout, name, blobs);
            self.index.record_fetched(&m);
            m
        }
        fn exists(&self, b: &[u8]) -> bool {
            self.layout.blob_path(&Digest::of(b)).exists()
        }
    }

    #[test]
    fn shared_blob_survives_and_dry_run_changes_nothing() {
        let f = Fixture::new();
        let shared = vec![7u8; 5000];
        let a = f.fetched("a", &[&shared, b"only-a"]);
        let b = f.fetched("b", &[&shared, b"only-b"]);
        let crit = Criteria {
            models: vec![a.clone()],
            dry_run: true,
            partial_older_than: STALE_PARTIAL_SECS,
            ..Default::default()
        };
        let dry = prune(&f.store(), &crit).unwrap();
        assert_eq!(dry.removed.len(), 1);
        assert_eq!(dry.blobs_removed, 2, "only-a and a's config");
        assert!(f.layout.manifest_path(&a).exists() && f.exists(b"only-a"));
        let real = prune(
            &f.store(),
            &Criteria {
                dry_run: false,
                ..crit
            },
        )
        .unwrap();
        assert_eq!(real.blobs_removed, dry.blobs_removed);
        assert_eq!(real.bytes_freed, dry.bytes_freed);
        assert_eq!(real.removed, dry.removed);
        assert!(!f.layout.manifest_path(&a).exists());
        assert!(!f.exists(b"only-a"));
        assert!(f.exists(&shared) && f.exists(b"only-b"));
        assert!(f.layout.manifest_path(&b).exists());
        // The empty model directory went with the manifest.
        assert!(!f.layout.manifest_path(&a).parent().unwrap().exists());
    }

    #[test]
    fn local_models_and_pins_are_protected() {
        let f = Fixture::new();
        let local = write_model(&f.layout, "mine", &[b"users-own"]);
        let busy = f.fetched("busy", &[b"streaming"]);
        let crit = Criteria {
            older_than: Some(0),
            max_size: Some(0),
            partial_older_than: STALE_PARTIAL_SECS,
            ..Default::default()
        };
        let pin = f.pins.pin(&Digest::of(b"streaming"));
        // Everything is "older than 0 s" only once a second has passed.
        let r = prune(&f.store(), &crit).unwrap();
        assert!(r.removed.is_empty(), "{r:?}");
        assert!(f.exists(b"users-own") && f.exists(b"streaming"));
        let err = prune(
            &f.store(),
            &Criteria {
                models: vec![local.clone()],
                ..crit.clone()
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("--include-local"), "{err}");
        let err = prune(
            &f.store(),
            &Criteria {
                models: vec![busy.clone()],
                ..crit.clone()
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("in use"), "{err}");
        drop(pin);
        let r = prune(&f.store(), &crit).unwrap();
        assert_eq!(r.removed.len(), 1);
        assert!(!f.exists(b"streaming") && f.exists(b"users-own"));
        let r = prune(
            &f.store(),
            &Criteria {
                include_local: true,
                ..crit
            },
        )
        .unwrap();
        assert_eq!(r.removed.len(), 1);
        assert!(!f.exists(b"users-own"));
        let nf = prune(
            &f.store(),
            &Criteria {
                models: vec![local],
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(matches!(nf, PruneError::NotFound(_)));
    }

    #[test]
    fn max_size_evicts_least_recently_used_first() {
        let f = Fixture::new();
        let old = f.fetched("old", &[&[1u8; 10_000]]);
        let new = f.fetched("new", &[&[2u8; 10_000]]);
        f.index.flush().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1100));
        f.index.touch_manifest(&new);
        let r = prune(
            &f.store(),
            &Criteria {
                max_size: Some(15_000),
                partial_older_than: STALE_PARTIAL_SECS,
                ..Default::default()
            },
        )
        .unwrap();
        let names: Vec<_> = r.removed.iter().map(|m| m.what.name()).collect();
        assert_eq!(names, ["old:latest"]);
        assert!(!f.layout.manifest_path(&old).exists() && f.layout.manifest_path(&new).exists());
    }

    #[test]
    fn stale_partials_go_unless_pinned() {
        let f = Fixture::new();
        let d1 = Digest::of(b"p1");
        let d2 = Digest::of(b"p2");
        for d in [&d1, &d2] {
            std::fs::write(f.layout.partial_dir().join(d.file_name()), b"x").unwrap();
            std::fs::write(
                f.layout
                    .partial_dir()
                    .join(format!("{}.map", d.file_name())),
                b"m",
            )
            .unwrap();
        }
        let _pin = f.pins.pin(&d2);
        let r = prune(
            &f.store(),
            &Criteria {
                older_than: Some(0),
                partial_older_than: 0,
                ..Default::default()
            },
        )
        .unwrap();
        // Not older than "now - 0" within the same second: nothing yet.
        let r = if r.partial_fills_removed == 0 {
            std::thread::sleep(std::time::Duration::from_millis(1100));
            prune(
                &f.store(),
                &Criteria {
                    older_than: Some(0),
                    partial_older_than: 0,
                    ..Default::default()
                },
            )
            .unwrap()
        } else {
            r
        };
        assert_eq!(r.partial_fills_removed, 1);
        assert!(!f.layout.partial_dir().join(d1.file_name()).exists());
        assert!(f.layout.partial_dir().join(d2.file_name()).exists());
    }
}
