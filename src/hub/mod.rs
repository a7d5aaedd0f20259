//! The Hugging Face Hub through the cache. Clients reach it two ways: explicitly
//! (`HF_ENDPOINT=http://CACHE/hf`, the `/hf` prefix keeping the Hub's `/api/models/...` apart
//! from the cache's own `/api/models`) or transparently (DNS answers `huggingface.co` with the
//! cache, requests are routed by `Host`). Either way:
//!
//! - [`route`]: which requests the cache answers; everything else is relayed upstream
//!   unchanged ([`crate::proxy::relay`]);
//! - [`upstream`]: how a request reaches the Hub (the client's token passed on), what a
//!   branch or tag resolves to (cached for `revision_ttl`, stale when upstream is down), and
//!   what upstream's refusals look like to the client;
//! - [`api`]: repo info, tree and paths-info, cached at their commit;
//! - [`resolve`]: file bodies, exact `Range`, with the headers the client reads; LFS files
//!   through the single-flight sliced fill ([`fetch`]), verified by sha256; small files
//!   verified by their git blob SHA-1;
//! - [`layout`]: the hub cache, in `huggingface_hub`'s own layout;
//! - [`auth`]: which token was accepted for which gated or private repo;
//! - [`meta`]: metadata answers at a commit, kept for good;
//! - the operator's side: [`inventory`] (what the hub cache holds, for `lancachectl models`,
//!   `/api/models` and the web UI), [`tenant`] (its snapshots in prune and eviction),
//!   [`prefetch`] (`lancachectl prefetch hf:…`), [`bundle`] (repos in export/import tars).
//!
//! No answer sends a client to another host: the CDN redirect is followed cache-side, and
//! the Xet headers are never passed on, so `hf_xet` clients stay on plain HTTP.

pub mod api;
pub mod auth;
pub mod bundle;
pub mod fetch;
pub mod inventory;
pub mod layout;
pub mod meta;
pub mod prefetch;
pub mod repo;
pub mod resolve;
pub mod route;
pub mod tenant;
pub mod upstream;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::config::Config;
use crate::http::body::{self, Body};
use crate::http::Peer;
use crate::state::State;
use crate::store::Digest;

/// The `registry` of a Hub fill's origin (slice maps, counters, stats).
pub const ORIGIN: &str = "huggingface";

/// The path prefix of the explicit endpoint.
pub const PREFIX: &str = "/hf";

/// The host the transparent mode answers for.
pub const HOST: &str = "huggingface.co";

pub struct Hub {
    pub cache: layout::HubCache,
    pub meta: meta::MetaStore,
    pub access: auth::Access,
    pub prefetch: prefetch::Prefetches,
    /// Small-file downloads in flight, one per blob (so concurrent clients cost upstream once).
    small: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Hub {
    pub fn new(cfg: &Config) -> Hub {
        let state = cfg.cache.state_dir().join("huggingface");
        Hub {
            cache: layout::HubCache::new(cfg.huggingface.dir(&cfg.cache)),
            meta: meta::MetaStore::new(state.join("meta")),
            access: auth::Access::new(state.join("public")),
            prefetch: Default::default(),
            small: Mutex::default(),
        }
    }

    /// The lock that serialises fetching small blob `key`.
    fn small_lock(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut m = self.small.lock().unwrap();
        m.retain(|_, l| Arc::strong_count(l) > 1);
        m.entry(key.to_string()).or_default().clone()
    }
}

/// Whether a request is for the Hub: the `/hf` prefix on any host, or any path on
/// `huggingface.co` (when `[huggingface] enabled`). Returns the prefix to strip.
pub fn matches<B>(cfg: &Config, req: &Request<B>) -> Option<&'static str> {
    if !cfg.huggingface.enabled {
        return None;
    }
    let path = req.uri().path();
    if path == PREFIX || path.starts_with("/hf/") {
        return Some(PREFIX);
    }
    let host = crate::proxy::request_host(req);
    let host = crate::proxy::strip_port(&host).trim_end_matches('.');
    (host == HOST).then_some("")
}

/// One Hub request; `prefix` is `/hf` or `""` (transparent).
pub async fn handle(
    req: Request<Incoming>,
    prefix: &'static str,
    peer: Peer,
    state: &Arc<State>,
) -> Response<Body> {
    let path = req.uri().path()[prefix.len()..].to_string();
    let path = if path.is_empty() { "/".into() } else { path };
    let route = route::parse(req.method(), &path);
    let ctx = upstream::Ctx::new(&req, prefix, peer, state);
    match route {
        route::Route::Info { repo, rev } => api::info(&ctx, &req, &repo, &rev).await,
        route::Route::Tree { repo, rev, path } => api::tree(&ctx, &req, &repo, &rev, &path).await,
        route::Route::PathsInfo { repo, rev } => api::paths_info(&ctx, req, &repo, &rev).await,
        route::Route::Resolve { repo, rev, path } => {
            resolve::serve(&ctx, &req, &repo, &rev, &path).await
        }
        route::Route::Relay => relay(req, prefix, &path, state).await,
    }
}

/// Passes a request the cache does not answer to the Hub, unchanged but for the prefix.
async fn relay(
    req: Request<Incoming>,
    prefix: &str,
    path: &str,
    state: &Arc<State>,
) -> Response<Body> {
    let base = state.config().huggingface.upstream.clone();
    let (mut parts, body) = req.into_parts();
    if !prefix.is_empty() {
        let pq = match parts.uri.query() {
            Some(q) => format!("{path}?{q}"),
            None => path.to_string(),
        };
        parts.uri = match pq.parse() {
            Ok(u) => u,
            Err(e) => return body::text(StatusCode::BAD_REQUEST, format!("bad path: {e}")),
        };
    }
    crate::proxy::relay::handle(Request::from_parts(parts, body), &base, state).await
}

/// Resumes a Hub fill an earlier run left (the slice map's repository is
/// `{models,datasets}/{repo}@{commit}/{path}`). A fill that needed a token cannot resume
/// (tokens are not kept): its fetches fail and the fill is discarded like any failed fill.
pub async fn resume(state: &Arc<State>, digest: &Digest, origin: &str, size: u64) {
    match fetch::HubFetcher::from_origin(state.clone(), origin, size) {
        Some(f) => {
            let o = crate::store::fill::Origin {
                registry: ORIGIN.to_string(),
                repository: origin.to_string(),
            };
            match crate::proxy::join_fill_with(state, digest, size, size, o, Arc::new(f)).await {
                Ok(_) => tracing::info!(%digest, "resuming interrupted Hub fill"),
                Err(e) => tracing::warn!(%digest, "cannot resume Hub fill: {e}"),
            }
        }
        None => tracing::warn!(%digest, "not resuming Hub fill: unreadable origin {origin:?}"),
    }
}
