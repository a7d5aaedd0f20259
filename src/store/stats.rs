//! The cache's counters: manifest and blob hits and misses, bytes served from the cache and
//! fetched from upstream, fills and their failures by kind, overall and per registry. The proxy
//! and the fill engine bump them; `lancachectl stats` and `/cache/stats` read a snapshot. The
//! snapshot is the store's own type: the control layer maps it to the protocol, so the wire
//! format can change without the store knowing.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use super::fill::FillSnapshot;

#[derive(Default)]
pub struct CacheCounters {
    pub manifest_hits: AtomicU64,
    pub manifest_misses: AtomicU64,
    pub manifest_revalidations: AtomicU64,
    pub manifest_offline_serves: AtomicU64,
    pub blob_hits: AtomicU64,
    pub blob_misses: AtomicU64,
    pub bytes_from_cache: AtomicU64,
    pub bytes_from_upstream: AtomicU64,
    pub fills_completed: AtomicU64,
    pub fills_failed: AtomicU64,
    failures: Mutex<BTreeMap<String, u64>>,
    per_registry: Mutex<BTreeMap<String, RegistryCounts>>,
}

/// One registry's share of the counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistryCounts {
    pub manifest_hits: u64,
    pub manifest_misses: u64,
    pub blob_hits: u64,
    pub blob_misses: u64,
    pub bytes_from_cache: u64,
    pub bytes_from_upstream: u64,
}

/// The counters at one moment ([`CacheCounters::snapshot`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    pub manifest_hits: u64,
    pub manifest_misses: u64,
    pub manifest_revalidations: u64,
    pub manifest_offline_serves: u64,
    pub blob_hits: u64,
    pub blob_misses: u64,
    pub bytes_from_cache: u64,
    pub bytes_from_upstream: u64,
    pub fills_completed: u64,
    pub fills_failed: u64,
    /// Failures by kind ("digest_mismatch", "upstream_status", "stall", "disk_full", ...).
    pub failures: BTreeMap<String, u64>,
    /// By registry host.
    pub per_registry: BTreeMap<String, RegistryCounts>,
}

/// The cache as `stats` shows it: the counters, what the directory holds, and the fills in
/// flight. Put together by whoever holds the counters and the fills (the proxy).
#[derive(Default)]
pub struct CacheSnapshot {
    pub counts: Counts,
    /// Bytes of published blobs.
    pub usage_bytes: u64,
    /// `[cache] max_size`.
    pub max_size: u64,
    pub models: u64,
    pub blobs: u64,
    /// Models evicted since start.
    pub evictions: u64,
    pub fills: Vec<FillSnapshot>,
}

/// Which per-registry counter an event bumps.
#[derive(Clone, Copy, Debug)]
pub enum Event {
    ManifestHit,
    ManifestMiss,
    BlobHit,
    BlobMiss,
    BytesFromCache(u64),
    BytesFromUpstream(u64),
}

impl CacheCounters {
    /// Counts one event, overall and for `registry`.
    pub fn count(&self, registry: &str, event: Event) {
        let add = |a: &AtomicU64, n: u64| {
            a.fetch_add(n, Ordering::Relaxed);
        };
        match event {
            Event::ManifestHit => add(&self.manifest_hits, 1),
            Event::ManifestMiss => add(&self.manifest_misses, 1),
            Event::BlobHit => add(&self.blob_hits, 1),
            Event::BlobMiss => add(&self.blob_misses, 1),
            Event::BytesFromCache(n) => add(&self.bytes_from_cache, n),
            Event::BytesFromUpstream(n) => add(&self.bytes_from_upstream, n),
        }
        let mut per = self.per_registry.lock().unwrap();
        let r = per.entry(registry.to_string()).or_default();
        match event {
            Event::ManifestHit => r.manifest_hits += 1,
            Event::ManifestMiss => r.manifest_misses += 1,
            Event::BlobHit => r.blob_hits += 1,
            Event::BlobMiss => r.blob_misses += 1,
            Event::BytesFromCache(n) => r.bytes_from_cache += n,
            Event::BytesFromUpstream(n) => r.bytes_from_upstream += n,
        }
    }

    pub fn bump(a: &AtomicU64) {
        a.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a failure of some kind ("digest_mismatch", "upstream_status", "stall", ...).
    pub fn failure(&self, kind: &str) {
        *self
            .failures
            .lock()
            .unwrap()
            .entry(kind.to_string())
            .or_insert(0) += 1;
    }

    /// The counters now (fills and disk usage are added by the caller, which knows them).
    pub fn snapshot(&self) -> Counts {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Counts {
            manifest_hits: get(&self.manifest_hits),
            manifest_misses: get(&self.manifest_misses),
            manifest_revalidations: get(&self.manifest_revalidations),
            manifest_offline_serves: get(&self.manifest_offline_serves),
            blob_hits: get(&self.blob_hits),
            blob_misses: get(&self.blob_misses),
            bytes_from_cache: get(&self.bytes_from_cache),
            bytes_from_upstream: get(&self.bytes_from_upstream),
            fills_completed: get(&self.fills_completed),
            fills_failed: get(&self.fills_failed),
            failures: self.failures.lock().unwrap().clone(),
            per_registry: self.per_registry.lock().unwrap().clone(),
        }
    }
}
