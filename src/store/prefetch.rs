//! Filling models into the cache ahead of time (`lancachectl prefetch`). The fill engine does
//! the work; this is the interface the control socket drives it through, so the lifecycle code
//! does not depend on how fills are run. The daemon wires an implementation in with
//! [`crate::state::State::set_prefetcher`] (the proxy's `ProxyPrefetcher`, installed at daemon
//! start); without one, prefetch answers "unsupported".
//!
//! A prefetch is resumable by construction: starting a model whose blobs are partly cached
//! fills only what is missing, and a fill keeps running when the client that asked for it goes
//! away (Ctrl-C in `lancachectl prefetch` only stops watching).
//!
//! Progress is reported as [`BlobProgress`], the store's own type; the control layer maps it to
//! the protocol's `FillProgress`.

use futures_util::future::BoxFuture;

use super::fill::{FillSnapshot, FillStage, Origin};
use super::names::{Digest, ModelRef};

/// What a blob's progress is reported under.
#[derive(Debug, Clone)]
pub enum Owner {
    /// A model that was asked for by name.
    Model(ModelRef),
    /// The repository a fill came from: all a fill in flight knows of its model, since one
    /// blob may belong to several tags.
    Repository(Origin),
}

/// One blob of a prefetch, or one fill in flight.
#[derive(Debug, Clone)]
pub struct BlobProgress {
    pub owner: Owner,
    pub digest: Digest,
    pub size: u64,
    pub landed: u64,
    /// Responses reading the fill as it lands.
    pub waiters: u32,
    pub state: FillStage,
}

impl BlobProgress {
    /// A fill in flight, reported under `owner`.
    pub fn of_fill(f: &FillSnapshot, owner: Owner) -> BlobProgress {
        BlobProgress {
            owner,
            digest: f.digest.clone(),
            size: f.size,
            landed: f.landed,
            waiters: f.waiters,
            state: f.state.clone(),
        }
    }

    /// A fill in flight, reported under the repository it came from.
    pub fn of_fill_in_flight(f: &FillSnapshot) -> BlobProgress {
        BlobProgress::of_fill(f, Owner::Repository(f.origin.clone()))
    }
}

pub trait Prefetcher: Send + Sync + 'static {
    /// Resolves the model's manifest (revalidating it with upstream as a client pull would),
    /// writes it to the cache, and starts a fill for every blob not yet cached. Resolves once
    /// the fills are started, not when they finish; `Err` says why the model cannot be fetched
    /// (unknown model, upstream unreachable, no room), worded for the user.
    fn start(&self, model: ModelRef) -> BoxFuture<'static, Result<(), String>>;

    /// Progress of these models (every fill in flight when `models` is empty, each under its
    /// [`Owner::Repository`]): one entry per blob of each model, already cached blobs included
    /// as [`FillStage::Done`] with `landed == size`, under [`Owner::Model`], so a client can
    /// show a model's total and know when it is complete.
    fn progress(&self, models: &[ModelRef]) -> Vec<BlobProgress>;
}
