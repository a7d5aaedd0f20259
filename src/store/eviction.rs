//! The cache subsystem: keeps the access index (opens it, brings it in line with the directory,
//! flushes the hot path's buffer every second) and keeps the cache within `[cache] max_size` and
//! `min_free` by evicting least recently used models (the safety rules of [`super::prune`]).
//!
//! It is a supervised subsystem of its own rather than a task of the HTTP front because it
//! serves every front (HTTP, HTTPS, the control socket) and must run whichever of them is
//! configured; as a subsystem it is restarted with backoff when it fails and shows in
//! `lancachectl status`. It needs no socket, and its first run does nothing before READY: the
//! index opens and the directory is scanned in the background.
//!
//! Watermarks: eviction starts when usage passes `max_size` or free space drops under
//! `min_free`, and goes on until usage is at most 90% of `max_size` and free space is at least
//! `min_free` plus a tenth. The fill engine asks for room before a fill with [`ensure_space`].
//!
//! What `stats` shows of it is a [`LifecycleSnapshot`], the store's own type: the control
//! layer maps it to the protocol.

use anyhow::Result;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::names::ModelRef;
use super::prune::{self, Criteria, Deferred, PruneReport, Store, STALE_PARTIAL_SECS};
use super::usage::{self, Usage};
use crate::config::Config;
use crate::state::State;

/// How often the buffered index touches are written.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// How often usage and free space are checked (a fill's [`ensure_space`] and a reload check
/// at once).
const CHECK_EVERY: Duration = Duration::from_secs(10);

/// Shared lifecycle state: counters for `stats`/metrics, the latest usage measurement, and the
/// lock that makes prunes and evictions take turns.
#[derive(Default)]
pub struct Lifecycle {
    pub deferred: Deferred,
    /// One prune or eviction at a time: two would plan against the same directory.
    pub lock: tokio::sync::Mutex<()>,
    /// Wakes the subsystem for an immediate check.
    pub wake: Notify,
    usage: Mutex<Usage>,
    pub models: AtomicU64,
    pub local_models: AtomicU64,
    pub indexing: AtomicBool,
    pub evictions: AtomicU64,
    pub evicted_models: AtomicU64,
    pub evicted_bytes: AtomicU64,
    pub prunes: AtomicU64,
    pub pruned_models: AtomicU64,
    pub pruned_bytes: AtomicU64,
    pub no_space: AtomicU64,
    /// Set while usage is over a limit that eviction cannot fix, so that is logged once.
    stuck: AtomicBool,
}

impl Lifecycle {
    pub fn usage(&self) -> Usage {
        *self.usage.lock().unwrap()
    }

    fn set_usage(&self, u: Usage) {
        *self.usage.lock().unwrap() = u;
    }

    /// Counts a finished `lancachectl prune`.
    pub fn count_prune(&self, r: &PruneReport) {
        if !r.dry_run {
            self.prunes.fetch_add(1, Ordering::Relaxed);
            self.pruned_models
                .fetch_add(r.removed.len() as u64, Ordering::Relaxed);
            self.pruned_bytes
                .fetch_add(r.bytes_freed, Ordering::Relaxed);
        }
    }
}

fn store(state: &State) -> Store<'_> {
    Store {
        layout: &state.layout,
        index: &state.index,
        pins: &state.pins,
        deferred: &state.lifecycle.deferred,
        tenants: state.tenants(),
    }
}

/// The cache subsystem's run: see the module documentation.
pub async fn run(state: Arc<State>, cancel: CancellationToken) -> Result<()> {
    {
        let state = state.clone();
        state.lifecycle.indexing.store(true, Ordering::Relaxed);
        tokio::task::spawn_blocking(move || -> Result<()> {
            let started = Instant::now();
            state.index.open()?;
            let new = state.index.reconcile(&state.layout)?;
            state.lifecycle.indexing.store(false, Ordering::Relaxed);
            tracing::info!(
                new_models = new,
                "access index ready in {:.0?} ({})",
                started.elapsed(),
                state.index.path().display()
            );
            Ok(())
        })
        .await??;
    }
    let mut flush = tokio::time::interval(FLUSH_EVERY);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut check = tokio::time::interval(CHECK_EVERY);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut config = state.watch_config();
    let mut flush_failing = false;
    loop {
        tokio::select! {
            // Shutdown: write what the hot path buffered, then stop.
            _ = cancel.cancelled() => {
                let s = state.clone();
                let _ = tokio::task::spawn_blocking(move || s.index.flush()).await;
                return Ok(());
            }
            // The hot path's touches, batched into one transaction.
            _ = flush.tick() => {
                let s = state.clone();
                match tokio::task::spawn_blocking(move || s.index.flush()).await {
                    // Once per episode, not once a second (a full disk would flood the log).
                    Ok(Err(e)) if !flush_failing => {
                        flush_failing = true;
                        tracing::warn!("writing the access index: {e:#} (usage since is lost until this recovers)");
                    }
                    Ok(Ok(())) if flush_failing => {
                        flush_failing = false;
                        tracing::info!("writing the access index works again");
                    }
                    _ => {}
                }
            }
            // The periodic look at usage and free space (the first tick is immediate).
            _ = check.tick() => enforce_limits(&state).await,
            // Someone asked for a check now (a prune finished, a fill needs room).
            _ = state.lifecycle.wake.notified() => enforce_limits(&state).await,
            // A reload may have lowered max_size or raised min_free.
            changed = config.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                enforce_limits(&state).await;
            }
        }
    }
}

/// Measures, refreshes the numbers `stats` shows, and evicts when over a limit.
async fn enforce_limits(state: &Arc<State>) {
    let _turn = state.lifecycle.lock.lock().await;
    let s = state.clone();
    let _ = tokio::task::spawn_blocking(move || enforce_limits_blocking(&s)).await;
}

fn enforce_limits_blocking(state: &State) {
    let lc = &state.lifecycle;
    let (blobs, bytes) = prune::retry_deferred(&store(state));
    if blobs > 0 {
        tracing::info!(blobs, bytes, "removed blobs whose last user let go of them");
    }
    let u = refresh(state);
    let config = state.config();
    let Some(criteria) = eviction_criteria(&config, &u, 0) else {
        lc.stuck.store(false, Ordering::Relaxed);
        return;
    };
    match prune::prune(&store(state), &criteria) {
        Ok(report) => {
            let after = refresh(state);
            count_eviction(state, &report);
            if !report.removed.is_empty() || report.partial_fills_removed > 0 {
                tracing::info!(
                    models = ?report.names(),
                    bytes_freed = report.bytes_freed,
                    usage_before = u.bytes,
                    usage_after = after.bytes,
                    free_after = after.free,
                    "evicted least recently used models"
                );
            }
            let still_over = eviction_criteria(&config, &after, 0).is_some();
            if !still_over {
                lc.stuck.store(false, Ordering::Relaxed);
            } else if !lc.stuck.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    usage = after.bytes,
                    max_size = config.cache.max_size.0,
                    free = after.free,
                    min_free = config.cache.min_free.0,
                    "the cache is over its limits and nothing more can be evicted: the remaining models are in use{}",
                    if config.cache.evict_local { "" } else { " or were found in the directory (set [cache] evict_local = true to allow evicting them)" }
                );
            }
        }
        Err(e) => tracing::warn!("eviction: {e}"),
    }
}

fn count_eviction(state: &State, r: &PruneReport) {
    let lc = &state.lifecycle;
    if !r.removed.is_empty() || r.partial_fills_removed > 0 {
        lc.evictions.fetch_add(1, Ordering::Relaxed);
        lc.evicted_models
            .fetch_add(r.removed.len() as u64, Ordering::Relaxed);
        lc.evicted_bytes.fetch_add(r.bytes_freed, Ordering::Relaxed);
    }
}

/// Re-measures usage and recounts models.
fn refresh(state: &State) -> Usage {
    let u = usage::measure_with(&state.layout, state.tenants());
    state.lifecycle.set_usage(u);
    let models = state.layout.list_manifests();
    let entries = state.index.manifests().unwrap_or_default();
    let local = models
        .iter()
        .filter(|(m, _)| !entries.get(&m.to_string()).is_some_and(|e| e.fetched))
        .count();
    state
        .lifecycle
        .models
        .store(models.len() as u64, Ordering::Relaxed);
    state
        .lifecycle
        .local_models
        .store(local as u64, Ordering::Relaxed);
    u
}

/// What to evict so that `incoming` more bytes fit under both limits with the watermarks'
/// margin; `None` when they already fit.
fn eviction_criteria(config: &Config, u: &Usage, incoming: u64) -> Option<Criteria> {
    let max = config.cache.max_size.0;
    let min_free = config.cache.min_free.0;
    let over_size = u.bytes + incoming > max;
    // Not `free - incoming`: saturating at 0, that let a blob bigger than the free space pass
    // with `min_free = 0`, and the fill then met ENOSPC midway.
    let low_free = u.free < incoming.saturating_add(min_free);
    if !over_size && !low_free {
        return None;
    }
    let low_watermark = (max / 10 * 9).min(max.saturating_sub(incoming));
    Some(Criteria {
        max_size: over_size.then_some(low_watermark),
        free_bytes: low_free.then(|| (min_free + min_free / 10 + incoming).saturating_sub(u.free)),
        include_local: config.cache.evict_local,
        partial_older_than: STALE_PARTIAL_SECS,
        ..Default::default()
    })
}

/// Why a fill cannot have the room it asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoSpace {
    pub needed: u64,
    pub message: String,
}

impl std::fmt::Display for NoSpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for NoSpace {}

fn size(n: u64) -> String {
    bytesize::ByteSize(n).display().iec().to_string()
}

/// Makes room for a fill of `bytes` before it starts, evicting least recently used models if
/// need be. `Err` (with a message for the log and the client) when even eviction cannot make
/// the blob fit; hits keep being served either way.
pub async fn ensure_space(state: &Arc<State>, bytes: u64) -> Result<(), NoSpace> {
    let config = state.config();
    let max = config.cache.max_size.0;
    if bytes > max {
        state.lifecycle.no_space.fetch_add(1, Ordering::Relaxed);
        return Err(NoSpace {
            needed: bytes,
            message: format!(
                "a blob of {} cannot be cached: it is larger than cache.max_size ({})",
                size(bytes),
                size(max)
            ),
        });
    }
    let _turn = state.lifecycle.lock.lock().await;
    let s = state.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        let u = refresh(&s);
        let config = s.config();
        let Some(criteria) = eviction_criteria(&config, &u, bytes) else {
            return Ok(());
        };
        // Evicting the whole cache would still leave too little free: refuse without evicting
        // anything (found by tests/faults.rs: a blob bigger than the disk emptied the cache
        // and was refused anyway).
        let min_free = config.cache.min_free.0;
        if u.free.saturating_add(u.bytes) < bytes.saturating_add(min_free) {
            return Err(NoSpace {
                needed: bytes,
                message: format!(
                    "no room for a fill of {}: the disk has {} free (cache.min_free {}) and even evicting all {} the cache holds would not make room",
                    size(bytes),
                    size(u.free),
                    size(min_free),
                    size(u.bytes)
                ),
            });
        }
        if let Ok(report) = prune::prune(&store(&s), &criteria) {
            count_eviction(&s, &report);
            if !report.removed.is_empty() {
                tracing::info!(
                    models = ?report.names(),
                    bytes_freed = report.bytes_freed,
                    "evicted least recently used models to make room for a {} fill",
                    size(bytes)
                );
            }
        }
        let after = refresh(&s);
        let fits = after.bytes + bytes <= config.cache.max_size.0
            && after.free >= bytes.saturating_add(config.cache.min_free.0);
        if fits {
            return Ok(());
        }
        Err(NoSpace {
            needed: bytes,
            message: format!(
                "no room for a fill of {}: the cache holds {} (cache.max_size {}), the disk has {} free (cache.min_free {}), and nothing more can be evicted: the remaining models are in use{}",
                size(bytes),
                size(after.bytes),
                size(config.cache.max_size.0),
                size(after.free),
                size(config.cache.min_free.0),
                if config.cache.evict_local { "" } else { " or were found in the directory (set [cache] evict_local = true to allow evicting them)" }
            ),
        })
    })
    .await
    .unwrap_or(Ok(()));
    if let Err(e) = &outcome {
        state.lifecycle.no_space.fetch_add(1, Ordering::Relaxed);
        tracing::warn!("{e}");
    }
    outcome
}

/// The lifecycle's numbers at one moment, for `stats` and `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LifecycleSnapshot {
    /// The latest measurement (refreshed every check, ten seconds apart, and after each
    /// prune or eviction).
    pub usage: Usage,
    /// `[cache] max_size` and `min_free`.
    pub max_size: u64,
    pub min_free: u64,
    pub models: u64,
    /// Models found in the directory rather than fetched.
    pub local_models: u64,
    /// Eviction runs that removed something, the models they removed and the bytes freed.
    pub evictions: u64,
    pub evicted_models: u64,
    pub evicted_bytes: u64,
    /// Prunes that were not dry runs, the models they removed and the bytes freed.
    pub prunes: u64,
    pub pruned_models: u64,
    pub pruned_bytes: u64,
    /// Fills refused because no room could be made.
    pub no_space: u64,
    pub deferred_blobs: u64,
    /// The start-up scan of the directory is still running.
    pub indexing: bool,
    /// The most requested models, most first (at most [`TOP_MODELS`]).
    pub top_models: Vec<ModelUse>,
}

/// How many models [`LifecycleSnapshot::top_models`] lists.
pub const TOP_MODELS: usize = 10;

/// How often a model's manifest was asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelUse {
    pub model: ModelRef,
    pub hits: u64,
    pub last_used: SystemTime,
}

/// The lifecycle's numbers now.
pub fn snapshot(state: &State) -> LifecycleSnapshot {
    let lc = &state.lifecycle;
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let config = state.config();
    let mut top: Vec<(String, crate::store::index::Entry)> = state
        .index
        .manifests()
        .unwrap_or_default()
        .into_iter()
        .filter(|(_, e)| e.hits > 0)
        .collect();
    top.sort_by(|a, b| b.1.hits.cmp(&a.1.hits).then_with(|| a.0.cmp(&b.0)));
    // The index keys manifests by `ModelRef`'s `Display`, so every key parses; one that does
    // not (an index written by a build with other name rules) has no model to show and is left
    // out rather than shown raw.
    let top_models = top
        .into_iter()
        .filter_map(|(name, e)| {
            Some(ModelUse {
                model: ModelRef::parse(&name).ok()?,
                hits: e.hits,
                last_used: UNIX_EPOCH + Duration::from_secs(e.last_access),
            })
        })
        .take(TOP_MODELS)
        .collect();
    LifecycleSnapshot {
        usage: lc.usage(),
        max_size: config.cache.max_size.0,
        min_free: config.cache.min_free.0,
        models: get(&lc.models),
        local_models: get(&lc.local_models),
        evictions: get(&lc.evictions),
        evicted_models: get(&lc.evicted_models),
        evicted_bytes: get(&lc.evicted_bytes),
        prunes: get(&lc.prunes),
        pruned_models: get(&lc.pruned_models),
        pruned_bytes: get(&lc.pruned_bytes),
        no_space: get(&lc.no_space),
        deferred_blobs: lc.deferred.len() as u64,
        indexing: lc.indexing.load(Ordering::Relaxed),
        top_models,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watermarks() {
        let mut c = Config::default();
        c.cache.max_size = crate::config::ByteSize(1000);
        c.cache.min_free = crate::config::ByteSize(100);
        let u = Usage {
            bytes: 500,
            free: 10_000,
            ..Default::default()
        };
        assert!(eviction_criteria(&c, &u, 0).is_none());
        assert!(eviction_criteria(&c, &u, 500).is_none());
        let crit = eviction_criteria(&c, &u, 600).unwrap();
        assert_eq!(crit.max_size, Some(400));
        assert_eq!(crit.free_bytes, None);
        let full = Usage {
            bytes: 1001,
            free: 50,
            ..Default::default()
        };
        let crit = eviction_criteria(&c, &full, 0).unwrap();
        assert_eq!(crit.max_size, Some(900));
        assert_eq!(crit.free_bytes, Some(60));
        assert!(!crit.include_local);
        // Found by tests/faults.rs: with min_free = 0 a blob bigger than the free space must
        // still ask for room (it used to pass, `free - incoming` saturating at 0).
        c.cache.min_free = crate::config::ByteSize(0);
        let u = Usage {
            bytes: 0,
            free: 100,
            ..Default::default()
        };
        assert!(eviction_criteria(&c, &u, 100).is_none());
        let crit = eviction_criteria(&c, &u, 101).unwrap();
        assert_eq!(crit.free_bytes, Some(1));
    }

    /// A model with one layer of `size` bytes unique to it.
    fn write_model(l: &crate::store::Layout, name: &str, size: usize) -> crate::store::ModelRef {
        let mut data = vec![name.len() as u8; size];
        data.extend_from_slice(name.as_bytes());
        crate::store::testutil::write_model(l, name, &[&data])
    }

    #[tokio::test]
    async fn ensure_space_evicts_or_explains() {
        let tmp = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.cache.dir = tmp.path().into();
        config.cache.max_size = crate::config::ByteSize(100_000);
        config.cache.min_free = crate::config::ByteSize(0);
        let state = State::new(config, crate::config::ConfigSource::Quickstart, false);
        state.layout.create().unwrap();
        let old = write_model(&state.layout, "old", 40_000);
        let new = write_model(&state.layout, "new", 40_000);
        let local = write_model(&state.layout, "someone/local", 10_000);
        state.index.open().unwrap();
        state.index.record_manifest_entry(
            &old,
            crate::store::index::Entry {
                last_access: 1,
                hits: 0,
                fetched: true,
            },
        );
        state.index.record_fetched(&new);

        // 90 KB held; 5 KB more fit under 100 KB.
        ensure_space(&state, 5_000).await.unwrap();
        assert!(state.layout.manifest_path(&old).exists());
        // 30 KB do not: the least recently used fetched model makes room.
        ensure_space(&state, 30_000).await.unwrap();
        assert!(!state.layout.manifest_path(&old).exists());
        assert!(state.layout.manifest_path(&new).exists());
        assert_eq!(state.lifecycle.evicted_models.load(Ordering::Relaxed), 1);
        // Larger than max_size: refused outright.
        let e = ensure_space(&state, 200_000).await.unwrap_err();
        assert!(e.message.contains("larger than cache.max_size"), "{e}");
        // The fetched model is in use and the rest is local: no room, and the reason says so.
        let _pin = state.pins.pin(&crate::store::Digest::of(&{
            let mut d = vec![3u8; 40_000];
            d.extend_from_slice(b"new");
            d
        }));
        let e = ensure_space(&state, 90_000).await.unwrap_err();
        assert!(e.message.contains("evict_local"), "{e}");
        assert!(state.layout.manifest_path(&local).exists());
        assert_eq!(state.lifecycle.no_space.load(Ordering::Relaxed), 2);
    }
}
