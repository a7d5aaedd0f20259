//! `lancachectl prefetch` on top of the proxy: the model's manifest is resolved through the
//! same path a client pull takes (revalidated with upstream, stored, marked fetched in the
//! access index), then a fill is joined or started for its config and every layer, with the
//! same space check a client's request gets. Progress comes from the fill registry, per blob of
//! each model; failures are remembered here because a failed fill leaves the registry at once.

use futures_util::future::BoxFuture;
use http::{HeaderMap, Response};
use http_body_util::BodyExt;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use super::manifests::{manifest_url, resolve_manifest, Target};
use super::{base_url, join_fill};
use crate::http::body::Body;
use crate::state::State;
use crate::store::fill::{FillStage, Joined, Origin};
use crate::store::prefetch::{BlobProgress, Owner, Prefetcher};
use crate::store::{Digest, Manifest, ModelRef};

pub struct ProxyPrefetcher {
    /// Weak: the prefetcher lives in `State` itself.
    state: Weak<State>,
    /// Why the last fill of a blob failed, until it is prefetched again.
    failed: Arc<Mutex<HashMap<Digest, String>>>,
}

impl ProxyPrefetcher {
    pub fn new(state: &Arc<State>) -> ProxyPrefetcher {
        ProxyPrefetcher {
            state: Arc::downgrade(state),
            failed: Arc::default(),
        }
    }
}

impl Prefetcher for ProxyPrefetcher {
    fn start(&self, model: ModelRef) -> BoxFuture<'static, Result<(), String>> {
        let state = self.state.clone();
        let failed = self.failed.clone();
        Box::pin(async move {
            let state = state.upgrade().ok_or("the daemon is stopping")?;
            let cfg = state.config();
            let Some(base) = base_url(&cfg, &model.host) else {
                return Err(format!(
                    "registry {} is not in [upstream.registries]",
                    model.host
                ));
            };
            let name = model.repository();
            let url = manifest_url(&base, &name, &model.tag)?;
            let target = Target::Tag(model.clone());
            let resolved =
                match resolve_manifest(&HeaderMap::new(), &state, &model.host, &name, target, url)
                    .await
                {
                    Ok(r) => r,
                    Err(resp) => return Err(refusal(resp).await),
                };
            let manifest = Manifest::parse(&resolved.bytes)
                .map_err(|e| format!("upstream's manifest is not usable: {e}"))?;
            for blob in manifest.blobs() {
                state
                    .proxy
                    .learn(&blob.digest, &model.host, &name, Some(blob.size));
                failed.lock().unwrap().remove(&blob.digest);
                let origin = Origin {
                    registry: model.host.clone(),
                    repository: name.clone(),
                };
                match join_fill(&state, &blob.digest, blob.size, blob.size, origin).await {
                    Ok(Joined::Published) => {}
                    Ok(Joined::Filling(fill)) => {
                        let failed = failed.clone();
                        let digest = blob.digest.clone();
                        tokio::spawn(async move {
                            if let Err(e) = fill.finished().await {
                                failed.lock().unwrap().insert(digest, e);
                            }
                        });
                    }
                    Err(e) => return Err(e.to_string()),
                }
            }
            Ok(())
        })
    }

    fn progress(&self, models: &[ModelRef]) -> Vec<BlobProgress> {
        let Some(state) = self.state.upgrade() else {
            return vec![];
        };
        let fills = state.proxy.fills.snapshot();
        if models.is_empty() {
            return fills.iter().map(BlobProgress::of_fill_in_flight).collect();
        }
        let failed = self.failed.lock().unwrap();
        let mut out = Vec::new();
        for m in models {
            // No manifest yet: the control handler reports the model as pending.
            let Ok(bytes) = std::fs::read(state.layout.manifest_path(m)) else {
                continue;
            };
            let Ok(manifest) = Manifest::parse(&bytes) else {
                continue;
            };
            for b in manifest.blobs() {
                let owner = Owner::Model(m.clone());
                if let Some(f) = fills.iter().find(|f| f.digest == b.digest) {
                    out.push(BlobProgress::of_fill(f, owner));
                    continue;
                }
                let done = state.layout.blob_path(&b.digest).exists();
                let st = if done {
                    FillStage::Done
                } else if let Some(e) = failed.get(&b.digest) {
                    FillStage::Failed(e.clone())
                } else {
                    FillStage::Pending
                };
                out.push(BlobProgress {
                    owner,
                    digest: b.digest.clone(),
                    size: b.size,
                    landed: if done { b.size } else { 0 },
                    waiters: 0,
                    state: st,
                });
            }
        }
        out
    }
}

/// Upstream's refusal (404, 401, 502...) worded for the user: the registry error's message.
async fn refusal(resp: Response<Body>) -> String {
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let message = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["errors"][0]["message"].as_str().map(str::to_string));
    match message {
        Some(m) => format!("upstream answered {status}: {m}"),
        None => format!("upstream answered {status}"),
    }
}
