//! Routes every HTTP(S) request to the subsystem that owns its path. The registry API (`/v2/`)
//! goes to the proxy; the data plane and the distribution endpoints to theirs. A `HEAD` is routed
//! like a `GET` and its body dropped here, once, rather than in every handler.

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::json;
use std::sync::Arc;

use super::body::{self, Body};
use super::Peer;
use crate::state::State;

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
    if req
        .headers()
        .contains_key(crate::proxy::upstream::LOOP_HEADER)
    {
        // Our own upstream request came back to us (DNS points the registry at the cache).
        return body::text(
            StatusCode::LOOP_DETECTED,
            "request loop: this request came from lancached itself",
        );
    }
    let path = req.uri().path();
    match (req.method(), path) {
        (&Method::GET | &Method::HEAD, "/health") => health(state),
        (&Method::GET | &Method::HEAD, "/cache/stats") => {
            body::json(StatusCode::OK, &crate::proxy::cache_stats(state))
        }
        (&Method::GET | &Method::HEAD, p) if p == "/v2" || p.starts_with("/v2/") => {
            crate::proxy::registry::handle(req, peer, state).await
        }
        (&Method::GET | &Method::HEAD, p) if p.starts_with("/blobs/") => {
            crate::proxy::dataplane::handle(req, state).await
        }
        (_, p) if p == "/v2" || p.starts_with("/v2/") => crate::proxy::registry::error(
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
            "this cache is read-only",
        ),
        (&Method::GET | &Method::HEAD, _) => {
            body::text(StatusCode::NOT_FOUND, format!("no such resource: {path}"))
        }
        _ => body::text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
    }
}

/// For load balancers and monitors: 200 while every subsystem is healthy, else 503.
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
    let ok = state.health.all_healthy();
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    body::json(
        status,
        &json!({ "status": if ok { "ok" } else { "degraded" }, "subsystems": subsystems }),
    )
}
