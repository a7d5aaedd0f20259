//! Manifests as the cache keeps them: fetched with the client's `Accept`, `Authorization` and
//! `User-Agent`, stored byte-exact at Ollama's path (`manifests/<host>/<ns>/<model>/<tag>`,
//! written to a temporary file and renamed) and served byte-exact, since a manifest's bytes are
//! its identity (the model ID is their sha256).
//!
//! A cached tag is served while younger than `upstream.manifest_ttl` and while upstream has
//! answered this client's version for these bytes ([`super::gate`]); otherwise upstream is asked
//! first. When upstream is unreachable or failing the cached copy is served (and logged). 404,
//! 401 (with `WWW-Authenticate`) and 412 (the version gate) pass through to the client.

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Limited};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::gate::ClientVersion;
use super::registry::error;
use crate::config::BaseUrl;
use crate::http::body::{self, Body};
use crate::state::State;
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

/// Upstream's URL of a manifest.
pub fn manifest_url(base: &BaseUrl, name: &str, reference: &str) -> Result<Uri, String> {
    format!("{}/v2/{name}/manifests/{reference}", base.as_str())
        .parse()
        .map_err(|e: http::uri::InvalidUri| e.to_string())
}

pub enum Target {
    Tag(ModelRef),
    /// Manifests asked for by digest are immutable; kept in the daemon's own area.
    Digest(Digest),
}

/// A manifest as the proxy serves it.
pub struct Resolved {
    pub bytes: Vec<u8>,
    /// Upstream's `Content-Type` when it was just fetched.
    pub content_type: Option<HeaderValue>,
}

/// The manifest a client gets for `name:reference`: a fresh cached copy that upstream has
/// answered this client's version for, else upstream's (stored, and marked fetched in the
/// access index), else the cached copy when upstream fails. `Err` is the response to pass on
/// (404, 401, 412, 502...). Serving it counts as a use of the model.
pub async fn resolve_manifest(
    req_headers: &HeaderMap,
    state: &Arc<State>,
    registry: &str,
    name: &str,
    target: Target,
    url: Uri,
) -> Result<Resolved, Response<Body>> {
    let lookup = Lookup {
        state,
        registry,
        name,
        version: ClientVersion::of(req_headers),
        cached: Cached::load(state, &target),
        target: &target,
    };
    let resolved = match lookup.fresh_hit() {
        Some(hit) => hit,
        None => match lookup.shared_copy().await {
            Some(hit) => hit,
            None => {
                let fetched = fetch_upstream(state, &url, req_headers).await;
                lookup.settle(&url, fetched).map_err(|r| *r)?
            }
        },
    };
    if let Target::Tag(m) = &target {
        state.index.touch_manifest(m);
    }
    Ok(resolved)
}

/// The cached copy of one manifest, if any, and where it lives.
struct Cached {
    path: PathBuf,
    /// False when a directory on the path is a symlink out of the cache: such a path is neither
    /// read as a cached manifest nor written through, and the client gets upstream's answer.
    contained: bool,
    /// The bytes and when upstream last confirmed them (the file's mtime).
    copy: Option<(Vec<u8>, SystemTime)>,
}

impl Cached {
    fn load(state: &State, target: &Target) -> Cached {
        let (path, contained) = match target {
            Target::Tag(m) => {
                let p = state.layout.manifest_path(m);
                let contained = state.layout.manifest_path_contained(&p);
                (p, contained)
            }
            Target::Digest(d) => (
                state
                    .layout
                    .state_dir()
                    .join("manifests")
                    .join(d.file_name()),
                true,
            ),
        };
        let copy = if contained { read_cached(&path) } else { None };
        Cached {
            path,
            contained,
            copy,
        }
    }
}

/// One client's manifest request, between the cache and upstream.
struct Lookup<'a> {
    state: &'a Arc<State>,
    registry: &'a str,
    name: &'a str,
    version: ClientVersion,
    cached: Cached,
    target: &'a Target,
}

type Fetched = anyhow::Result<(StatusCode, HeaderMap, Bytes)>;
/// A response for the client instead of a manifest (boxed: it is large and the rare path).
type Refusal = Box<Response<Body>>;

impl Lookup<'_> {
    /// The cached copy, when it may be served without asking upstream: young enough (a digest
    /// never ages) and already answered by upstream for this client's version.
    fn fresh_hit(&self) -> Option<Resolved> {
        let (bytes, confirmed) = self.cached.copy.as_ref()?;
        let gate = &self.state.proxy.gate;
        if !self.young(*confirmed)
            || !gate.passed(&self.cached.path, &Digest::of(bytes), &self.version)
        {
            return None;
        }
        Some(self.serve_cached())
    }

    /// Whether a copy upstream confirmed at `confirmed` may be served without asking it again:
    /// younger than `upstream.manifest_ttl`, or asked for by digest (which never ages).
    fn young(&self, confirmed: SystemTime) -> bool {
        let ttl = self.state.config().upstream.manifest_ttl.0;
        matches!(self.target, Target::Digest(_)) || confirmed.elapsed().is_ok_and(|age| age < ttl)
    }

    /// Cluster mode: the store's copy when this node has no fresh one, under the same rules
    /// as a local copy (young enough, this client's version passed by upstream). It is kept
    /// here too, with the store's confirmation time as its own.
    async fn shared_copy(&self) -> Option<Resolved> {
        let c = self.state.cluster.get()?;
        let key = self.cluster_key()?;
        let m = crate::cluster::manifests::fetch(c, &key).await?;
        let digest = Digest::of(&m.bytes);
        let misnamed = matches!(self.target, Target::Digest(d) if digest != *d);
        if misnamed || !self.young(m.confirmed) || !m.versions.contains(&self.version.0) {
            return None;
        }
        let path = &self.cached.path;
        match store(self.state, path, &m.bytes) {
            Ok(()) => {
                set_confirmed(path, m.confirmed);
                if let Target::Tag(t) = self.target {
                    self.state.index.record_fetched(t);
                }
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), "cannot keep the store's manifest: {e}")
            }
        }
        for v in m.versions {
            self.state
                .proxy
                .gate
                .record(path, &digest, &ClientVersion(v));
        }
        Some(self.hit(m.bytes))
    }

    /// The manifest's name in the cluster store; `None` for a path not in the cache's own
    /// tree (never shared).
    fn cluster_key(&self) -> Option<crate::cluster::manifests::ManifestKey> {
        use crate::cluster::manifests::ManifestKey;
        if !self.cached.contained {
            return None;
        }
        Some(match self.target {
            Target::Digest(d) => ManifestKey::Digest(d.file_name()),
            Target::Tag(_) => {
                let rel = self
                    .cached
                    .path
                    .strip_prefix(self.state.layout.manifests_dir())
                    .ok()?;
                ManifestKey::Tag(rel.to_str()?.to_string())
            }
        })
    }

    /// Cluster mode: puts upstream's answer, with every version it has passed, into the store.
    fn publish(&self, bytes: &[u8], digest: &Digest) {
        let (Some(c), Some(key)) = (self.state.cluster.get(), self.cluster_key()) else {
            return;
        };
        let m = crate::cluster::manifests::SharedManifest {
            bytes: bytes.to_vec(),
            confirmed: SystemTime::now(),
            versions: self
                .state
                .proxy
                .gate
                .versions(&self.cached.path, digest)
                .into_iter()
                .map(|v| v.0)
                .collect(),
        };
        let c = c.clone();
        tokio::spawn(async move { crate::cluster::manifests::publish(&c, &key, &m).await });
    }

    fn serve_cached(&self) -> Resolved {
        let (bytes, _) = self.cached.copy.as_ref().expect("a cached copy");
        self.hit(bytes.clone())
    }

    /// Serves manifest bytes the cache already had (this node's or the cluster store's): a
    /// hit, and the model's blobs learned from them.
    fn hit(&self, bytes: Vec<u8>) -> Resolved {
        self.state
            .proxy
            .counters
            .count(self.registry, Event::ManifestHit);
        self.state
            .proxy
            .learn_manifest(self.registry, self.name, &bytes);
        Resolved {
            bytes,
            content_type: None,
        }
    }

    /// Upstream could not answer: the cached copy, if there is one, and the log says so (and
    /// that this client's version went unchecked when it did).
    fn offline(&self, url: &Uri, why: &str) -> Option<Resolved> {
        let (bytes, _) = self.cached.copy.as_ref()?;
        if self
            .state
            .proxy
            .gate
            .passed(&self.cached.path, &Digest::of(bytes), &self.version)
        {
            tracing::warn!(%url, "upstream unavailable ({why}); serving the cached manifest");
        } else {
            tracing::warn!(%url, client = %self.version,
                "upstream unavailable ({why}); serving the cached manifest without upstream's version check for this client");
        }
        CacheCounters::bump(&self.state.proxy.counters.manifest_offline_serves);
        Some(self.serve_cached())
    }

    /// Turns upstream's answer into the client's.
    fn settle(&self, url: &Uri, fetched: Fetched) -> Result<Resolved, Refusal> {
        let counters = &self.state.proxy.counters;
        match fetched {
            Ok((StatusCode::OK, h, bytes)) => self.accept(url, h, bytes),
            Ok((status, h, bytes))
                if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS =>
            {
                counters.failure("upstream_status");
                self.offline(url, &format!("upstream answered {status}"))
                    .ok_or_else(|| Box::new(passthrough(status, &h, bytes)))
            }
            // 404, 401 with its WWW-Authenticate, 412 "requires a newer version of Ollama",
            // other client errors: the client's business, whatever the cache holds.
            Ok((status, h, bytes)) => Err(Box::new(passthrough(status, &h, bytes))),
            Err(e) => {
                counters.failure("upstream_unreachable");
                self.offline(url, &format!("{e:#}")).ok_or_else(|| {
                    tracing::warn!(%url, "upstream unreachable: {e:#}");
                    Box::new(error(
                        StatusCode::BAD_GATEWAY,
                        "UNAVAILABLE",
                        &format!("upstream registry unreachable and nothing cached: {e:#}"),
                    ))
                })
            }
        }
    }

    /// A 200 from upstream: checked against its digest when asked by digest, stored (or its
    /// confirmation time moved when unchanged), and recorded as passing this client's version.
    fn accept(&self, url: &Uri, h: HeaderMap, bytes: Bytes) -> Result<Resolved, Refusal> {
        let counters = &self.state.proxy.counters;
        let digest = Digest::of(&bytes);
        if let Target::Digest(d) = self.target {
            if digest != *d {
                counters.failure("manifest_digest_mismatch");
                return self
                    .offline(url, "manifest digest mismatch")
                    .ok_or_else(|| {
                        Box::new(error(
                            StatusCode::BAD_GATEWAY,
                            "UNAVAILABLE",
                            "upstream manifest does not match its digest",
                        ))
                    });
            }
        }
        self.keep(&bytes);
        self.state
            .proxy
            .gate
            .record(&self.cached.path, &digest, &self.version);
        self.publish(&bytes, &digest);
        counters.count(self.registry, Event::ManifestMiss);
        self.state
            .proxy
            .learn_manifest(self.registry, self.name, &bytes);
        Ok(Resolved {
            bytes: bytes.to_vec(),
            content_type: h.get(header::CONTENT_TYPE).cloned(),
        })
    }

    /// Puts upstream's bytes in the cache: unchanged bytes only move the confirmation time.
    fn keep(&self, bytes: &[u8]) {
        let counters = &self.state.proxy.counters;
        let path = &self.cached.path;
        if let Some((old, _)) = &self.cached.copy {
            CacheCounters::bump(&counters.manifest_revalidations);
            if old[..] == *bytes {
                set_confirmed(path, SystemTime::now());
                return;
            }
        }
        let stored = if self.cached.contained {
            store(self.state, path, bytes)
        } else {
            Err(std::io::Error::other(
                "a directory on its path is a symlink out of the cache",
            ))
        };
        match stored {
            // Written from upstream: the daemon's own, so it may be evicted.
            Ok(()) => {
                if let Target::Tag(m) = self.target {
                    self.state.index.record_fetched(m);
                }
            }
            Err(e) => {
                tracing::error!(path = %path.display(), "cannot store manifest: {e}");
                counters.failure("disk");
            }
        }
    }
}

/// GETs a manifest from upstream with what of the client's request upstream needs: `Accept`
/// (the registry answers 400 without it), `Authorization`, and `User-Agent` (the version gate).
async fn fetch_upstream(state: &State, url: &Uri, req_headers: &HeaderMap) -> Fetched {
    let cfg = state.config();
    let mut headers = HeaderMap::new();
    let accept = req_headers
        .get(header::ACCEPT)
        .cloned()
        .unwrap_or(HeaderValue::from_static(DEFAULT_ACCEPT));
    headers.insert(header::ACCEPT, accept);
    for name in [header::AUTHORIZATION, header::USER_AGENT] {
        if let Some(v) = req_headers.get(&name) {
            headers.insert(name, v.clone());
        }
    }
    let fetch = async {
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
    };
    tokio::time::timeout(MANIFEST_TIMEOUT, fetch)
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("upstream took over {MANIFEST_TIMEOUT:?}")))
}

/// Records when upstream last confirmed the manifest at `path`: its mtime, which
/// [`read_cached`] reads back. Best effort: a failure only makes the copy look older.
fn set_confirmed(path: &PathBuf, at: SystemTime) {
    let _ = std::fs::File::options()
        .write(true)
        .open(path)
        .and_then(|f| f.set_modified(at));
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

/// Serves manifest bytes unchanged, with their digest.
pub fn serve_manifest(bytes: Vec<u8>, content_type: Option<HeaderValue>) -> Response<Body> {
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
