//! The state every subsystem shares: the configuration in force (swapped atomically on reload),
//! subsystem health for the watchdog and `lancachectl status`, and the counters behind
//! `lancachectl stats`.
//!
//! Subsystems read `state.config()` per request or per query rather than copying values at
//! start, which is what lets a reload take effect without touching a single socket.

use arc_swap::ArcSwap;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;
use tokio::sync::watch;

use crate::config::{Config, ConfigSource};
use crate::store::eviction::Lifecycle;
use crate::store::prefetch::Prefetcher;
use crate::store::tenant::Tenant;
use crate::store::{Index, Layout, Pins};

pub struct State {
    config: ArcSwap<Config>,
    /// Subsystems that keep derived state (DNS's name table, TLS leaf certificates) watch this.
    config_tx: watch::Sender<Arc<Config>>,
    pub source: ConfigSource,
    /// Sockets came from systemd: listen addresses in the file do not apply.
    pub activated: bool,
    pub started: Instant,
    pub health: Health,
    pub counters: Counters,
    /// The cache directory (fixed for the life of the process; `cache.dir` needs a restart).
    pub layout: Layout,
    /// Blobs in use, which prune and eviction must leave alone.
    pub pins: Pins,
    /// The model catalog and the cache-writable probe.
    pub distribution: crate::distribution::Distribution,
    /// Client downloads in progress (`/api/sessions`), fed by every route that streams a body.
    pub sessions: crate::http::sessions::Sessions,
    /// Access times, hit counts and fetched-or-found per model and blob.
    pub index: Index,
    /// Usage, eviction and prune bookkeeping.
    pub lifecycle: Lifecycle,
    /// The fill engine's prefetch entry point, once wired in.
    prefetcher: OnceLock<Arc<dyn Prefetcher>>,
    /// Content beside the models that prune and eviction plan over (the hub cache), once wired in.
    tenants: OnceLock<Vec<Arc<dyn Tenant>>>,
    /// The cache's CA and the leaf certificates in force (HTTPS, `/ca.crt`, `lancachectl ca`).
    pub tls: crate::tls::TlsState,
    /// The caching registry proxy: upstream client, fills in flight, cache counters.
    pub proxy: crate::proxy::Proxy,
    /// The Hugging Face Hub front: hub cache, metadata, accepted tokens.
    pub hub: crate::hub::Hub,
    /// The DNS interceptor's counters (kept here so they survive a subsystem restart).
    pub dns_stats: Arc<crate::dns::stats::Stats>,
    /// `[cluster]`: the shared store and the leases, set once at start when configured.
    pub cluster: OnceLock<Arc<crate::cluster::Cluster>>,
    /// What DNS answers intercepted names with when set from outside its config (cluster
    /// mode: the healthy nodes). Kept here so it survives a DNS subsystem restart.
    pub advertised: crate::dns::advertise::Shared,
}

impl State {
    pub fn new(config: Config, source: ConfigSource, activated: bool) -> Arc<State> {
        crate::store::ratelimit::UPSTREAM.set_rate(config.upstream.max_rate.0);
        let config = Arc::new(config);
        let layout = Layout::new(&config.cache.dir);
        let (config_tx, _) = watch::channel(config.clone());
        let pins = Pins::default();
        let proxy = crate::proxy::Proxy::new(layout.clone(), pins.clone(), &config);
        let hub = crate::hub::Hub::new(&config);
        Arc::new(State {
            config: ArcSwap::new(config),
            config_tx,
            source,
            activated,
            started: Instant::now(),
            health: Health::default(),
            counters: Counters::default(),
            index: Index::new(&layout),
            layout,
            distribution: crate::distribution::Distribution::default(),
            sessions: Default::default(),
            lifecycle: Lifecycle::default(),
            prefetcher: OnceLock::new(),
            tenants: OnceLock::new(),
            tls: Default::default(),
            pins,
            proxy,
            hub,
            dns_stats: Arc::default(),
            cluster: OnceLock::new(),
            advertised: Default::default(),
        })
    }

    /// The configuration in force now.
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// Puts a new (already validated) configuration in force and tells the watchers.
    pub fn set_config(&self, config: Config) {
        // `upstream.max_rate` applies to the next chunk of every running fill.
        crate::store::ratelimit::UPSTREAM.set_rate(config.upstream.max_rate.0);
        let config = Arc::new(config);
        self.config.store(config.clone());
        self.config_tx.send_replace(config);
    }

    pub fn listeners_activated(&self) -> bool {
        self.activated
    }

    /// One line for systemd's `STATUS=` (shown by `systemctl status`).
    pub fn status_line(&self) -> String {
        let health = self.health.snapshot();
        let failing: Vec<&str> = health
            .iter()
            .filter(|(_, h)| !h.healthy)
            .map(|(n, _)| *n)
            .collect();
        let names: Vec<&str> = health.iter().map(|(n, _)| *n).collect();
        if failing.is_empty() {
            format!("serving: {}", names.join(", "))
        } else {
            format!("degraded: {} failing", failing.join(", "))
        }
    }

    /// Connects `lancachectl prefetch` to the fill engine (once; later calls are ignored).
    pub fn set_prefetcher(&self, p: Arc<dyn Prefetcher>) {
        let _ = self.prefetcher.set(p);
    }

    pub fn prefetcher(&self) -> Option<&Arc<dyn Prefetcher>> {
        self.prefetcher.get()
    }

    /// Connects prune and eviction to the content beside the models (once; later calls are
    /// ignored).
    pub fn set_tenants(&self, t: Vec<Arc<dyn Tenant>>) {
        let _ = self.tenants.set(t);
    }

    pub fn tenants(&self) -> &[Arc<dyn Tenant>] {
        self.tenants.get().map(Vec::as_slice).unwrap_or(&[])
    }

    /// A receiver that wakes when the configuration changes.
    pub fn watch_config(&self) -> watch::Receiver<Arc<Config>> {
        self.config_tx.subscribe()
    }
}

/// Health of each subsystem, by name. The watchdog pings only while every entry is healthy.
#[derive(Default)]
pub struct Health {
    inner: Mutex<BTreeMap<&'static str, SubsystemHealth>>,
}

#[derive(Debug, Clone, Default)]
pub struct SubsystemHealth {
    pub healthy: bool,
    pub restarts: u32,
    pub listeners: Vec<String>,
    pub last_error: Option<String>,
}

impl Health {
    pub fn register(&self, name: &'static str, listeners: Vec<String>) {
        self.inner.lock().unwrap().insert(
            name,
            SubsystemHealth {
                listeners,
                ..Default::default()
            },
        );
    }

    pub fn set_healthy(&self, name: &'static str, healthy: bool) {
        if let Some(h) = self.inner.lock().unwrap().get_mut(name) {
            h.healthy = healthy;
        }
    }

    pub fn record_failure(&self, name: &'static str, error: String) {
        if let Some(h) = self.inner.lock().unwrap().get_mut(name) {
            h.healthy = false;
            h.restarts += 1;
            h.last_error = Some(error);
        }
    }

    pub fn all_healthy(&self) -> bool {
        self.inner.lock().unwrap().values().all(|h| h.healthy)
    }

    pub fn snapshot(&self) -> Vec<(&'static str, SubsystemHealth)> {
        self.inner
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect()
    }
}

/// Counters of the daemon's own layers (control socket, HTTP front). Subsystems with richer
/// statistics keep them in their own state and add a section to `Stats`.
#[derive(Default)]
pub struct Counters {
    pub control_requests: AtomicU64,
    pub control_refused: AtomicU64,
    pub control_bad_frames: AtomicU64,
    pub http_connections: AtomicU64,
    pub http_requests: AtomicU64,
    pub http_2xx: AtomicU64,
    pub http_3xx: AtomicU64,
    pub http_4xx: AtomicU64,
    pub http_5xx: AtomicU64,
}

impl Counters {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_status(&self, status: u16) {
        let c = match status {
            200..=299 => &self.http_2xx,
            300..=399 => &self.http_3xx,
            400..=499 => &self.http_4xx,
            _ => &self.http_5xx,
        };
        Counters::bump(c);
    }
}
