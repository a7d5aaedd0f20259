//! Routes every HTTP(S) request to the subsystem that owns its path. The registry API (`/v2/`)
//! goes to the proxy; the data plane and the distribution endpoints to theirs. On a relayed
//! host (hf.co, see `proxy::relay`) everything but the registry API and blobs goes upstream
//! instead: that host's paths are not ours, while the cache's own endpoints stay on its own
//! name. A `HEAD` is routed like a `GET` and its body dropped here, once, rather than in every
//! handler.

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::json;
use std::sync::Arc;

use super::body::{self, Body};
use super::Peer;
use crate::state::State;
use crate::tls::setup::Script;

pub async fn route(req: Request<Incoming>, peer: Peer, state: Arc<State>) -> Response<Body> {
    crate::state::Counters::bump(&state.counters.http_requests);
    let is_head = req.method() == Method::HEAD;
    let mut resp = dispatch(req, peer, &state).await;
    state.counters.count_status(resp.status().as_u16());
    if is_head {
        *resp.body_mut() = body::empty();
    }
    resp
}

async fn dispatch(req: Request<Incoming>, peer: Peer, state: &Arc<State>) -> Response<Body> {
    use crate::proxy::upstream::{check_hops, HOPS, LOOP_HEADER};
    let hops = match req
        .headers()
        .get(LOOP_HEADER)
        .map(|v| check_hops(v.as_bytes()))
    {
        None => Arc::from(""),
        Some(Ok(hops)) => hops,
        Some(Err(why)) => {
            // Our own upstream request came back to us (DNS points the registry at the cache,
            // or two caches name each other as parents).
            tracing::warn!(
                peer = %peer.addr,
                host = ?req.headers().get(http::header::HOST),
                path = %req.uri().path(),
                "request loop refused (508): {why}"
            );
            return body::text(StatusCode::LOOP_DETECTED, format!("request loop: {why}"));
        }
    };
    HOPS.scope(hops, dispatch_inner(req, peer, state)).await
}

async fn dispatch_inner(req: Request<Incoming>, peer: Peer, state: &Arc<State>) -> Response<Body> {
    use crate::distribution::{api, models, scripts, webui};
    // The Hub (`/hf/...`, or `Host: huggingface.co`) before the cache's own `/api/models`.
    if let Some(prefix) = crate::hub::matches(&state.config(), &req) {
        return crate::hub::handle(req, prefix, peer, state).await;
    }
    let path = req.uri().path();
    if !crate::proxy::relay::stays_with_cache(path) {
        if let Some(base) = crate::proxy::relay::target(&state.config(), &req) {
            return crate::proxy::relay::handle(req, &base, state).await;
        }
    }
    let path = req.uri().path();
    match (req.method(), path) {
        (&Method::GET | &Method::HEAD, "/health") => health(state),
        (&Method::GET | &Method::HEAD, "/cache/stats") => {
            body::json(StatusCode::OK, &crate::control::handler::cache_stats(state))
        }
        (&Method::GET | &Method::HEAD, p) if p == "/v2" || p.starts_with("/v2/") => {
            crate::proxy::registry::handle(req, peer, state).await
        }
        (&Method::GET | &Method::HEAD, p) if p.starts_with("/blobs/") => {
            crate::proxy::dataplane::handle(req, peer, state).await
        }
        (_, p) if p == "/v2" || p.starts_with("/v2/") => crate::proxy::registry::error(
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
            "this cache is read-only",
        ),
        (&Method::GET | &Method::HEAD, "/") => webui::page(),
        (&Method::GET | &Method::HEAD, "/api/models") => api::models(&req, peer, state).await,
        (&Method::GET | &Method::HEAD, "/api/info") => api::info(&req, peer, state).await,
        (&Method::GET | &Method::HEAD, "/api/sessions") => api::sessions(state),
        (&Method::GET | &Method::HEAD, p) if p.starts_with("/manifests/") => {
            models::manifest(&req, state).await
        }
        (&Method::GET | &Method::HEAD, p) if p.starts_with("/models/") => {
            models::tar(&req, peer, state).await
        }
        (&Method::GET | &Method::HEAD, "/install.sh") => {
            scripts::serve(&req, peer, state, scripts::Script::Sh)
        }
        (&Method::GET | &Method::HEAD, "/install.ps1") => {
            scripts::serve(&req, peer, state, scripts::Script::Ps1)
        }
        (&Method::GET | &Method::HEAD, "/metrics") => super::metrics::serve(peer, state),
        (&Method::GET | &Method::HEAD, "/ca.crt") => crate::tls::setup::ca_crt(state),
        (&Method::GET | &Method::HEAD, "/setup.sh") => {
            crate::tls::setup::script(Script::Sh, req.headers(), peer, state)
        }
        (&Method::GET | &Method::HEAD, "/setup.ps1") => {
            crate::tls::setup::script(Script::Ps1, req.headers(), peer, state)
        }
        (&Method::GET | &Method::HEAD, _) => {
            body::text(StatusCode::NOT_FOUND, format!("no such resource: {path}"))
        }
        _ => body::text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
    }
}

/// For load balancers and monitors: 200 while every subsystem is healthy and the cache
/// directory takes writes, else 503. In cluster mode a lost store is reported but stays 200: the
/// node still serves its local hits and fills alone, so a balancer should keep sending to it.
fn health(state: &State) -> Response<Body> {
    let subsystems: serde_json::Map<String, serde_json::Value> = state
        .health
        .snapshot()
        .into_iter()
        .map(|(name, h)| {
            (
                name.to_string(),
                json!(if h.healthy { "ok" } else { "failing" }),
            )
        })
        .collect();
    let writable = state.distribution.writable.check(&state.layout);
    let ok = state.health.all_healthy() && writable.is_ok();
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut answer = json!({
        "status": if ok { "ok" } else { "degraded" },
        "subsystems": subsystems,
        "cache": match writable { Ok(()) => "writable".to_string(), Err(e) => e },
    });
    if let Some(c) = state.cluster.get() {
        answer["cluster"] = json!({
            "store": if c.reachable() { "reachable" } else { "unreachable" },
            "healthy_nodes": c.healthy().iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        });
    }
    body::json(status, &answer)
}
