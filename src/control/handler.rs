//! Carries out one control request. Actions that change things (reload, prune, prefetch, CA
//! rotation) are audited: logged with the caller's uid and pid and the outcome. The store
//! answers in its own types; [`super::wire`] turns them into the protocol's.

use lancache_protocol::{
    CaInfo, CacheStats, ErrorKind, ErrorReply, FillProgress, PruneRequest, Request, Response,
    Stats, Status, SubsystemStatus,
};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::auth::Caller;
use crate::state::State;

pub async fn handle(req: Request, caller: &Caller, state: &Arc<State>) -> Response {
    let name = req.name();
    let audited = !matches!(
        req,
        Request::Status
            | Request::Stats
            | Request::Models
            | Request::FillProgress { .. }
            | Request::Ca { rotate: false }
            | Request::Export { .. }
            | Request::Import { .. }
    );
    let resp = match req {
        Request::Status => Response::Status(status(state)),
        Request::Stats => Response::Stats(stats(state)),
        Request::Reload => match crate::reload::reload(state) {
            Ok(report) => Response::Reloaded(report),
            Err(e) => Response::Error(ErrorReply {
                kind: ErrorKind::InvalidConfig,
                message: e,
            }),
        },
        Request::Models => models(state).await,
        Request::Prune(p) => prune(state, p).await,
        Request::Prefetch { names } => prefetch(state, names).await,
        Request::FillProgress { names } => fill_progress(state, names),
        Request::Ca { rotate } => ca(state, rotate),
        // The connection loop streams these itself (a tar follows the request or the answer).
        Request::Import { .. } | Request::Export { .. } => error(
            ErrorKind::BadRequest,
            "import and export are answered by the connection loop",
        ),
    };
    if audited {
        let outcome = match &resp {
            Response::Error(e) => format!("failed: {}", e.message),
            _ => "ok".to_string(),
        };
        tracing::info!(target: "audit", uid = caller.uid, pid = ?caller.pid, action = name, %outcome, "control action");
    }
    resp
}

fn error(kind: ErrorKind, message: impl Into<String>) -> Response {
    Response::Error(ErrorReply {
        kind,
        message: message.into(),
    })
}

/// How long a control request waits for the access index to open at start-up.
const INDEX_WAIT: Duration = Duration::from_secs(10);

async fn models(state: &Arc<State>) -> Response {
    if let Err(e) = state.index.wait_open(INDEX_WAIT).await {
        return error(ErrorKind::Failed, format!("{e:#}"));
    }
    let s = state.clone();
    match tokio::task::spawn_blocking(move || {
        let entries = s.index.manifests().unwrap_or_default();
        let units = s.index.units().unwrap_or_default();
        let hub = crate::hub::inventory::list(&s.hub.cache);
        (crate::store::models::list(&s.layout, &entries), hub, units)
    })
    .await
    {
        Ok((models, hub, units)) => Response::Models {
            models: models.into_iter().map(Into::into).collect(),
            hub: hub
                .iter()
                .map(|r| super::wire::hub_repo(r, &units))
                .collect(),
        },
        Err(e) => error(ErrorKind::Failed, format!("listing models: {e}")),
    }
}

async fn prune(state: &Arc<State>, p: PruneRequest) -> Response {
    use crate::store::prune::{Criteria, PruneError, Store, STALE_PARTIAL_SECS};
    if p.older_than_secs.is_none() && p.max_size.is_none() && p.models.is_empty() {
        return error(
            ErrorKind::BadRequest,
            "say what to prune: older_than_secs, max_size or models",
        );
    }
    if p.cluster {
        return prune_cluster(state, p).await;
    }
    let mut models = Vec::new();
    let mut units = Vec::new();
    for n in &p.models {
        if crate::hub::repo::HubRef::is_hub_name(n) {
            match hub_units(state, n).await {
                Ok(u) => units.extend(u),
                Err(e) => return e,
            }
            continue;
        }
        match crate::store::ModelRef::parse(n) {
            Ok(m) => models.push(m),
            Err(e) => return error(ErrorKind::BadRequest, e.to_string()),
        }
    }
    if let Err(e) = state.index.wait_open(INDEX_WAIT).await {
        return error(ErrorKind::Failed, format!("{e:#}"));
    }
    let config = state.config();
    let criteria = Criteria {
        older_than: p.older_than_secs,
        max_size: p.max_size,
        free_bytes: None,
        models,
        units,
        include_local: p.include_local || config.cache.evict_local,
        dry_run: p.dry_run,
        partial_older_than: p.older_than_secs.unwrap_or(STALE_PARTIAL_SECS),
    };
    let _turn = state.lifecycle.lock.lock().await;
    let s = state.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        let store = Store {
            layout: &s.layout,
            index: &s.index,
            pins: &s.pins,
            deferred: &s.lifecycle.deferred,
            tenants: s.tenants(),
        };
        crate::store::prune::prune(&store, &criteria)
    })
    .await;
    match outcome {
        Ok(Ok(report)) => {
            state.lifecycle.count_prune(&report);
            if !report.dry_run {
                tracing::info!(
                    models = ?report.names(),
                    blobs = report.blobs_removed,
                    bytes_freed = report.bytes_freed,
                    partial_fills = report.partial_fills_removed,
                    "pruned"
                );
                // Refresh the usage `stats` shows.
                state.lifecycle.wake.notify_one();
            }
            Response::Pruned(report.into())
        }
        Ok(Err(e @ PruneError::NotFound(_))) => error(ErrorKind::NotFound, e.to_string()),
        Ok(Err(e @ PruneError::Refused(_))) => error(ErrorKind::Failed, e.to_string()),
        Err(e) => error(ErrorKind::Failed, format!("prune: {e}")),
    }
}

/// `prune --cluster`: the shared store, under the local prune's rules (src/cluster/prune.rs).
async fn prune_cluster(state: &Arc<State>, p: PruneRequest) -> Response {
    let Some(c) = state.cluster.get() else {
        return error(
            ErrorKind::BadRequest,
            "prune --cluster: this node is not in cluster mode ([cluster] is not configured)",
        );
    };
    let mut models = Vec::new();
    for n in &p.models {
        match crate::store::ModelRef::parse(n) {
            Ok(m) => models.push(m),
            Err(e) => return error(ErrorKind::BadRequest, e.to_string()),
        }
    }
    let criteria = crate::cluster::prune::StorePrune {
        older_than: p.older_than_secs.map(Duration::from_secs),
        max_size: p.max_size,
        models,
        dry_run: p.dry_run,
    };
    match crate::cluster::prune::prune(c, &criteria).await {
        Ok(report) => {
            if !report.dry_run {
                tracing::info!(
                    models = ?report.names(),
                    blobs = report.blobs_removed,
                    bytes_freed = report.bytes_freed,
                    "pruned the cluster store"
                );
            }
            Response::Pruned(report.into())
        }
        Err(e @ crate::cluster::prune::StorePruneError::NotFound(_)) => {
            error(ErrorKind::NotFound, e.to_string())
        }
        Err(e) => error(ErrorKind::Failed, format!("prune --cluster: {e}")),
    }
}

/// The tenant units `hf:org/name[@rev]` names: one snapshot (a revision or commit), or every
/// snapshot of the repo.
async fn hub_units(state: &Arc<State>, name: &str) -> Result<Vec<String>, Response> {
    use crate::hub::repo::HubRef;
    let h = HubRef::parse(name).map_err(|e| error(ErrorKind::BadRequest, e))?;
    let s = state.clone();
    let r = h.repo.clone();
    let repo = tokio::task::spawn_blocking(move || crate::hub::inventory::repo(&s.hub.cache, &r))
        .await
        .map_err(|e| error(ErrorKind::Failed, format!("listing {name}: {e}")))?;
    let commits: Vec<&str> = match &h.rev {
        None => repo.snapshots.iter().map(|s| s.commit.as_str()).collect(),
        Some(rev) => {
            let c = repo.refs.get(rev).map(String::as_str).unwrap_or(rev);
            repo.snapshots
                .iter()
                .filter(|s| s.commit == c)
                .map(|s| s.commit.as_str())
                .collect()
        }
    };
    if commits.is_empty() {
        return Err(error(
            ErrorKind::NotFound,
            format!("{name} is not in the cache (see `lancachectl models`)"),
        ));
    }
    Ok(commits
        .into_iter()
        .map(|c| crate::hub::tenant::unit_key(&h.repo, c))
        .collect())
}

/// `lancachectl import`: the tar arrives on the control connection (`reader`, blocking). Staging
/// (copy, hash, verify) needs no lock; checking completeness and publishing happen under the
/// lifecycle lock, so eviction never sees a blob before its manifest.
pub async fn import(
    state: &Arc<State>,
    caller: &Caller,
    reader: Box<dyn std::io::Read + Send>,
    source: String,
    local: bool,
) -> Response {
    let resp = import_inner(state, reader, local).await;
    let outcome = match &resp {
        Response::Error(e) => format!("failed: {}", e.message),
        _ => "ok".to_string(),
    };
    tracing::info!(target: "audit", uid = caller.uid, pid = ?caller.pid, action = "import", %source, local, %outcome, "control action");
    resp
}

async fn import_inner(
    state: &Arc<State>,
    reader: Box<dyn std::io::Read + Send>,
    local: bool,
) -> Response {
    if let Err(e) = state.index.wait_open(INDEX_WAIT).await {
        return error(ErrorKind::Failed, format!("{e:#}"));
    }
    let s = state.clone();
    let staged = match tokio::task::spawn_blocking(move || {
        let st = s.clone();
        let vouch =
            Box::new(move |r: &crate::hub::repo::RepoId| st.hub.access.vouch_offline(&r.key()));
        let hub = crate::hub::bundle::HubImport::new(s.hub.cache.clone(), s.layout.clone(), vouch);
        crate::store::import::stage_tar_stream(&s.layout, reader, Some(Box::new(hub)))
    })
    .await
    {
        Ok(Ok(st)) => st,
        Ok(Err(e)) => return error(ErrorKind::Failed, format!("nothing imported: {}", e.0)),
        Err(e) => return error(ErrorKind::Failed, format!("import: {e}")),
    };
    let _turn = state.lifecycle.lock.lock().await;
    let s = state.clone();
    let outcome =
        tokio::task::spawn_blocking(move || staged.publish(&s.layout, &s.index, local)).await;
    match outcome {
        Ok(Ok(report)) => {
            tracing::info!(
                imported = ?report.models_imported.iter().map(|m| m.to_string()).collect::<Vec<_>>(),
                skipped = report.models_skipped.len(),
                blobs = report.blobs_imported,
                bytes = report.bytes_imported,
                local,
                "imported"
            );
            if let Err(e) = state.index.flush() {
                tracing::warn!("index flush after import: {e:#}");
            }
            // Imported bytes count against max_size.
            state.lifecycle.wake.notify_one();
            Response::Imported(report.into())
        }
        Ok(Err(e)) => error(ErrorKind::Failed, format!("nothing imported: {}", e.0)),
        Err(e) => error(ErrorKind::Failed, format!("import: {e}")),
    }
}

fn parse_names(names: &[String]) -> Result<Vec<crate::store::ModelRef>, String> {
    let mut out: Vec<crate::store::ModelRef> = Vec::new();
    for n in names {
        let m = crate::store::ModelRef::parse(n).map_err(|e| e.to_string())?;
        if !out.contains(&m) {
            out.push(m);
        }
    }
    Ok(out)
}

const NO_PREFETCHER: &str = "prefetch is not available: no fill engine is installed in this daemon; pull the model once with `ollama pull` through the cache instead";

async fn prefetch(state: &Arc<State>, names: Vec<String>) -> Response {
    let (hub, names) = match split_hub(names) {
        Ok(x) => x,
        Err(e) => return error(ErrorKind::BadRequest, e),
    };
    let mut fills = Vec::new();
    for h in &hub {
        match crate::hub::prefetch::start(state, h).await {
            Ok(name) => fills.extend(hub_progress(state, &name)),
            Err(e) => return error(ErrorKind::Failed, format!("cannot prefetch {h}: {e}")),
        }
    }
    if names.is_empty() && !hub.is_empty() {
        return Response::Prefetch { fills };
    }
    let models = match parse_names(&names) {
        Ok(m) if m.is_empty() => return error(ErrorKind::BadRequest, "name at least one model"),
        Ok(m) => m,
        Err(e) => return error(ErrorKind::BadRequest, e),
    };
    let Some(p) = state.prefetcher().cloned() else {
        return error(ErrorKind::Unsupported, NO_PREFETCHER);
    };
    for m in &models {
        if let Err(e) = p.start(m.clone()).await {
            return error(
                ErrorKind::Failed,
                format!("cannot prefetch {}: {e}", m.short_name()),
            );
        }
        tracing::info!(model = %m, "prefetch started");
    }
    fills.extend(progress_of(&*p, &models));
    Response::Prefetch { fills }
}

/// The `hf:…` names (canonical, in order, without repeats) apart from the others.
fn split_hub(names: Vec<String>) -> Result<(Vec<crate::hub::repo::HubRef>, Vec<String>), String> {
    use crate::hub::repo::HubRef;
    let mut hub: Vec<HubRef> = Vec::new();
    let mut rest = Vec::new();
    for n in names {
        if HubRef::is_hub_name(&n) {
            let mut h = HubRef::parse(&n)?;
            h.rev = Some(h.rev_or_main().to_string());
            if !hub.contains(&h) {
                hub.push(h);
            }
        } else {
            rest.push(n);
        }
    }
    Ok((hub, rest))
}

/// A Hub prefetch's files, or one "pending" entry while it has none.
fn hub_progress(state: &Arc<State>, name: &str) -> Vec<FillProgress> {
    match state.hub.prefetch.progress(state, name) {
        Some(files) if !files.is_empty() => files.into_iter().map(Into::into).collect(),
        _ => vec![FillProgress {
            model: Some(name.to_string()),
            digest: String::new(),
            size: 0,
            landed: 0,
            waiters: 0,
            state: "pending".into(),
        }],
    }
}

fn fill_progress(state: &Arc<State>, names: Vec<String>) -> Response {
    let (hub, names) = match split_hub(names) {
        Ok(x) => x,
        Err(e) => return error(ErrorKind::BadRequest, e),
    };
    let mut fills: Vec<FillProgress> = hub
        .iter()
        .flat_map(|h| hub_progress(state, &h.to_string()))
        .collect();
    if names.is_empty() && !hub.is_empty() {
        return Response::Prefetch { fills };
    }
    let models = match parse_names(&names) {
        Ok(m) => m,
        Err(e) => return error(ErrorKind::BadRequest, e),
    };
    let Some(p) = state.prefetcher() else {
        return error(ErrorKind::Unsupported, NO_PREFETCHER);
    };
    fills.extend(progress_of(&**p, &models));
    Response::Prefetch { fills }
}

/// The engine's progress, with a "pending" entry for each asked-for model it has nothing on
/// yet, so a client always sees every model it asked for.
fn progress_of(
    p: &dyn crate::store::prefetch::Prefetcher,
    models: &[crate::store::ModelRef],
) -> Vec<FillProgress> {
    let mut fills: Vec<FillProgress> = p.progress(models).into_iter().map(Into::into).collect();
    for m in models {
        let name = m.to_string();
        if !fills.iter().any(|f| f.model.as_deref() == Some(&name)) {
            // Nothing from the engine yet, not even a digest: a protocol-only entry.
            fills.push(FillProgress {
                model: Some(name),
                digest: String::new(),
                size: 0,
                landed: 0,
                waiters: 0,
                state: "pending".into(),
            });
        }
    }
    fills
}

/// `lancachectl ca [--rotate]`: the CA clients must trust (made on first use), or a new one.
fn ca(state: &State, rotate: bool) -> Response {
    let config = state.config();
    let result = if rotate {
        state.tls.rotate(&config)
    } else {
        state.tls.ca(&config)
    };
    match result {
        Ok(ca) => Response::Ca(CaInfo {
            pem: ca.pem.clone(),
            path: ca.cert_path().display().to_string(),
            fingerprint_sha256: ca.fingerprint.clone(),
            rotated: rotate,
        }),
        Err(e) => Response::Error(ErrorReply {
            kind: ErrorKind::Failed,
            message: format!(
                "the cache's CA in {}: {e:#}",
                state.tls.ca_path(&config).display()
            ),
        }),
    }
}

pub fn status(state: &State) -> Status {
    Status {
        version: env!("CARGO_PKG_VERSION").to_string(),
        pid: std::process::id(),
        uptime_secs: state.started.elapsed().as_secs(),
        config: state.source.to_string(),
        subsystems: state
            .health
            .snapshot()
            .into_iter()
            .map(|(name, h)| SubsystemStatus {
                name: name.to_string(),
                healthy: h.healthy,
                restarts: h.restarts,
                listeners: h.listeners,
                last_error: h.last_error,
            })
            .collect(),
        cluster: state.cluster.get().map(|c| {
            let mut leases: Vec<String> = c.leases_held().iter().map(|d| d.to_string()).collect();
            leases.sort();
            lancache_protocol::ClusterStatus {
                node: c.me.to_string(),
                nodes: c.nodes.iter().map(|n| n.to_string()).collect(),
                store: state.config().cluster.store.clone(),
                store_reachable: c.reachable(),
                leases_held: leases,
                healthy_nodes: c.healthy().iter().map(|n| n.to_string()).collect(),
            }
        }),
    }
}

pub fn stats(state: &State) -> Stats {
    let c = &state.counters;
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let mut stats = Stats {
        uptime_secs: state.started.elapsed().as_secs(),
        ..Default::default()
    };
    stats.control.requests = get(&c.control_requests);
    stats.control.refused = get(&c.control_refused);
    stats.control.bad_frames = get(&c.control_bad_frames);
    stats.http.connections = get(&c.http_connections);
    stats.http.requests = get(&c.http_requests);
    if state.health.snapshot().iter().any(|(n, _)| *n == "https") {
        stats.tls = Some(state.tls.stats());
    }
    for (class, counter) in [
        ("2xx", &c.http_2xx),
        ("3xx", &c.http_3xx),
        ("4xx", &c.http_4xx),
        ("5xx", &c.http_5xx),
    ] {
        stats.http.responses.insert(class.to_string(), get(counter));
    }
    // The DNS section is there when the DNS subsystem is (it has sockets).
    if state
        .health
        .snapshot()
        .iter()
        .any(|(name, _)| *name == "dns")
    {
        stats.dns = Some(state.dns_stats.snapshot());
    }
    let mut cache = cache_stats(state);
    // After the proxy's scan, as before the store had types of its own: the lifecycle's
    // numbers (`indexing` above all) are then the freshest in the answer.
    let lifecycle = crate::store::eviction::snapshot(state);
    super::wire::add_lifecycle_usage(&mut cache, &lifecycle);
    stats.cache = Some(cache);
    stats.lifecycle = Some(lifecycle.into());
    stats.cluster = state
        .cluster
        .get()
        .map(|c| lancache_protocol::ClusterStats {
            store_reachable: c.reachable(),
            leases_held: c.leases_held().len() as u64,
            healthy_nodes: c.healthy().len() as u64,
        });
    stats
}

/// The cache section as `/cache/stats` serves it: the proxy's view, without the lifecycle's
/// usage that [`stats`] puts over it.
pub fn cache_stats(state: &State) -> CacheStats {
    let mut c: CacheStats = crate::proxy::cache_stats(state).into();
    let limiter = &crate::store::ratelimit::UPSTREAM;
    c.upstream_max_rate_bytes_per_second = limiter.rate();
    c.upstream_rate_bytes_per_second = limiter.rate_in_use();
    c
}
