//! Filling models into the cache ahead of time (`lancachectl prefetch`). The fill engine does
//! the work; this is the interface the control socket drives it through, so the lifecycle code
//! does not depend on how fills are run. The daemon wires an implementation in with
//! [`crate::state::State::set_prefetcher`] (the proxy's `ProxyPrefetcher`, installed at daemon
//! start); without one, prefetch answers "unsupported".
//!
//! A prefetch is resumable by construction: starting a model whose blobs are partly cached
//! fills only what is missing, and a fill keeps running when the client that asked for it goes
//! away (Ctrl-C in `lancachectl prefetch` only stops watching).

use futures_util::future::BoxFuture;
use lancache_protocol::FillProgress;

use super::names::ModelRef;

pub trait Prefetcher: Send + Sync + 'static {
    /// Resolves the model's manifest (revalidating it with upstream as a client pull would),
    /// writes it to the cache, and starts a fill for every blob not yet cached. Resolves once
    /// the fills are started, not when they finish; `Err` says why the model cannot be fetched
    /// (unknown model, upstream unreachable, no room), worded for the user.
    fn start(&self, model: ModelRef) -> BoxFuture<'static, Result<(), String>>;

    /// Progress of these models (every fill in flight when `models` is empty): one entry per
    /// blob of each model, already cached blobs included as `state: "done"` with
    /// `landed == size`, and `model` set to the canonical name (`ModelRef`'s `Display`), so a
    /// client can show a model's total and know when it is complete.
    fn progress(&self, models: &[ModelRef]) -> Vec<FillProgress>;
}
