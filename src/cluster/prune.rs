//! `lancachectl prune --cluster`: removes models from the shared store under the rules a local
//! prune keeps. A manifest goes when it was named, when upstream last confirmed it longer ago
//! than `--older-than` (every confirmation re-publishes it, so its object's time is when the
//! cluster last used it, to within `upstream.manifest_ttl`), or, oldest first, until the store's
//! blobs fit `--max-size`. A blob goes only when no kept manifest references it and no node
//! holds its fill lease; one that no manifest references at all only when it is also older
//! than the prune's age (or [`UNREFERENCED_GRACE`]), so a blob just uploaded whose manifest is
//! still on its way stays.
//!
//! Only the store is touched: every node's local copy is its own to evict or prune.

use futures_util::TryStreamExt;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

use super::Cluster;
use crate::store::manifest::Manifest;
use crate::store::prune::{PruneReport, Pruned, PrunedModel};
use crate::store::{Digest, ModelRef};

/// How old a blob no manifest references must be before a prune without `--older-than`
/// removes it.
pub const UNREFERENCED_GRACE: Duration = Duration::from_secs(3600);

/// What to remove from the store.
#[derive(Debug, Clone, Default)]
pub struct StorePrune {
    pub older_than: Option<Duration>,
    pub max_size: Option<u64>,
    pub models: Vec<ModelRef>,
    pub dry_run: bool,
}

/// One manifest in the store.
struct Listed {
    path: object_store::path::Path,
    what: Pruned,
    used: SystemTime,
    blobs: Vec<Digest>,
}

fn age(t: SystemTime) -> Duration {
    t.elapsed().unwrap_or_default()
}

#[derive(Debug, thiserror::Error)]
pub enum StorePruneError {
    #[error("{0} is not in the cluster store")]
    NotFound(String),
    #[error("cluster store: {0}")]
    Store(#[from] object_store::Error),
}

/// Runs the prune; `Err` names what failed (a model not in the store, the store itself).
pub async fn prune(c: &Cluster, p: &StorePrune) -> Result<PruneReport, StorePruneError> {
    let s3 = &c.store.s3;
    let list = |prefix: object_store::path::Path| async move {
        c.note(
            s3.list(Some(&prefix))
                .try_collect::<Vec<ObjectMeta>>()
                .await,
        )
    };
    let manifest_root = c.store.manifest("");
    let mut listed = Vec::new();
    for meta in list(manifest_root.clone()).await? {
        let rel: Vec<String> = meta
            .location
            .prefix_match(&manifest_root)
            .map(|parts| parts.map(|p| p.as_ref().to_string()).collect())
            .unwrap_or_default();
        let what = match rel.as_slice() {
            [host, ns, model, tag] => Pruned::Model(ModelRef {
                host: host.clone(),
                namespace: ns.clone(),
                model: model.clone(),
                tag: tag.clone(),
            }),
            [at, d] if at == "@digests" => Pruned::Unit(d.clone()),
            _ => continue,
        };
        let bytes = c.note(s3.get(&meta.location).await)?.bytes().await?;
        // A manifest that does not parse references nothing we can keep for it; it is still
        // listed, so that a prune by age removes it.
        let blobs = Manifest::parse(&bytes)
            .map(|m| m.blobs().map(|l| l.digest.clone()).collect())
            .unwrap_or_default();
        listed.push(Listed {
            path: meta.location,
            what,
            used: meta.last_modified.into(),
            blobs,
        });
    }
    for m in &p.models {
        if !listed.iter().any(|l| l.what == Pruned::Model(m.clone())) {
            return Err(StorePruneError::NotFound(m.short_name()));
        }
    }
    let mut blobs: HashMap<Digest, (u64, SystemTime)> = HashMap::new();
    for meta in list(c.store.blobs_prefix()).await? {
        if let Some(d) = meta.location.filename().and_then(Digest::from_file_name) {
            blobs.insert(d, (meta.size, meta.last_modified.into()));
        }
    }
    let filling: HashSet<Digest> = list(c.store.leases_prefix())
        .await?
        .iter()
        .filter_map(|m| m.location.filename().and_then(Digest::from_file_name))
        .collect();

    // Oldest first: the order `--max-size` removes in, and the report's.
    listed.sort_by_key(|l| l.used);
    let mut gone: Vec<bool> = listed
        .iter()
        .map(|l| {
            let named = matches!(&l.what, Pruned::Model(m) if p.models.contains(m));
            named || p.older_than.is_some_and(|d| age(l.used) > d)
        })
        .collect();
    let grace = p.older_than.unwrap_or(UNREFERENCED_GRACE);
    let doomed = |gone: &[bool]| -> HashSet<Digest> {
        let refs = |removed: bool| -> HashSet<&Digest> {
            listed
                .iter()
                .zip(gone)
                .filter(|(_, g)| **g == removed)
                .flat_map(|(l, _)| &l.blobs)
                .collect()
        };
        let (kept, dropped) = (refs(false), refs(true));
        blobs
            .iter()
            .filter(|(d, (_, t))| {
                !kept.contains(d)
                    && !filling.contains(*d)
                    && (dropped.contains(d) || age(*t) > grace)
            })
            .map(|(d, _)| d.clone())
            .collect()
    };
    if let Some(max) = p.max_size {
        let total: u64 = blobs.values().map(|(s, _)| s).sum();
        let after = |gone: &[bool]| total - doomed(gone).iter().map(|d| blobs[d].0).sum::<u64>();
        let mut i = 0;
        while after(&gone) > max && i < listed.len() {
            gone[i] = true;
            i += 1;
        }
    }
    let doomed = doomed(&gone);

    // Each removed blob's bytes count for the first removed manifest that referenced it.
    let mut counted: HashSet<&Digest> = HashSet::new();
    let mut report = PruneReport {
        dry_run: p.dry_run,
        removed: Vec::new(),
        blobs_removed: doomed.len() as u64,
        bytes_freed: doomed.iter().map(|d| blobs[d].0).sum(),
        partial_fills_removed: 0,
    };
    for (l, _) in listed.iter().zip(&gone).filter(|(_, g)| **g) {
        let bytes = l
            .blobs
            .iter()
            .filter(|d| doomed.contains(*d) && counted.insert(*d))
            .map(|d| blobs[d].0)
            .sum();
        report.removed.push(PrunedModel {
            what: l.what.clone(),
            bytes,
            last_used: Some(l.used),
        });
    }
    if p.dry_run {
        return Ok(report);
    }
    // Manifests first: a client must never find a manifest whose blobs are gone.
    for (l, _) in listed.iter().zip(&gone).filter(|(_, g)| **g) {
        delete(c, &l.path).await?;
    }
    for d in &doomed {
        delete(c, &c.store.blob(d)).await?;
    }
    Ok(report)
}

async fn delete(c: &Cluster, path: &object_store::path::Path) -> object_store::Result<()> {
    match c.note(c.store.s3.delete(path).await) {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}
