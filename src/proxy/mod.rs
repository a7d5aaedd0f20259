//! The caching registry proxy: the heart of lancached.
//!
//! - [`registry`]: the Registry v2 front (`/v2/...`) that a real `ollama pull` talks to, routed
//!   by `Host`; blobs are served on the registry's own host, never redirected.
//! - [`manifests`]: manifests cached byte-exact with TTL revalidation and offline serving, and
//!   the registry's version gate kept for them ([`gate`]).
//! - [`dataplane`]: blob bodies, Range-exact, from `blobs/` or from a fill in progress, for the
//!   registry routes and for `GET|HEAD /blobs/sha256:<hex>` (side-loads, scripts, browsers).
//! - [`upstream`]: the client that reaches registries and CDNs (own resolvers, rustls, loop guard).
//! - [`fetch`]: how a fill gets its bytes from a registry (the store's fill engine drives it).
//! - [`relay`]: what a relayed host (hf.co) answers outside the registry API, passed through
//!   to upstream unchanged, streaming both ways.
//! - [`mapped`]: zero-copy bodies for published blobs (slices of a memory mapping).
//!
//! [`Proxy`] is the shared part that lives in `State`: the upstream client, the fills in flight,
//! the counters, and what the cache has learnt about blobs (repository and size by digest).

pub mod dataplane;
pub mod fetch;
pub mod gate;
pub mod manifests;
pub mod mapped;
pub mod prefetch;
pub mod registry;
pub mod relay;
pub mod upstream;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::config::{BaseUrl, Config};
use crate::state::State;
use crate::store::eviction::{ensure_space, NoSpace};
use crate::store::fill::{FillParams, Fills, Joined, Origin};
use crate::store::stats::{CacheCounters, CacheSnapshot};
use crate::store::{Digest, Layout, Manifest, Pins};

/// What the cache knows about a blob it has not necessarily stored: where it comes from and,
/// from a manifest's layer list, how big it is.
#[derive(Debug, Clone)]
pub struct KnownBlob {
    pub registry: String,
    pub repository: String,
    pub size: Option<u64>,
}

pub struct Proxy {
    pub upstream: upstream::Upstream,
    pub counters: Arc<CacheCounters>,
    pub fills: Arc<Fills>,
    /// Which client versions upstream has answered for each cached manifest.
    pub gate: gate::VersionGate,
    known: Mutex<HashMap<Digest, KnownBlob>>,
    resumed: AtomicBool,
}

impl Proxy {
    pub fn new(layout: Layout, pins: Pins, config: &Config) -> Proxy {
        let counters = Arc::new(CacheCounters::default());
        Proxy {
            upstream: upstream::Upstream::new(),
            fills: Arc::new(Fills::new(
                layout,
                pins,
                counters.clone(),
                config.cache.max_fills,
            )),
            counters,
            gate: gate::VersionGate::default(),
            known: Mutex::new(HashMap::new()),
            resumed: AtomicBool::new(false),
        }
    }

    /// Remembers where a blob comes from (and its size when a manifest says).
    pub fn learn(&self, digest: &Digest, registry: &str, repository: &str, size: Option<u64>) {
        let mut known = self.known.lock().unwrap();
        let e = known.entry(digest.clone()).or_insert_with(|| KnownBlob {
            registry: registry.to_string(),
            repository: repository.to_string(),
            size,
        });
        e.registry = registry.to_string();
        e.repository = repository.to_string();
        if size.is_some() {
            e.size = size;
        }
    }

    /// Learns every blob of a manifest.
    pub fn learn_manifest(&self, registry: &str, repository: &str, bytes: &[u8]) {
        if let Ok(m) = Manifest::parse(bytes) {
            for l in m.blobs() {
                self.learn(&l.digest, registry, repository, Some(l.size));
            }
        }
    }

    pub fn known(&self, digest: &Digest) -> Option<KnownBlob> {
        self.known.lock().unwrap().get(digest).cloned()
    }
}

/// Fill tunables from the configuration in force.
pub fn fill_params(cfg: &Config) -> FillParams {
    FillParams {
        slice_size: cfg.cache.slice_size.0,
        connections: cfg.cache.fill_connections,
        stall_timeout: cfg.cache.stall_timeout.0,
    }
}

/// The upstream registry for a request's `Host`: a configured host, else the first registry.
pub fn registry_for(cfg: &Config, host: &str) -> Option<(String, BaseUrl)> {
    let host = strip_port(host).to_ascii_lowercase();
    let host = host.strip_suffix('.').unwrap_or(&host);
    cfg.upstream
        .registries
        .iter()
        .find(|(k, _)| k.as_str() == host)
        .or_else(|| cfg.upstream.registries.first())
        .map(|(k, v)| (k.as_str().to_string(), v.clone()))
}

/// The base URL of a configured registry host.
pub fn base_url(cfg: &Config, registry: &str) -> Option<BaseUrl> {
    cfg.upstream
        .registries
        .iter()
        .find(|(k, _)| k.as_str() == registry)
        .map(|(_, v)| v.clone())
}

/// The host the client asked for (HTTP/1 `Host`, or the HTTP/2 authority), lower case.
pub fn request_host<B>(req: &http::Request<B>) -> String {
    req.headers()
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default()
        .to_ascii_lowercase()
}

/// `host[:port]` or `[v6]:port` -> host.
pub fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) && !h.contains(':') => h,
        _ => host,
    }
}

/// Why a fill could not be joined or started.
#[derive(Debug)]
pub enum FillStartError {
    /// Not even eviction makes room for the blob; the message is for the log and the client.
    NoSpace(NoSpace),
    Io(std::io::Error),
}

impl std::fmt::Display for FillStartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FillStartError::NoSpace(e) => write!(f, "{e}"),
            FillStartError::Io(e) => write!(f, "cannot start fill: {e}"),
        }
    }
}

/// Joins the fill of `digest` in flight, or starts one after asking the lifecycle for room for
/// `need` bytes (which may evict least recently used models). The one way every part of the
/// proxy gets a fill, so none skips the space check.
pub async fn join_fill(
    state: &Arc<State>,
    digest: &Digest,
    size: u64,
    need: u64,
    origin: Origin,
) -> Result<Joined, FillStartError> {
    let fetcher = fetch::RegistryFetcher::new(
        state.clone(),
        &origin.registry,
        &origin.repository,
        digest,
        size,
    );
    // Cluster mode: the store, the lease holder or upstream, chosen slice by slice.
    let fetcher: Arc<dyn crate::store::fill::Fetcher> = match state.cluster.get() {
        Some(c) => Arc::new(crate::cluster::fetcher::ClusterFetcher {
            state: state.clone(),
            cluster: c.clone(),
            upstream: Arc::new(fetcher),
            registry: origin.registry.clone(),
            repository: origin.repository.clone(),
            digest: digest.clone(),
            size,
        }),
        None => Arc::new(fetcher),
    };
    join_fill_with(state, digest, size, need, origin, fetcher).await
}

/// [`join_fill`] with the fetcher given: fronts whose blobs do not come from a registry (the
/// Hugging Face Hub) bring their own, and still get the space check.
pub async fn join_fill_with(
    state: &Arc<State>,
    digest: &Digest,
    size: u64,
    need: u64,
    origin: Origin,
    fetcher: Arc<dyn crate::store::fill::Fetcher>,
) -> Result<Joined, FillStartError> {
    if let Some(j) = state.proxy.fills.existing(digest) {
        return Ok(j);
    }
    if let Err(e) = ensure_space(state, need).await {
        state.proxy.counters.failure("no_space");
        return Err(FillStartError::NoSpace(e));
    }
    let cfg = state.config();
    state
        .proxy
        .fills
        .join(digest, size, origin, fill_params(&cfg), fetcher)
        .map_err(FillStartError::Io)
}

/// Starts, once per process, the fills an earlier run left unfinished. The daemon runs it in
/// the background at start, whatever listeners are configured.
pub async fn resume_leftovers(state: Arc<State>) {
    if state.proxy.resumed.swap(true, Ordering::SeqCst) {
        return;
    }
    let cfg = state.config();
    let fills = state.proxy.fills.clone();
    let leftovers = tokio::task::spawn_blocking(move || fills.leftovers())
        .await
        .unwrap_or_default();
    for m in leftovers {
        let Ok(digest) = Digest::parse(&m.digest) else {
            continue;
        };
        if m.registry == crate::hub::ORIGIN {
            crate::hub::resume(&state, &digest, &m.repository, m.size).await;
            continue;
        }
        if base_url(&cfg, &m.registry).is_none() {
            tracing::warn!(%digest, registry = %m.registry, "not resuming fill: registry no longer configured");
            continue;
        }
        state
            .proxy
            .learn(&digest, &m.registry, &m.repository, Some(m.size));
        // The landed slices are already on disk: room is needed only for the rest.
        let landed = (m.landed.len() as u64).saturating_mul(m.slice_size);
        let origin = Origin {
            registry: m.registry.clone(),
            repository: m.repository.clone(),
        };
        match join_fill(
            &state,
            &digest,
            m.size,
            m.size.saturating_sub(landed),
            origin,
        )
        .await
        {
            Ok(_) => tracing::info!(%digest, "resuming interrupted fill"),
            Err(e) => tracing::warn!(%digest, "cannot resume fill: {e}"),
        }
    }
}

/// The cache section of `lancachectl stats` and `/cache/stats`, as the store's types: the
/// control layer maps it to the protocol (`crate::control::wire`), so the proxy does not
/// know the wire format.
pub fn cache_stats(state: &State) -> CacheSnapshot {
    let mut s = CacheSnapshot {
        counts: state.proxy.counters.snapshot(),
        max_size: state.config().cache.max_size.0,
        // The lifecycle knows the evictions; `stats` adds them, `/cache/stats` has always
        // shown 0 here.
        evictions: 0,
        ..Default::default()
    };
    for e in std::fs::read_dir(state.layout.blobs_dir())
        .into_iter()
        .flatten()
        .flatten()
    {
        if Digest::from_file_name(&e.file_name().to_string_lossy()).is_some() {
            s.blobs += 1;
            s.usage_bytes += e.metadata().map(|m| m.len()).unwrap_or(0);
        }
    }
    s.models = state.layout.list_manifests().len() as u64;
    s.fills = state.proxy.fills.snapshot();
    s
}
