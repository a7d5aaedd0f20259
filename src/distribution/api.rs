//! The JSON APIs the web UI polls and scripts read: `/api/models`, `/api/info`,
//! `/api/sessions`. Nothing here reveals an absolute filesystem path; addresses shown are the
//! clients' own (see [`super::client`]).

use http::{Request, Response, StatusCode};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use super::catalog::Model;
use super::public_url::public_url;
use crate::http::body::{self, Body};
use crate::http::Peer;
use crate::state::State;
use crate::store::index::Entry;

fn base_url<B>(req: &Request<B>, peer: Peer, state: &State) -> String {
    public_url(&state.config(), req.headers(), peer.local, peer.tls)
}

fn model_json(m: &Model, base: &str) -> Value {
    let short = m.name.short_name();
    let layer = |l: &crate::store::manifest::Layer| json!({ "digest": l.digest.as_str(), "size": l.size, "media_type": l.media_type });
    let modified = m
        .modified
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    json!({
        "name": m.name.to_string(),
        "short_name": short,
        "host": m.name.host,
        "namespace": m.name.namespace,
        "model": m.name.model,
        "tag": m.name.tag,
        "id": &m.digest.hex()[..12],
        "digest": m.digest.as_str(),
        "size": m.size(),
        "modified": humantime::format_rfc3339_seconds(m.modified).to_string(),
        "modified_unix": modified,
        "complete": m.complete,
        "missing": m.missing.iter().map(|d| d.as_str()).collect::<Vec<_>>(),
        "config": layer(&m.manifest.config),
        "layers": m.manifest.layers.iter().map(layer).collect::<Vec<_>>(),
        "urls": {
            "manifest": format!("{base}/manifests/{}", m.name),
            "tar": format!("{base}/models/{}", m.name),
        },
        "commands": {
            "install_sh": format!("curl -fsSL {base}/install.sh | sh -s -- {short}"),
            "install_ps1": format!("& ([scriptblock]::Create((irm {base}/install.ps1))) {short}"),
            "tar": format!("curl -fsS {base}/models/{short} | tar -x -C ~/.ollama/models"),
        },
    })
}

/// A Hugging Face repo of the hub cache: `"kind": "huggingface"` sets it apart from the
/// Ollama entries (which have no `kind`, exactly as before), `"type"` is `model` or `dataset`.
fn hub_json(r: &crate::hub::inventory::Repo, units: &HashMap<String, Entry>, base: &str) -> Value {
    let info = crate::control::wire::hub_repo(r, units);
    let dataset = r.repo.kind == crate::hub::repo::Kind::Dataset;
    let kind_flag = if dataset { " --repo-type dataset" } else { "" };
    json!({
        "kind": "huggingface",
        "type": info.kind,
        "name": info.name,
        "repo": r.repo.id,
        "size": info.size,
        "complete": !info.revisions.is_empty() && info.revisions.iter().all(|v| v.complete),
        "last_used_unix": info.last_used,
        "revisions": info.revisions.iter().map(|v| json!({
            "commit": v.commit,
            "refs": v.refs,
            "files": v.files,
            "size": v.size,
            "complete": v.complete,
            "last_used_unix": v.last_used,
            "fetched": v.fetched,
        })).collect::<Vec<_>>(),
        "commands": {
            "env": format!("export HF_ENDPOINT={base}/hf"),
            "download": format!("HF_ENDPOINT={base}/hf hf download {}{kind_flag}", r.repo.id),
        },
    })
}

/// `GET /api/models`: a JSON array (`[]` when the cache is empty): the Ollama models, then the
/// Hugging Face repos (`"kind": "huggingface"`); `?kind=ollama` or `?kind=huggingface` keeps
/// one of them. `?format=text` gives one tab-separated line per Ollama model (short name, full
/// name, ID, size, complete) for shell scripts.
pub async fn models<B>(req: &Request<B>, peer: Peer, state: &Arc<State>) -> Response<Body> {
    let snap = super::catalog::current(state).await;
    if req.uri().query() == Some("format=text") {
        let text: String = snap
            .models
            .iter()
            .map(|m| {
                format!(
                    "{}\t{}\t{}\t{}\t{}\n",
                    m.name.short_name(),
                    m.name,
                    &m.digest.hex()[..12],
                    m.size(),
                    if m.complete { "complete" } else { "incomplete" }
                )
            })
            .collect();
        let mut r = body::text(StatusCode::OK, text);
        if snap.models.is_empty() {
            *r.body_mut() = body::empty();
        }
        return r;
    }
    let base = base_url(req, peer, state);
    let kind = req
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|p| p.strip_prefix("kind=")));
    let mut list: Vec<Value> = Vec::new();
    if kind.is_none_or(|k| k == "ollama") {
        list.extend(snap.models.iter().map(|m| model_json(m, &base)));
    }
    if kind.is_none_or(|k| k == "huggingface") {
        let s = state.clone();
        let listed = tokio::task::spawn_blocking(move || {
            (
                crate::hub::inventory::list(&s.hub.cache),
                s.index.units().unwrap_or_default(),
            )
        })
        .await;
        if let Ok((repos, units)) = listed {
            list.extend(repos.iter().map(|r| hub_json(r, &units, &base)));
        }
    }
    body::json(StatusCode::OK, &list)
}

/// `GET /api/sessions`: client downloads in progress.
pub fn sessions(state: &State) -> Response<Body> {
    body::json(StatusCode::OK, &state.sessions.list())
}

fn disk(state: &State) -> (Option<u64>, Option<u64>) {
    match nix::sys::statvfs::statvfs(state.layout.root()) {
        Ok(s) => {
            let frag = s.fragment_size();
            (Some(s.blocks() * frag), Some(s.blocks_available() * frag))
        }
        Err(_) => (None, None),
    }
}

/// `GET /api/info`: version, uptime, cache usage and limits, counts, live fills, the public URL.
pub async fn info<B>(req: &Request<B>, peer: Peer, state: &Arc<State>) -> Response<Body> {
    let config = state.config();
    let snap = super::catalog::current(state).await;
    let stats = crate::control::handler::stats(state);
    let (disk_total, disk_free) = disk(state);
    let complete = snap.models.iter().filter(|m| m.complete).count();
    let (fills, hit_ratio, hits) = match &stats.cache {
        Some(c) => {
            let total = c.bytes_from_cache + c.bytes_from_upstream;
            (
                serde_json::to_value(&c.fills).unwrap_or(Value::Null),
                (total > 0).then(|| c.bytes_from_cache as f64 / total as f64),
                json!({
                    "blob_hits": c.blob_hits, "blob_misses": c.blob_misses,
                    "manifest_hits": c.manifest_hits, "manifest_misses": c.manifest_misses,
                    "bytes_from_cache": c.bytes_from_cache,
                    "bytes_from_upstream": c.bytes_from_upstream,
                }),
            )
        }
        None => (json!([]), None, Value::Null),
    };
    let writable = state.distribution.writable.check(&state.layout);
    body::json(
        StatusCode::OK,
        &json!({
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_secs": state.started.elapsed().as_secs(),
            "public_url": base_url(req, peer, state),
            "healthy": state.health.all_healthy() && writable.is_ok(),
            "cache": {
                "usage_bytes": snap.usage_bytes,
                "max_size": config.cache.max_size.0,
                "min_free": config.cache.min_free.0,
                "disk_total_bytes": disk_total,
                "disk_free_bytes": disk_free,
                "models": snap.models.len(),
                "complete_models": complete,
                "incomplete_models": snap.models.len() - complete,
                "blobs": snap.blob_count,
                "unreadable_manifests": snap.skipped.len(),
                "writable": writable.is_ok(),
            },
            "sessions": state.sessions.len(),
            "fills": fills,
            "hit_ratio": hit_ratio,
            "hits": hits,
        }),
    )
}
