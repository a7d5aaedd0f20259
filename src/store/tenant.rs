//! Content in the cache that is not an Ollama model (the hub cache's snapshots): prune and
//! eviction plan over its units beside the models, in one least-recently-used order, knowing
//! them only through this trait. The store never learns what a unit is.
//!
//! A unit may reference published blobs in `blobs/` (shared with models and other units:
//! the store removes such a blob only when nothing references it any more, exactly as for
//! models) and may hold bytes of its own elsewhere (removed with the unit by the tenant).
//! Usage and last use are kept in the access index under the unit's key.

use super::names::Digest;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unit {
    /// Unique among all units, stable across restarts: the access index's key for it.
    pub key: String,
    /// How reports and logs name it.
    pub name: String,
    /// Published blobs of `blobs/` it needs (their removal is the store's).
    pub blobs: Vec<Digest>,
    /// Bytes only this unit holds outside `blobs/`, freed when it goes.
    pub own_bytes: u64,
    /// When it was last written, seconds since the epoch: its last use when the index has
    /// no entry for it.
    pub modified: Option<u64>,
    /// Something of it is being filled or written now: never removed, never chosen.
    pub busy: bool,
}

pub trait Tenant: Send + Sync {
    /// Every unit, as of now (read from disk).
    fn units(&self) -> Vec<Unit>;

    /// Removes the unit's own files and its links to `blobs/` (so that once the store
    /// removes an unreferenced blob, no other link keeps its bytes on disk). Returns the own
    /// bytes freed.
    fn remove(&self, key: &str) -> std::io::Result<u64>;

    /// Bytes the tenant holds outside `blobs/` (not links of a blob there), for usage.
    fn own_bytes(&self) -> u64;
}
