//! The Registry v2 front a real `ollama pull` talks to: `GET /v2/`,
//! `GET|HEAD /v2/<name>/manifests/<reference>` and `GET|HEAD /v2/<name>/blobs/sha256:<hex>`.
//!
//! The request's `Host` picks the upstream (a host in `[upstream.registries]`, anything else
//! the first one, so a client may also name the cache itself). Names, tags and digests are
//! validated with `store::names` before anything is looked up; bad input is a 400 with a
//! registry-style JSON error. Manifests are the business of [`super::manifests`].
//!
//! Blobs are served right here, on the host the client asked for, and never redirected:
//! Ollama 0.34.2+ refuses a redirect from https to http, to another host or to a private
//! address, and the cache is all three. `HEAD` answers 200 with the size; `GET` answers 200
//! with the blob as its body and a `Location` naming this same URL, which is the "direct URL"
//! Ollama's classic downloader looks for (it takes a 200's `Location`, closes the body and sends
//! its 16 ranged GETs there). Either request starts the blob's single-flight fill when it is
//! cold; a client that closes the body early leaves the fill running.

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::json;
use std::sync::Arc;

use super::manifests::{manifest_url, resolve_manifest, serve_manifest, Resolved, Target};
use super::registry_for;
use crate::config::BaseUrl;
use crate::http::body::{self, Body};
use crate::http::Peer;
use crate::state::State;
use crate::store::names::valid_tag;
use crate::store::{Digest, ModelRef};

/// A registry-style error: `{"errors":[{"code":..,"message":..}]}`.
pub fn error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    let mut r = body::json(
        status,
        &json!({"errors": [{"code": code, "message": message, "detail": null}]}),
    );
    r.headers_mut().insert(
        "docker-distribution-api-version",
        HeaderValue::from_static("registry/2.0"),
    );
    r
}

/// A registry-style error, before it becomes a response.
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    fn response(&self) -> Response<Body> {
        error(self.status, self.code, &self.message)
    }
}

/// What a `/v2/...` path asks for, once every part of it is valid.
enum Route {
    /// `/v2/`: the API version check.
    Base,
    Manifest {
        name: String,
        reference: String,
        target: Target,
    },
    Blob {
        name: String,
        digest: Digest,
    },
}

/// `/v2/...`.
pub async fn handle(req: Request<Incoming>, peer: Peer, state: &Arc<State>) -> Response<Body> {
    let cfg = state.config();
    let Some((registry, base)) = registry_for(&cfg, &super::request_host(&req)) else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "UNAVAILABLE",
            "no upstream registry is configured ([upstream.registries] is empty)",
        );
    };
    match parse_route(req.uri().path(), &registry) {
        Ok(Route::Base) => api_version(),
        Ok(Route::Manifest {
            name,
            reference,
            target,
        }) => manifest(&req, state, &registry, &base, &name, &reference, target).await,
        Ok(Route::Blob { name, digest }) => {
            blob(&req, peer, state, &registry, &name, &digest).await
        }
        Err(e) => e.response(),
    }
}

fn api_version() -> Response<Body> {
    let mut r = body::json(StatusCode::OK, &json!({}));
    r.headers_mut().insert(
        "docker-distribution-api-version",
        HeaderValue::from_static("registry/2.0"),
    );
    r
}

/// Splits `/v2/<name>/<kind>/<reference>` and validates each part.
fn parse_route(path: &str, registry: &str) -> Result<Route, ApiError> {
    if path == "/v2" || path == "/v2/" {
        return Ok(Route::Base);
    }
    let segs: Vec<&str> = path.trim_start_matches("/v2/").split('/').collect();
    if segs.len() < 3 {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "NAME_UNKNOWN",
            "no such endpoint",
        ));
    }
    let (name, kind, reference) = (
        segs[..segs.len() - 2].join("/"),
        segs[segs.len() - 2],
        segs[segs.len() - 1],
    );
    // Ollama's layout has exactly namespace/model: that is what a name may be here.
    if let Err(e) = ModelRef::from_repository(registry, &name, "latest") {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "NAME_INVALID",
            e.message,
        ));
    }
    match kind {
        "manifests" => Ok(Route::Manifest {
            target: manifest_target(registry, &name, reference)?,
            name,
            reference: reference.to_string(),
        }),
        "blobs" => match Digest::parse(reference) {
            Ok(digest) => Ok(Route::Blob { name, digest }),
            Err(e) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "DIGEST_INVALID",
                e.message,
            )),
        },
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "UNSUPPORTED",
            "no such endpoint",
        )),
    }
}

/// A manifest reference is a digest or a tag.
fn manifest_target(registry: &str, name: &str, reference: &str) -> Result<Target, ApiError> {
    if reference.starts_with("sha256:") {
        return Digest::parse(reference)
            .map(Target::Digest)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "DIGEST_INVALID", e.message));
    }
    if !valid_tag(reference) {
        // Quoted short: the error names the tag, it does not echo 60 KiB back.
        let shown: String = reference.chars().take(80).collect();
        let more = if shown.len() < reference.len() {
            "…"
        } else {
            ""
        };
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "TAG_INVALID",
            format!("invalid tag {shown:?}{more}: at most 128 of [A-Za-z0-9_.-], not starting with . or -"),
        ));
    }
    ModelRef::from_repository(registry, name, reference)
        .map(Target::Tag)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "TAG_INVALID", e.message))
}

async fn manifest(
    req: &Request<Incoming>,
    state: &Arc<State>,
    registry: &str,
    base: &BaseUrl,
    name: &str,
    reference: &str,
    target: Target,
) -> Response<Body> {
    let url = match manifest_url(base, name, reference) {
        Ok(u) => u,
        Err(e) => return error(StatusCode::BAD_REQUEST, "NAME_INVALID", &e),
    };
    match resolve_manifest(req.headers(), state, registry, name, target, url).await {
        Ok(Resolved {
            bytes,
            content_type,
        }) => serve_manifest(bytes, content_type),
        Err(resp) => resp,
    }
}

/// A blob on the registry's own host: its bytes (Range-exact) from the cache or its fill, and
/// on a successful `GET` a `Location` naming this very URL (same scheme, same host).
async fn blob(
    req: &Request<Incoming>,
    peer: Peer,
    state: &Arc<State>,
    registry: &str,
    name: &str,
    digest: &Digest,
) -> Response<Body> {
    let origin = Some((registry.to_string(), name.to_string()));
    let mut resp = super::dataplane::serve(req, peer, state, digest, origin).await;
    if req.method() == Method::HEAD && resp.status() == StatusCode::OK {
        // The client's next request is the GET: start the fill now (no-op if cached/filling).
        if let Err(e) = super::dataplane::warm(state, digest).await {
            return super::dataplane::fill_refused(digest, e);
        }
    }
    if req.method() == Method::GET && resp.status().is_success() {
        let here = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        if let Ok(v) = HeaderValue::from_str(here) {
            resp.headers_mut().insert(header::LOCATION, v);
        }
    }
    resp
}
