//! The Registry v2 front a real `ollama pull` talks to: `GET /v2/`,
//! `GET|HEAD /v2/<name>/manifests/<reference>` and `GET|HEAD /v2/<name>/blobs/sha256:<hex>`.
//!
//! The request's `Host` picks the upstream (a host in `[upstream.registries]`, anything else the
//! first one). Names, tags and digests are validated with `store::names` before anything is
//! looked up; bad input is a 400 with a registry-style JSON error.
//!
//! Manifests are fetched with the client's `Accept`, stored byte-exact at Ollama's path
//! (`manifests/<host>/<ns>/<model>/<tag>`, written to a temporary file and renamed) and served
//! byte-exact; after `upstream.manifest_ttl` they are revalidated, and when upstream is
//! unreachable or failing the cached copy is served. 404 and 401 (with `WWW-Authenticate`) pass
//! through. Blob requests answer 307 to the data plane on another host name, because Ollama
//! 0.3.1–0.5.x require exactly that; a client that already names the data-plane host gets 200.

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::json;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::{public_base, registry_for, strip_port};
use crate::config::BaseUrl;
use crate::http::body::{self, Body};
use crate::http::Peer;
use crate::state::State;
use crate::store::names::valid_tag;
use crate::store::stats::{CacheCounters, Event};
use crate::store::{Digest, ModelRef};

/// Manifests are small; anything bigger is not one.
const MAX_MANIFEST: usize = 4 << 20;
/// Error bodies passed through from upstream are capped.
const MAX_ERROR_BODY: usize = 64 << 10;
/// How long a manifest fetch may take before the cached copy is served instead.
const MANIFEST_TIMEOUT: Duration = Duration::from_secs(30);
const DOCKER_V2: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DEFAULT_ACCEPT: &str = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json";

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

/// `/v2/...`.
pub async fn handle(req: Request<Incoming>, peer: Peer, state: &Arc<State>) -> Response<Body> {
    let cfg = state.config();
    let host = request_host(&req);
    let Some((registry, base)) = registry_for(&cfg, &host) else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "UNAVAILABLE",
            "no upstream registry is configured ([upstream.registries] is empty)",
        );
    };
    let path = req.uri().path().to_string();
    if path == "/v2" || path == "/v2/" {
        let mut r = body::json(StatusCode::OK, &json!({}));
        r.headers_mut().insert(
            "docker-distribution-api-version",
            HeaderValue::from_static("registry/2.0"),
        );
        return r;
    }
    let segs: Vec<&str> = path.trim_start_matches("/v2/").split('/').collect();
    if segs.len() < 3 {
        return error(StatusCode::NOT_FOUND, "NAME_UNKNOWN", "no such endpoint");
    }
    let (name, kind, reference) = (
        segs[..segs.len() - 2].join("/"),
        segs[segs.len() - 2],
        segs[segs.len() - 1],
    );
    // Ollama's layout has exactly namespace/model: that is what a name may be here.
    if let Err(e) = ModelRef::from_repository(&registry, &name, "latest") {
        return error(StatusCode::BAD_REQUEST, "NAME_INVALID", &e.message);
    }
    match kind {
        "manifests" => {
            let target = if reference.starts_with("sha256:") {
                match Digest::parse(reference) {
                    Ok(d) => Target::Digest(d),
                    Err(e) => return error(StatusCode::BAD_REQUEST, "DIGEST_INVALID", &e.message),
                }
            } else if valid_tag(reference) {
                match ModelRef::from_repository(&registry, &name, reference) {
                    Ok(m) => Target::Tag(m),
                    Err(e) => return error(StatusCode::BAD_REQUEST, "TAG_INVALID", &e.message),
                }
            } else {
                // Quoted short: the error names the tag, it does not echo 60 KiB back.
                let shown: String = reference.chars().take(80).collect();
                let more = if shown.len() < reference.len() {
                    "…"
                } else {
                    ""
                };
                return error(
                    StatusCode::BAD_REQUEST,
                    "TAG_INVALID",
                    &format!("invalid tag {shown:?}{more}: at most 128 of [A-Za-z0-9_.-], not starting with . or -"),
                );
            };
            let url = match manifest_url(&base, &name, reference) {
                Ok(u) => u,
                Err(e) => return error(StatusCode::BAD_REQUEST, "NAME_INVALID", &e),
            };
            let Resolved {
                bytes,
                content_type,
            } = match resolve_manifest(req.headers(), state, &registry, &name, target, url).await {
                Ok(r) => r,
                Err(resp) => return resp,
            };
            serve_manifest(bytes, content_type)
        }
        "blobs" => {
            let digest = match Digest::parse(reference) {
                Ok(d) => d,
                Err(e) => return error(StatusCode::BAD_REQUEST, "DIGEST_INVALID", &e.message),
            };
            state.proxy.learn(&digest, &registry, &name, None);
            let public = public_base(&cfg, &peer);
            let public_host = public
                .parse::<Uri>()
                .ok()
                .and_then(|u| u.host().map(|h| h.trim_matches(['[', ']']).to_string()))
                .unwrap_or_default();
            if strip_port(&host).eq_ignore_ascii_case(&public_host) {
                // The client already talks to the data-plane host: a redirect to the same host
                // would not be followed by Ollama, so serve it here.
                return super::dataplane::serve(
                    &req,
                    peer,
                    state,
                    &digest,
                    Some((registry.clone(), name.clone())),
                )
                .await;
            }
            if req.method() == Method::GET {
                // The client is about to fetch it: start the fill now (no-op if cached/filling).
                if let Err(e) = super::dataplane::prefetch(state, &digest).await {
                    return super::dataplane::fill_refused(&digest, e);
                }
            }
            let location = format!("{public}/blobs/{digest}?registry={registry}&repo={name}");
            let mut r = Response::new(body::empty());
            *r.status_mut() = StatusCode::TEMPORARY_REDIRECT;
            let h = r.headers_mut();
            match HeaderValue::from_str(&location) {
                Ok(v) => h.insert(header::LOCATION, v),
                Err(_) => return error(StatusCode::BAD_REQUEST, "NAME_INVALID", "bad name"),
            };
            h.insert(
                "docker-content-digest",
                HeaderValue::from_str(digest.as_str()).expect("ascii"),
            );
            h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
            r
        }
        _ => error(StatusCode::NOT_FOUND, "UNSUPPORTED", "no such endpoint"),
    }
}

/// Upstream's URL of a manifest.
pub fn manifest_url(base: &BaseUrl, name: &str, reference: &str) -> Result<Uri, String> {
    format!("{}/v2/{name}/manifests/{reference}", base.as_str())
        .parse()
        .map_err(|e: http::uri::InvalidUri| e.to_string())
}

/// The host the client asked for (HTTP/1 `Host`, or the HTTP/2 authority).
fn request_host(req: &Request<Incoming>) -> String {
    req.headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default()
        .to_ascii_lowercase()
}

pub enum Target {
    Tag(ModelRef),
    /// Manifests asked for by digest are immutable; kept in the daemon's own area.
    Digest(Digest),
}

/// Reads a cached manifest and when it was last confirmed by upstream (its mtime).
fn read_cached(path: &PathBuf) -> Option<(Vec<u8>, SystemTime)> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    if !meta.is_file() {
        return None;
    }
    Some((std::fs::read(path).ok()?, meta.modified().ok()?))
}

/// Writes a manifest durably at `path` via a temporary file in the daemon's area (never a
/// half-written file where Ollama would read it).
fn store(state: &State, path: &PathBuf, bytes: &[u8]) -> std::io::Result<()> {
    let tmp_dir = state.layout.state_dir().join("tmp");
    std::fs::create_dir_all(&tmp_dir)?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = tmp_dir.join(format!(
        "manifest-{}-{}",
        std::process::id(),
        Digest::of(path.as_os_str().as_encoded_bytes()).hex()
    ));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// A manifest as the proxy serves it.
pub struct Resolved {
    pub bytes: Vec<u8>,
    /// Upstream's `Content-Type` when it was just fetched.
    pub content_type: Option<HeaderValue>,
}

/// The manifest a client gets for `name:reference`: a fresh cached copy, else upstream's
/// (stored, and marked fetched in the access index), else the cached copy when upstream fails.
/// `Err` is the response to pass on (404, 401, 502...). Serving it counts as a use of the model.
pub async fn resolve_manifest(
    req_headers: &HeaderMap,
    state: &Arc<State>,
    registry: &str,
    name: &str,
    target: Target,
    url: Uri,
) -> Result<Resolved, Response<Body>> {
    let resolved = fetch_manifest(req_headers, state, registry, name, &target, url).await?;
    if let Target::Tag(m) = &target {
        state.index.touch_manifest(m);
    }
    Ok(resolved)
}

async fn fetch_manifest(
    req_headers: &HeaderMap,
    state: &Arc<State>,
    registry: &str,
    name: &str,
    target: &Target,
    url: Uri,
) -> Result<Resolved, Response<Body>> {
    let cfg = state.config();
    let counters = &state.proxy.counters;
    let path = match target {
        Target::Tag(m) => state.layout.manifest_path(m),
        Target::Digest(d) => state
            .layout
            .state_dir()
            .join("manifests")
            .join(d.file_name()),
    };
    // A path leading out of the cache through a planted symlink is neither read as a cached
    // manifest nor written through (below): the client gets upstream's answer, uncached.
    let contained = match target {
        Target::Tag(_) => state.layout.manifest_path_contained(&path),
        Target::Digest(_) => true,
    };
    let cached = if contained { read_cached(&path) } else { None };
    if let Some((bytes, confirmed)) = &cached {
        let fresh = matches!(target, Target::Digest(_))
            || confirmed
                .elapsed()
                .is_ok_and(|age| age < cfg.upstream.manifest_ttl.0);
        if fresh {
            counters.count(registry, Event::ManifestHit);
            state.proxy.learn_manifest(registry, name, bytes);
            return Ok(Resolved {
                bytes: bytes.clone(),
                content_type: None,
            });
        }
    }
    let mut headers = HeaderMap::new();
    let accept = req_headers
        .get(header::ACCEPT)
        .cloned()
        .unwrap_or(HeaderValue::from_static(DEFAULT_ACCEPT));
    headers.insert(header::ACCEPT, accept);
    if let Some(auth) = req_headers.get(header::AUTHORIZATION) {
        headers.insert(header::AUTHORIZATION, auth.clone());
    }
    let fetched = tokio::time::timeout(MANIFEST_TIMEOUT, async {
        let resp = state
            .proxy
            .upstream
            .send(&cfg, Method::GET, url.clone(), &headers, true)
            .await?;
        let status = resp.status();
        let h = resp.headers().clone();
        let limit = if status == StatusCode::OK {
            MAX_MANIFEST
        } else {
            MAX_ERROR_BODY
        };
        let bytes = Limited::new(resp.into_body(), limit)
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!("reading manifest body: {e}"))?
            .to_bytes();
        anyhow::Ok((status, h, bytes))
    })
    .await
    .unwrap_or_else(|_| Err(anyhow::anyhow!("upstream took over {MANIFEST_TIMEOUT:?}")));

    let offline = |why: String| -> Option<Resolved> {
        let (bytes, _) = cached.as_ref()?;
        tracing::warn!(%url, "upstream unavailable ({why}); serving the cached manifest");
        CacheCounters::bump(&counters.manifest_offline_serves);
        counters.count(registry, Event::ManifestHit);
        state.proxy.learn_manifest(registry, name, bytes);
        Some(Resolved {
            bytes: bytes.clone(),
            content_type: None,
        })
    };
    match fetched {
        Ok((StatusCode::OK, h, bytes)) => {
            if let Target::Digest(d) = target {
                if Digest::of(&bytes) != *d {
                    counters.failure("manifest_digest_mismatch");
                    return offline("manifest digest mismatch".into()).ok_or_else(|| {
                        error(
                            StatusCode::BAD_GATEWAY,
                            "UNAVAILABLE",
                            "upstream manifest does not match its digest",
                        )
                    });
                }
            }
            match &cached {
                Some((old, _)) if *old == bytes[..] => {
                    // Unchanged: only the confirmation time moves.
                    let _ = std::fs::File::options()
                        .write(true)
                        .open(&path)
                        .and_then(|f| f.set_modified(SystemTime::now()));
                    CacheCounters::bump(&counters.manifest_revalidations);
                }
                _ => {
                    if cached.is_some() {
                        CacheCounters::bump(&counters.manifest_revalidations);
                    }
                    let stored = if contained {
                        store(state, &path, &bytes)
                    } else {
                        Err(std::io::Error::other(
                            "a directory on its path is a symlink out of the cache",
                        ))
                    };
                    match stored {
                        Ok(()) => {
                            // Written from upstream: the daemon's own, so it may be evicted.
                            if let Target::Tag(m) = target {
                                state.index.record_fetched(m);
                            }
                        }
                        Err(e) => {
                            tracing::error!(path = %path.display(), "cannot store manifest: {e}");
                            counters.failure("disk");
                        }
                    }
                }
            }
            counters.count(registry, Event::ManifestMiss);
            state.proxy.learn_manifest(registry, name, &bytes);
            Ok(Resolved {
                bytes: bytes.to_vec(),
                content_type: h.get(header::CONTENT_TYPE).cloned(),
            })
        }
        Ok((status, h, bytes))
            if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS =>
        {
            counters.failure("upstream_status");
            offline(format!("upstream answered {status}"))
                .ok_or_else(|| passthrough(status, &h, bytes))
        }
        Ok((status, h, bytes)) => {
            // 404, 401 with its WWW-Authenticate, other client errors: the client's business.
            Err(passthrough(status, &h, bytes))
        }
        Err(e) => {
            counters.failure("upstream_unreachable");
            offline(format!("{e:#}")).ok_or_else(|| {
                tracing::warn!(%url, "upstream unreachable: {e:#}");
                error(
                    StatusCode::BAD_GATEWAY,
                    "UNAVAILABLE",
                    &format!("upstream registry unreachable and nothing cached: {e:#}"),
                )
            })
        }
    }
}

/// Serves manifest bytes unchanged, with their digest.
fn serve_manifest(bytes: Vec<u8>, content_type: Option<HeaderValue>) -> Response<Body> {
    let digest = Digest::of(&bytes);
    let ct = content_type.unwrap_or_else(|| {
        let media = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v.get("mediaType")?.as_str().map(str::to_string))
            .unwrap_or_else(|| DOCKER_V2.to_string());
        HeaderValue::from_str(&media).unwrap_or(HeaderValue::from_static(DOCKER_V2))
    });
    let len = bytes.len();
    let mut r = Response::new(body::full(Bytes::from(bytes)));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, ct);
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(
        "docker-content-digest",
        HeaderValue::from_str(digest.as_str()).expect("ascii"),
    );
    h.insert(
        header::ETAG,
        HeaderValue::from_str(&format!("\"{digest}\"")).expect("ascii"),
    );
    h.insert(
        "docker-distribution-api-version",
        HeaderValue::from_static("registry/2.0"),
    );
    r
}

/// An upstream answer passed on as it came: status, body, and the headers that matter.
fn passthrough(status: StatusCode, h: &HeaderMap, bytes: Bytes) -> Response<Body> {
    let mut r = Response::new(body::full(bytes));
    *r.status_mut() = status;
    for name in [
        header::CONTENT_TYPE,
        header::WWW_AUTHENTICATE,
        header::RETRY_AFTER,
    ] {
        for v in h.get_all(&name) {
            r.headers_mut().append(name.clone(), v.clone());
        }
    }
    if let Some(v) = h.get("docker-distribution-api-version") {
        r.headers_mut()
            .insert("docker-distribution-api-version", v.clone());
    }
    r
}
