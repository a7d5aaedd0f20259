//! The one place where the store's types become the control protocol's. The store answers in
//! its own terms (`ModelRef`, `Digest`, `SystemTime`, [`FillStage`]); `lancachectl` over the
//! socket, `/cache/stats`, `/metrics` and `/api/info` all go through these mappings, so the
//! wire format is `lancache_protocol` plus this file, and the store never learns it.
//!
//! Each mapping is total and field for field: the tests below build every field of the store's
//! types without `..Default::default()`, so a field added on either side fails to compile here
//! rather than going missing on the wire.

use lancache_protocol as wire;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::store::eviction::{self, LifecycleSnapshot};
use crate::store::fill::FillStage;
use crate::store::models::CachedModel;
use crate::store::prefetch::{BlobProgress, Owner};
#[cfg(test)]
use crate::store::prune::Pruned;
use crate::store::prune::{PruneReport, PrunedModel};
use crate::store::stats::{CacheSnapshot, Counts, RegistryCounts};

/// Seconds since the Unix epoch, as the protocol counts time. The store's times are whole
/// seconds after the epoch, so nothing is lost; a time before it (a clock set wrong when a file
/// was written) reads as 0 rather than failing a whole listing.
fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The words `lancachectl` and the web UI show and scripts match on.
fn state_text(s: &FillStage) -> String {
    match s {
        FillStage::Pending => "pending".into(),
        FillStage::Filling => "filling".into(),
        FillStage::Publishing => "publishing".into(),
        FillStage::Done => "done".into(),
        FillStage::Failed(e) => format!("failed: {e}"),
    }
}

impl From<BlobProgress> for wire::FillProgress {
    fn from(p: BlobProgress) -> Self {
        wire::FillProgress {
            // A model asked for by name shows canonically (`ModelRef`'s `Display`): that is
            // what a client matches its own request against.
            model: Some(match p.owner {
                Owner::Model(m) => m.to_string(),
                Owner::Repository(o) => format!("{}/{}", o.registry, o.repository),
            }),
            digest: p.digest.to_string(),
            size: p.size,
            landed: p.landed,
            waiters: p.waiters,
            state: state_text(&p.state),
        }
    }
}

impl From<RegistryCounts> for wire::RegistryStats {
    fn from(r: RegistryCounts) -> Self {
        let RegistryCounts {
            manifest_hits,
            manifest_misses,
            blob_hits,
            blob_misses,
            bytes_from_cache,
            bytes_from_upstream,
        } = r;
        wire::RegistryStats {
            manifest_hits,
            manifest_misses,
            blob_hits,
            blob_misses,
            bytes_from_cache,
            bytes_from_upstream,
        }
    }
}

impl From<CacheSnapshot> for wire::CacheStats {
    fn from(s: CacheSnapshot) -> Self {
        let CacheSnapshot {
            counts,
            usage_bytes,
            max_size,
            models,
            blobs,
            evictions,
            fills,
        } = s;
        let Counts {
            manifest_hits,
            manifest_misses,
            manifest_revalidations,
            manifest_offline_serves,
            blob_hits,
            blob_misses,
            bytes_from_cache,
            bytes_from_upstream,
            fills_completed,
            fills_failed,
            failures,
            per_registry,
        } = counts;
        wire::CacheStats {
            manifest_hits,
            manifest_misses,
            manifest_revalidations,
            manifest_offline_serves,
            blob_hits,
            blob_misses,
            bytes_from_cache,
            bytes_from_upstream,
            fills_completed,
            fills_failed,
            failures,
            usage_bytes,
            max_size,
            models,
            blobs,
            evictions,
            per_registry: per_registry
                .into_iter()
                .map(|(host, r)| (host, r.into()))
                .collect(),
            fills: fills
                .iter()
                .map(|f| BlobProgress::of_fill_in_flight(f).into())
                .collect(),
            // The limiter's, not the store's: set by `control::handler::cache_stats`.
            upstream_max_rate_bytes_per_second: 0,
            upstream_rate_bytes_per_second: 0,
        }
    }
}

impl From<CachedModel> for wire::ModelInfo {
    fn from(m: CachedModel) -> Self {
        wire::ModelInfo {
            name: m.model.to_string(),
            short_name: m.model.short_name(),
            size: m.size,
            digest: m.digest.to_string(),
            complete: m.complete,
            last_used: m.last_used.map(secs),
            fetched: m.fetched,
        }
    }
}

impl From<PrunedModel> for wire::PrunedModel {
    fn from(m: PrunedModel) -> Self {
        wire::PrunedModel {
            // The form the user typed and `ollama list` shows.
            name: m.what.name(),
            bytes: m.bytes,
            last_used: m.last_used.map(secs),
        }
    }
}

impl From<PruneReport> for wire::PruneReport {
    fn from(r: PruneReport) -> Self {
        wire::PruneReport {
            dry_run: r.dry_run,
            removed: r.removed.into_iter().map(Into::into).collect(),
            blobs_removed: r.blobs_removed,
            bytes_freed: r.bytes_freed,
            partial_fills_removed: r.partial_fills_removed,
        }
    }
}

impl From<eviction::ModelUse> for wire::ModelUse {
    fn from(u: eviction::ModelUse) -> Self {
        wire::ModelUse {
            name: u.model.short_name(),
            hits: u.hits,
            last_used: secs(u.last_used),
        }
    }
}

impl From<LifecycleSnapshot> for wire::LifecycleStats {
    fn from(s: LifecycleSnapshot) -> Self {
        wire::LifecycleStats {
            free_bytes: s.usage.free,
            min_free: s.min_free,
            partial_bytes: s.usage.partial_bytes,
            local_models: s.local_models,
            evictions: s.evictions,
            evicted_models: s.evicted_models,
            evicted_bytes: s.evicted_bytes,
            prunes: s.prunes,
            pruned_models: s.pruned_models,
            pruned_bytes: s.pruned_bytes,
            no_space: s.no_space,
            deferred_blobs: s.deferred_blobs,
            indexing: s.indexing,
            top_models: s.top_models.into_iter().map(Into::into).collect(),
        }
    }
}

impl From<crate::hub::prefetch::FileProgress> for wire::FillProgress {
    fn from(f: crate::hub::prefetch::FileProgress) -> Self {
        wire::FillProgress {
            model: Some(f.name),
            digest: f.hash,
            size: f.size,
            landed: f.landed.min(f.size),
            waiters: 0,
            state: state_text(&f.state),
        }
    }
}

/// A hub cache repo as `lancachectl models` shows it; `units` is the index's usage by
/// snapshot ([`crate::hub::tenant::unit_key`]).
pub fn hub_repo(
    r: &crate::hub::inventory::Repo,
    units: &std::collections::HashMap<String, crate::store::index::Entry>,
) -> wire::HubRepoInfo {
    let revisions: Vec<wire::HubRevision> = r
        .snapshots
        .iter()
        .map(|s| {
            let e = units.get(&crate::hub::tenant::unit_key(&r.repo, &s.commit));
            wire::HubRevision {
                commit: s.commit.clone(),
                refs: s.refs.clone(),
                files: s.files.len() as u64,
                size: s.size(),
                complete: s.complete(),
                last_used: e.map(|e| e.last_access).filter(|&t| t > 0).or(s.modified),
                fetched: e.is_some_and(|e| e.fetched),
            }
        })
        .collect();
    let mut seen = std::collections::BTreeSet::new();
    let size = r
        .snapshots
        .iter()
        .flat_map(|s| s.files.iter())
        .filter(|(_, h, _)| seen.insert(h.clone()))
        .map(|(_, _, n)| n)
        .sum();
    wire::HubRepoInfo {
        name: r.repo.hub_name(),
        kind: match r.repo.kind {
            crate::hub::repo::Kind::Model => "model",
            crate::hub::repo::Kind::Dataset => "dataset",
        }
        .into(),
        size,
        last_used: revisions.iter().filter_map(|v| v.last_used).max(),
        revisions,
    }
}

/// `stats`' cache section takes its usage from the lifecycle's measurement (which counts fills
/// in progress and is what eviction acts on) rather than the proxy's count of `blobs/`, so
/// the numbers a user compares with `max_size` are the ones eviction compares.
pub fn add_lifecycle_usage(cache: &mut wire::CacheStats, lc: &LifecycleSnapshot) {
    cache.usage_bytes = lc.usage.bytes;
    cache.max_size = lc.max_size;
    cache.models = lc.models;
    cache.blobs = lc.usage.blobs;
    cache.evictions = lc.evicted_models;
}

impl From<crate::store::import::Report> for wire::ImportReport {
    fn from(r: crate::store::import::Report) -> Self {
        wire::ImportReport {
            models_imported: r.models_imported.iter().map(|m| m.to_string()).collect(),
            models_skipped: r.models_skipped.iter().map(|m| m.to_string()).collect(),
            blobs_imported: r.blobs_imported,
            bytes_imported: r.bytes_imported,
            blobs_skipped: r.blobs_skipped,
            local: r.local,
            repos_imported: r.others_imported,
            repos_skipped: r.others_skipped,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::fill::{FillSnapshot, Origin};
    use crate::store::usage::Usage;
    use crate::store::{Digest, ModelRef};
    use std::collections::BTreeMap;
    use std::time::Duration;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn model(name: &str) -> ModelRef {
        ModelRef::parse(name).unwrap()
    }

    fn origin() -> Origin {
        Origin {
            registry: "registry.ollama.ai".into(),
            repository: "library/tiny".into(),
        }
    }

    #[test]
    fn fill_progress_keeps_every_field_and_the_state_words() {
        let d = Digest::of(b"layer");
        let p = BlobProgress {
            owner: Owner::Model(model("tiny:1b")),
            digest: d.clone(),
            size: 10,
            landed: 4,
            waiters: 2,
            state: FillStage::Failed("stall".into()),
        };
        assert_eq!(
            wire::FillProgress::from(p),
            wire::FillProgress {
                model: Some("registry.ollama.ai/library/tiny:1b".into()),
                digest: d.to_string(),
                size: 10,
                landed: 4,
                waiters: 2,
                state: "failed: stall".into(),
            }
        );
        for (s, word) in [
            (FillStage::Pending, "pending"),
            (FillStage::Filling, "filling"),
            (FillStage::Publishing, "publishing"),
            (FillStage::Done, "done"),
        ] {
            assert_eq!(state_text(&s), word);
        }
    }

    #[test]
    fn cache_stats_keep_every_field() {
        let d = Digest::of(b"blob");
        let mut failures = BTreeMap::new();
        failures.insert("stall".to_string(), 3);
        let mut per_registry = BTreeMap::new();
        per_registry.insert(
            "hf.co".to_string(),
            RegistryCounts {
                manifest_hits: 21,
                manifest_misses: 22,
                blob_hits: 23,
                blob_misses: 24,
                bytes_from_cache: 25,
                bytes_from_upstream: 26,
            },
        );
        let snap = CacheSnapshot {
            counts: Counts {
                manifest_hits: 1,
                manifest_misses: 2,
                manifest_revalidations: 3,
                manifest_offline_serves: 4,
                blob_hits: 5,
                blob_misses: 6,
                bytes_from_cache: 7,
                bytes_from_upstream: 8,
                fills_completed: 9,
                fills_failed: 10,
                failures: failures.clone(),
                per_registry,
            },
            usage_bytes: 11,
            max_size: 12,
            models: 13,
            blobs: 14,
            evictions: 15,
            fills: vec![FillSnapshot {
                digest: d.clone(),
                origin: origin(),
                size: 100,
                landed: 50,
                waiters: 1,
                state: FillStage::Filling,
            }],
        };
        let mut want_registry = BTreeMap::new();
        want_registry.insert(
            "hf.co".to_string(),
            wire::RegistryStats {
                manifest_hits: 21,
                manifest_misses: 22,
                blob_hits: 23,
                blob_misses: 24,
                bytes_from_cache: 25,
                bytes_from_upstream: 26,
            },
        );
        assert_eq!(
            wire::CacheStats::from(snap),
            wire::CacheStats {
                manifest_hits: 1,
                manifest_misses: 2,
                manifest_revalidations: 3,
                manifest_offline_serves: 4,
                blob_hits: 5,
                blob_misses: 6,
                bytes_from_cache: 7,
                bytes_from_upstream: 8,
                fills_completed: 9,
                fills_failed: 10,
                failures,
                usage_bytes: 11,
                max_size: 12,
                models: 13,
                blobs: 14,
                evictions: 15,
                upstream_max_rate_bytes_per_second: 0,
                upstream_rate_bytes_per_second: 0,
                per_registry: want_registry,
                // A fill in flight knows its repository, not its tag.
                fills: vec![wire::FillProgress {
                    model: Some("registry.ollama.ai/library/tiny".into()),
                    digest: d.to_string(),
                    size: 100,
                    landed: 50,
                    waiters: 1,
                    state: "filling".into(),
                }],
            }
        );
    }

    #[test]
    fn model_info_keeps_every_field() {
        let d = Digest::of(b"manifest");
        let m = CachedModel {
            model: model("tiny:1b"),
            size: 42,
            digest: d.clone(),
            complete: true,
            last_used: Some(at(1_700_000_000)),
            fetched: true,
        };
        assert_eq!(
            wire::ModelInfo::from(m),
            wire::ModelInfo {
                name: "registry.ollama.ai/library/tiny:1b".into(),
                short_name: "tiny:1b".into(),
                size: 42,
                digest: d.to_string(),
                complete: true,
                last_used: Some(1_700_000_000),
                fetched: true,
            }
        );
        // Never used and no mtime: absent on the wire, not 0.
        let unused = CachedModel {
            model: model("tiny:1b"),
            size: 0,
            digest: d,
            complete: false,
            last_used: None,
            fetched: false,
        };
        assert_eq!(wire::ModelInfo::from(unused).last_used, None);
    }

    #[test]
    fn prune_report_keeps_every_field() {
        let r = PruneReport {
            dry_run: true,
            removed: vec![
                PrunedModel {
                    what: Pruned::Model(model("tiny:1b")),
                    bytes: 7,
                    last_used: Some(at(99)),
                },
                PrunedModel {
                    what: Pruned::Unit("hf:o/n@main".into()),
                    bytes: 8,
                    last_used: None,
                },
            ],
            blobs_removed: 3,
            bytes_freed: 15,
            partial_fills_removed: 1,
        };
        assert_eq!(
            wire::PruneReport::from(r),
            wire::PruneReport {
                dry_run: true,
                removed: vec![
                    wire::PrunedModel {
                        name: "tiny:1b".into(),
                        bytes: 7,
                        last_used: Some(99),
                    },
                    wire::PrunedModel {
                        name: "hf:o/n@main".into(),
                        bytes: 8,
                        last_used: None,
                    },
                ],
                blobs_removed: 3,
                bytes_freed: 15,
                partial_fills_removed: 1,
            }
        );
    }

    fn lifecycle() -> LifecycleSnapshot {
        LifecycleSnapshot {
            usage: Usage {
                bytes: 1,
                blobs: 2,
                partial_bytes: 3,
                free: 4,
            },
            max_size: 5,
            min_free: 6,
            models: 7,
            local_models: 8,
            evictions: 9,
            evicted_models: 10,
            evicted_bytes: 11,
            prunes: 12,
            pruned_models: 13,
            pruned_bytes: 14,
            no_space: 15,
            deferred_blobs: 16,
            indexing: true,
            top_models: vec![eviction::ModelUse {
                model: model("tiny:1b"),
                hits: 17,
                last_used: at(18),
            }],
        }
    }

    #[test]
    fn lifecycle_stats_keep_every_field() {
        assert_eq!(
            wire::LifecycleStats::from(lifecycle()),
            wire::LifecycleStats {
                free_bytes: 4,
                min_free: 6,
                partial_bytes: 3,
                local_models: 8,
                evictions: 9,
                evicted_models: 10,
                evicted_bytes: 11,
                prunes: 12,
                pruned_models: 13,
                pruned_bytes: 14,
                no_space: 15,
                deferred_blobs: 16,
                indexing: true,
                top_models: vec![wire::ModelUse {
                    name: "tiny:1b".into(),
                    hits: 17,
                    last_used: 18,
                }],
            }
        );
    }

    #[test]
    fn stats_cache_section_takes_the_lifecycle_usage() {
        let mut cache = wire::CacheStats {
            usage_bytes: 100,
            max_size: 100,
            models: 100,
            blobs: 100,
            evictions: 100,
            blob_hits: 5,
            ..Default::default()
        };
        add_lifecycle_usage(&mut cache, &lifecycle());
        assert_eq!(
            (
                cache.usage_bytes,
                cache.max_size,
                cache.models,
                cache.blobs,
                cache.evictions
            ),
            (1, 5, 7, 2, 10)
        );
        assert_eq!(cache.blob_hits, 5, "the counters are left alone");
    }
}
