//! `HEAD` and `GET /[datasets/]{repo}/resolve/{rev}/{path}`: a file, with the headers
//! `huggingface_hub` reads (`X-Repo-Commit`, `ETag`, and for LFS files `X-Linked-Etag` and
//! `X-Linked-Size`), `Content-Length`, `Accept-Ranges` and exact single `Range`s (the data
//! plane's rules, [`crate::proxy::dataplane::plan_for`]). Never a redirect to a CDN.
//!
//! - In the hub cache's snapshot: served from its blob.
//! - Otherwise upstream's `HEAD` at the commit says what the file is: a 302 with
//!   `X-Linked-Etag` is an LFS file, filled through the single-flight sliced fill into
//!   `blobs/sha256-…` (sha256-verified), served while it fills, then hardlinked into the hub
//!   cache; a 200 is a small file, fetched once (concurrent clients wait for that one fetch),
//!   checked against its git blob SHA-1 (the `ETag`) and only then stored.
//! - A `HEAD` never starts a fill.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use sha1::Digest as _;
use std::sync::Arc;

use super::fetch::{origin, HubFetcher};
use super::layout::Found;
use super::repo::{encode_path, RepoId};
use super::upstream::{bad_gateway, read_limited, unavailable, Ctx};
use crate::http::body::{self, Body};
use crate::http::client::client_addr;
use crate::proxy::dataplane::{self, plan_for, Plan};
use crate::store::fill::{Joined, Origin};
use crate::store::stats::Event;
use crate::store::Digest;

/// What upstream's `HEAD` says a file is.
enum Remote {
    Small { sha1: String, size: u64 },
    Lfs { sha256: String, size: u64 },
}

pub async fn serve<B>(
    ctx: &Ctx<'_>,
    req: &Request<B>,
    repo: &RepoId,
    rev: &str,
    path: &str,
) -> Response<Body> {
    let commit = match ctx.commit_for(repo, rev).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let hub = &ctx.state.hub;
    if let Some(f) = hub.cache.find(repo, &commit, path) {
        return serve_found(ctx, req, repo, &commit, f);
    }
    let remote = match head(ctx, repo, &commit, path).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    if req.method() == Method::HEAD {
        let (hash, size, lfs) = match &remote {
            Remote::Small { sha1, size } => (sha1.as_str(), *size, false),
            Remote::Lfs { sha256, size } => (sha256.as_str(), *size, true),
        };
        return respond(req.headers(), true, &commit, hash, lfs, size, |_, _| {
            body::empty()
        });
    }
    match remote {
        Remote::Small { sha1, size } => {
            if let Err(r) = fetch_small(ctx, repo, &commit, path, &sha1, size).await {
                return r;
            }
            match hub.cache.find(repo, &commit, path) {
                Some(f) => serve_found(ctx, req, repo, &commit, f),
                None => bad_gateway(format!("{path} was stored but cannot be read back")),
            }
        }
        Remote::Lfs { sha256, size } => {
            serve_lfs(ctx, req, repo, &commit, path, &sha256, size).await
        }
    }
}

/// Upstream's `HEAD` of the file at `commit`.
async fn head(
    ctx: &Ctx<'_>,
    repo: &RepoId,
    commit: &str,
    path: &str,
) -> Result<Remote, Response<Body>> {
    let url = ctx.url(&format!(
        "/{}{}/resolve/{commit}/{}",
        repo.kind.url_prefix(),
        repo.id,
        encode_path(path)
    ))?;
    let resp = match ctx.send(Method::HEAD, url, &HeaderMap::new()).await {
        Ok(r) => r,
        Err(e) => {
            return Err(unavailable(format!(
                "upstream is unreachable ({e:#}) and {}/{path} at {commit} is not cached",
                repo.key()
            )))
        }
    };
    let h = resp.headers();
    let get = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).map(unquote);
    let num = |n: &str| get(n).and_then(|v| v.parse::<u64>().ok());
    let st = resp.status();
    if st.is_redirection() {
        if let (Some(sha256), Some(size)) = (get("x-linked-etag"), num("x-linked-size")) {
            if sha256.len() == 64 && sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                ctx.learn(repo, None);
                return Ok(Remote::Lfs {
                    sha256: sha256.to_ascii_lowercase(),
                    size,
                });
            }
            return Err(bad_gateway(format!(
                "upstream's linked ETag {sha256:?} is not a sha256"
            )));
        }
    }
    if st == StatusCode::OK {
        if let Some(sha256) = get("x-linked-etag").filter(|e| e.len() == 64) {
            let size = num("x-linked-size").or(num("content-length")).unwrap_or(0);
            ctx.learn(repo, None);
            return Ok(Remote::Lfs { sha256, size });
        }
        let Some(sha1) =
            get("etag").filter(|e| e.len() == 40 && e.bytes().all(|b| b.is_ascii_hexdigit()))
        else {
            return Err(bad_gateway(format!(
                "upstream gave {path} no git blob ETag, so it cannot be verified"
            )));
        };
        let size = num("content-length").unwrap_or(0);
        ctx.learn(repo, None);
        return Ok(Remote::Small {
            sha1: sha1.to_ascii_lowercase(),
            size,
        });
    }
    if st.is_server_error() {
        return Err(unavailable(format!(
            "upstream answered {st} and {}/{path} at {commit} is not cached",
            repo.key()
        )));
    }
    Err(ctx.pass(resp))
}

/// `"x"`, `W/"x"` -> `x`.
fn unquote(v: &str) -> String {
    v.trim()
        .trim_start_matches("W/")
        .trim_matches('"')
        .to_string()
}

/// Fetches, verifies and stores a small file once, however many clients ask at once.
pub(crate) async fn fetch_small(
    ctx: &Ctx<'_>,
    repo: &RepoId,
    commit: &str,
    path: &str,
    sha1: &str,
    size: u64,
) -> Result<(), Response<Body>> {
    let hub = &ctx.state.hub;
    let lock = hub.small_lock(&format!("{}/{sha1}", repo.key()));
    let _held = lock.lock().await;
    if !hub.cache.has_blob(repo, sha1) {
        let url = ctx.url(&format!(
            "/{}{}/resolve/{commit}/{}",
            repo.kind.url_prefix(),
            repo.id,
            encode_path(path)
        ))?;
        let resp = ctx
            .send(Method::GET, url, &HeaderMap::new())
            .await
            .map_err(|e| unavailable(format!("upstream is unreachable: {e:#}")))?;
        if resp.status() != StatusCode::OK {
            return Err(ctx.pass(resp));
        }
        let bytes = read_limited(resp.into_body()).await.map_err(bad_gateway)?;
        ctx.state
            .proxy
            .counters
            .count(super::ORIGIN, Event::BytesFromUpstream(bytes.len() as u64));
        let got = git_blob_sha1(&bytes);
        if got != sha1 || bytes.len() as u64 != size {
            ctx.state.proxy.counters.failure("digest_mismatch");
            return Err(bad_gateway(format!(
                "{}/{path} at {commit}: upstream sent {} bytes with git blob SHA-1 {got}, \
                 expected {size} bytes with {sha1}; not stored",
                repo.key(),
                bytes.len()
            )));
        }
        let (cache, r, h, b) = (hub.cache.clone(), repo.clone(), sha1.to_string(), bytes);
        tokio::task::spawn_blocking(move || cache.put_blob(&r, &h, &b))
            .await
            .map_err(std::io::Error::other)
            .and_then(|x| x)
            .map_err(|e| bad_gateway(format!("cannot store {path}: {e}")))?;
    }
    hub.cache
        .link_snapshot(repo, commit, path, sha1)
        .map_err(|e| bad_gateway(format!("cannot link {path}: {e}")))?;
    ctx.state
        .index
        .record_fetched_unit(&super::tenant::unit_key(repo, commit));
    Ok(())
}

/// Git's blob id: SHA-1 of `blob <len>\0<bytes>`.
pub fn git_blob_sha1(bytes: &[u8]) -> String {
    let mut h = sha1::Sha1::new();
    h.update(format!("blob {}\0", bytes.len()).as_bytes());
    h.update(bytes);
    hex::encode(h.finalize())
}

async fn serve_lfs<B>(
    ctx: &Ctx<'_>,
    req: &Request<B>,
    repo: &RepoId,
    commit: &str,
    path: &str,
    sha256: &str,
    size: u64,
) -> Response<Body> {
    let state = ctx.state;
    let Ok(digest) = Digest::parse(&format!("sha256:{sha256}")) else {
        return bad_gateway(format!("bad sha256 {sha256}"));
    };
    let plan = plan_for(req.headers(), size, &format!("\"{sha256}\""));
    if !matches!(plan, Plan::Whole | Plan::Part(..)) {
        return respond(req.headers(), false, commit, sha256, true, size, |_, _| {
            body::empty()
        });
    }
    let fetcher = HubFetcher::new(state.clone(), repo, commit, path, ctx.auth.clone(), size);
    let o = Origin {
        registry: super::ORIGIN.to_string(),
        repository: origin(repo, commit, path),
    };
    state.proxy.counters.count(super::ORIGIN, Event::BlobMiss);
    match crate::proxy::join_fill_with(state, &digest, size, size, o, Arc::new(fetcher)).await {
        Ok(Joined::Published) => {
            link_lfs(state, repo, commit, path, &digest);
            match state.hub.cache.find(repo, commit, path) {
                Some(f) => serve_found(ctx, req, repo, commit, f),
                None => match dataplane::open_published(&state.layout.blob_path(&digest)) {
                    Ok(file) => serve_file(
                        ctx,
                        req,
                        repo,
                        commit,
                        Found {
                            size,
                            file,
                            hash: sha256.to_string(),
                        },
                    ),
                    Err(e) => bad_gateway(format!("cannot open {digest}: {e}")),
                },
            }
        }
        Ok(Joined::Filling(fill)) => {
            {
                let (state, repo, commit, path, digest, fill) = (
                    state.clone(),
                    repo.clone(),
                    commit.to_string(),
                    path.to_string(),
                    digest.clone(),
                    fill.clone(),
                );
                // Once verified and published, the blob joins the hub cache.
                tokio::spawn(async move {
                    if fill.finished().await.is_ok() {
                        link_lfs(&state, &repo, &commit, &path, &digest);
                    }
                });
            }
            let pin = state.pins.pin(&digest);
            let client = client_addr(
                ctx.peer.addr,
                req.headers(),
                &state.config().http.trusted_proxies,
            );
            let what = format!("hf:{}/{path}", repo.key());
            respond(req.headers(), false, commit, sha256, true, size, |a, b| {
                let s = state.sessions.start(client, what, b - a);
                dataplane::fill_body(&fill, a, b, pin, s)
            })
        }
        Err(e) => dataplane::fill_refused(&digest, e),
    }
}

/// Hardlinks a published LFS blob into the hub cache and links its snapshot entry.
pub(crate) fn link_lfs(
    state: &crate::state::State,
    repo: &RepoId,
    commit: &str,
    path: &str,
    d: &Digest,
) {
    let hub = &state.hub.cache;
    let r = hub
        .link_blob(repo, d.hex(), &state.layout.blob_path(d))
        .and_then(|()| hub.link_snapshot(repo, commit, path, d.hex()));
    match r {
        Ok(()) => state
            .index
            .record_fetched_unit(&super::tenant::unit_key(repo, commit)),
        Err(e) => {
            tracing::warn!(repo = %repo.key(), %path, "hub: cannot link {d} into the hub cache: {e}")
        }
    }
}

fn serve_found<B>(
    ctx: &Ctx<'_>,
    req: &Request<B>,
    repo: &RepoId,
    commit: &str,
    f: Found,
) -> Response<Body> {
    ctx.state
        .proxy
        .counters
        .count(super::ORIGIN, Event::BlobHit);
    ctx.state
        .index
        .touch_unit(&super::tenant::unit_key(repo, commit));
    serve_file(ctx, req, repo, commit, f)
}

fn serve_file<B>(
    ctx: &Ctx<'_>,
    req: &Request<B>,
    repo: &RepoId,
    commit: &str,
    f: Found,
) -> Response<Body> {
    let state = ctx.state;
    let head = req.method() == Method::HEAD;
    let lfs = f.is_lfs();
    let client = client_addr(
        ctx.peer.addr,
        req.headers(),
        &state.config().http.trusted_proxies,
    );
    let what = format!("hf:{}", repo.key());
    let hash = f.hash.clone();
    let size = f.size;
    let counters = state.proxy.counters.clone();
    respond(
        req.headers(),
        head,
        commit,
        &f.hash.clone(),
        lfs,
        size,
        move |a, b| {
            counters.count(super::ORIGIN, Event::BytesFromCache(b - a));
            let session = state.sessions.start(client, what, b - a);
            // Pinned by content for LFS blobs (prune and eviction leave them be); a small file's
            // name is no sha256, and it lives only in the hub cache.
            let digest = Digest::parse(&format!("sha256:{hash}"))
                .unwrap_or_else(|_| Digest::of(hash.as_bytes()));
            let pin = state.pins.pin(&digest);
            dataplane::whole_file_body(f.file, size, a, b, pin, session)
        },
    )
}

/// The answer for a file of `size` bytes named by `hash` at `commit`; `body` makes bytes
/// `start..end`.
fn respond(
    headers: &HeaderMap,
    head: bool,
    commit: &str,
    hash: &str,
    lfs: bool,
    size: u64,
    body: impl FnOnce(u64, u64) -> Body,
) -> Response<Body> {
    let etag = format!("\"{hash}\"");
    let plan = plan_for(headers, size, &etag);
    let mut r = Response::new(body::empty());
    let h = r.headers_mut();
    let v = |s: &str| HeaderValue::from_str(s).expect("ascii");
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::ETAG, v(&etag));
    h.insert("x-repo-commit", v(commit));
    if lfs {
        h.insert("x-linked-etag", v(&etag));
        h.insert("x-linked-size", HeaderValue::from(size));
    }
    let (status, range) = match plan {
        Plan::NotModified => (StatusCode::NOT_MODIFIED, None),
        Plan::Unsatisfiable => {
            h.insert(header::CONTENT_RANGE, v(&format!("bytes */{size}")));
            h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
            (StatusCode::RANGE_NOT_SATISFIABLE, None)
        }
        Plan::Whole => (StatusCode::OK, Some((0, size))),
        Plan::Part(a, b) => {
            h.insert(
                header::CONTENT_RANGE,
                v(&format!("bytes {a}-{}/{size}", b - 1)),
            );
            (StatusCode::PARTIAL_CONTENT, Some((a, b)))
        }
    };
    *r.status_mut() = status;
    if let Some((a, b)) = range {
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(b - a));
        if !head && b > a {
            *r.body_mut() = body(a, b);
        }
    }
    r
}

#[cfg(test)]
mod tests {
    #[test]
    fn git_blob_sha1_matches_git() {
        // `printf hello | git hash-object --stdin`
        assert_eq!(
            super::git_blob_sha1(b"hello"),
            "b6fc4c620b67d95f953a5c1c1230aaab5db5a1b0"
        );
    }
}
