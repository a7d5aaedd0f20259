//! The metadata a client reads before downloading: repo info
//! (`/api/{kind}/{repo}[/revision/{rev}]`), the file tree (`.../tree/{rev}[/{path}]`,
//! recursive and paginated, its `Link` rewritten to the cache) and `POST .../paths-info/{rev}`.
//! Each is asked at the commit the revision resolves to, and the answer at a commit is kept
//! for good ([`super::meta`]). Tree and paths-info entries lose their `xetHash`, which would
//! let an `hf_xet` client skip the cache.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use sha2::{Digest as _, Sha256};

use super::meta::Answer;
use super::repo::{encode_path, RepoId};
use super::upstream::{bad_gateway, read_limited, unavailable, Ctx};
use crate::http::body::{self, Body};

pub fn info_key(repo: &RepoId, commit: &str, query: &str) -> String {
    format!("info {} {commit} ?{query}", repo.key())
}

pub async fn info<B>(ctx: &Ctx<'_>, req: &Request<B>, repo: &RepoId, rev: &str) -> Response<Body> {
    let commit = match ctx.commit_for(repo, rev).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let query = req.uri().query().unwrap_or("");
    let rest = format!("/api/{}/{}/revision/{commit}", repo.kind.plural(), repo.id);
    cached_get(
        ctx,
        repo,
        &info_key(repo, &commit, query),
        &rest,
        query,
        false,
        (&commit, Offline::Info),
    )
    .await
}

pub async fn tree<B>(
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
    let query = req.uri().query().unwrap_or("");
    let mut rest = format!("/api/{}/{}/tree/{commit}", repo.kind.plural(), repo.id);
    if !path.is_empty() {
        rest.push('/');
        rest.push_str(&encode_path(path));
    }
    let key = format!("tree {} {commit} {path} ?{query}", repo.key());
    let recursive = query
        .split('&')
        .any(|p| matches!(p, "recursive=true" | "recursive=True" | "recursive=1"));
    let offline = Offline::Tree { path, recursive };
    cached_get(ctx, repo, &key, &rest, query, true, (&commit, offline)).await
}

/// What a snapshot in the hub cache can answer by itself when upstream cannot be asked and
/// nothing was kept: a repo imported from a bundle, or a hub cache found in the directory.
/// Such answers are not kept (upstream's own replaces them once it is back).
enum Offline<'a> {
    Info,
    Tree { path: &'a str, recursive: bool },
}

/// The git blob SHA-1 of an LFS file's pointer (what the Hub lists as an LFS file's `oid`).
fn pointer_oid(sha256: &str, size: u64) -> (String, usize) {
    let pointer =
        format!("version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n");
    (
        super::resolve::git_blob_sha1(pointer.as_bytes()),
        pointer.len(),
    )
}

/// The answer from the snapshot, if the hub cache holds it (see [`Offline`]).
fn from_snapshot(ctx: &Ctx<'_>, repo: &RepoId, commit: &str, what: &Offline<'_>) -> Option<Answer> {
    let inv = super::inventory::repo(&ctx.state.hub.cache, repo);
    let snap = inv.snapshots.into_iter().find(|s| s.commit == commit)?;
    let body = match what {
        Offline::Info => {
            let mut v = serde_json::json!({
                "_id": &commit[..24],
                "id": repo.id,
                "sha": commit,
                "siblings": snap.files.iter().map(|(p, _, _)| serde_json::json!({"rfilename": p})).collect::<Vec<_>>(),
            });
            if repo.kind == super::repo::Kind::Model {
                v["modelId"] = serde_json::json!(repo.id);
            }
            v
        }
        Offline::Tree { path, recursive } => {
            let prefix = if path.is_empty() {
                String::new()
            } else {
                format!("{}/", path.trim_end_matches('/'))
            };
            let mut out = Vec::new();
            let mut dirs = std::collections::BTreeSet::new();
            for (p, hash, size) in &snap.files {
                let Some(rel) = p.strip_prefix(&prefix) else {
                    continue;
                };
                let depth = rel.matches('/').count();
                // Folders on the way (the Hub lists them as entries of their own).
                let segs: Vec<&str> = rel.split('/').collect();
                for i in 1..segs.len() {
                    if *recursive || i == 1 {
                        dirs.insert(format!("{prefix}{}", segs[..i].join("/")));
                    }
                }
                if depth > 0 && !recursive {
                    continue;
                }
                let mut e = serde_json::json!({"type": "file", "size": size, "path": p});
                if hash.len() == 64 {
                    let (oid, pointer_size) = pointer_oid(hash, *size);
                    e["oid"] = serde_json::json!(oid);
                    e["lfs"] =
                        serde_json::json!({"oid": hash, "size": size, "pointerSize": pointer_size});
                } else {
                    e["oid"] = serde_json::json!(hash);
                }
                out.push(e);
            }
            for d in dirs {
                // Not git's tree id (the hub cache does not keep trees): a stable stand-in.
                let oid = super::resolve::git_blob_sha1(format!("tree {d}").as_bytes());
                out.push(serde_json::json!({"type": "directory", "oid": oid, "path": d}));
            }
            if out.is_empty() && !path.is_empty() {
                return None;
            }
            serde_json::Value::Array(out)
        }
    };
    Some(Answer {
        content_type: "application/json".into(),
        link: None,
        body: body.to_string(),
    })
}

/// A GET answer at a commit: from the metadata store, else from upstream (and kept).
async fn cached_get(
    ctx: &Ctx<'_>,
    repo: &RepoId,
    key: &str,
    rest: &str,
    query: &str,
    entries: bool,
    (commit, offline): (&str, Offline<'_>),
) -> Response<Body> {
    if let Some(a) = ctx.state.hub.meta.get(key) {
        return answer(ctx, &a);
    }
    // Upstream cannot answer: the snapshot itself may (commit_for already did the access check).
    let fallback = |why: String| match from_snapshot(ctx, repo, commit, &offline) {
        Some(a) => {
            tracing::debug!(repo = %repo.key(), %commit, "hub: {why}; answering from the snapshot");
            answer(ctx, &a)
        }
        None => unavailable(why),
    };
    let pq = if query.is_empty() {
        rest.to_string()
    } else {
        format!("{rest}?{query}")
    };
    let url = match ctx.url(&pq) {
        Ok(u) => u,
        Err(r) => return r,
    };
    match ctx.send(Method::GET, url, &HeaderMap::new()).await {
        Ok(resp) if resp.status() == StatusCode::OK => keep(ctx, repo, key, resp, entries).await,
        Ok(resp) if !resp.status().is_server_error() => ctx.pass(resp),
        Ok(resp) => fallback(format!(
            "upstream answered {} and {} is not cached",
            resp.status(),
            rest
        )),
        Err(e) => fallback(format!(
            "upstream is unreachable ({e:#}) and {rest} is not cached"
        )),
    }
}

/// Reads a 200 answer, keeps it under `key`, and serves it.
async fn keep(
    ctx: &Ctx<'_>,
    repo: &RepoId,
    key: &str,
    resp: Response<Incoming>,
    entries: bool,
) -> Response<Body> {
    let link = resp
        .headers()
        .get_all(header::LINK)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(", ");
    let content_type = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_string();
    let bytes = match read_limited(resp.into_body()).await {
        Ok(b) => b,
        Err(e) => return bad_gateway(e),
    };
    let Ok(text) = String::from_utf8(bytes.to_vec()) else {
        return bad_gateway("upstream's metadata is not UTF-8".into());
    };
    let text = if entries { without_xet(&text) } else { text };
    ctx.learn(repo, None);
    let mut h = HeaderMap::new();
    if !link.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&link) {
            h.insert(header::LINK, v);
        }
    }
    super::upstream::strip_xet(&mut h);
    let a = Answer {
        content_type,
        link: h
            .get(header::LINK)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        body: text,
    };
    ctx.state.hub.meta.put(key, &a);
    answer(ctx, &a)
}

/// Tree entries without `xetHash` (kept as upstream wrote them otherwise).
fn without_xet(text: &str) -> String {
    let Ok(mut v) = serde_json::from_str::<serde_json::Value>(text) else {
        return text.to_string();
    };
    let mut changed = false;
    if let Some(arr) = v.as_array_mut() {
        for e in arr.iter_mut().filter_map(|e| e.as_object_mut()) {
            changed |= e.remove("xetHash").is_some();
        }
    }
    if changed {
        v.to_string()
    } else {
        text.to_string()
    }
}

fn answer(ctx: &Ctx<'_>, a: &Answer) -> Response<Body> {
    let mut r = Response::new(body::full(a.body.clone()));
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&a.content_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    if let Some(l) = &a.link {
        if let Ok(v) = HeaderValue::from_str(&ctx.rewrite_link(l)) {
            h.insert(header::LINK, v);
        }
    }
    r
}

/// `POST .../paths-info/{rev}`: the body (a form or JSON list of paths) is part of the key.
pub async fn paths_info(
    ctx: &Ctx<'_>,
    req: Request<Incoming>,
    repo: &RepoId,
    rev: &str,
) -> Response<Body> {
    let content_type = req.headers().get(header::CONTENT_TYPE).cloned();
    let body = match Limited::new(req.into_body(), 1 << 20).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) => {
            return body::text(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("paths-info body refused: {e}"),
            )
        }
    };
    let commit = match ctx.commit_for(repo, rev).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let ct = content_type
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let key = format!(
        "paths-info {} {commit} {ct} {}",
        repo.key(),
        hex::encode(Sha256::digest(&body))
    );
    if let Some(a) = ctx.state.hub.meta.get(&key) {
        return answer(ctx, &a);
    }
    let url = match ctx.url(&format!(
        "/api/{}/{}/paths-info/{commit}",
        repo.kind.plural(),
        repo.id
    )) {
        Ok(u) => u,
        Err(r) => return r,
    };
    let mut out = Request::post(url.clone()).body(Full::new(body.clone()));
    if let Ok(r) = &mut out {
        let h = r.headers_mut();
        if let Some(v) = content_type {
            h.insert(header::CONTENT_TYPE, v);
        }
        if let Some(a) = &ctx.auth {
            h.insert(header::AUTHORIZATION, a.clone());
        }
        h.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    }
    let Ok(out) = out else {
        return bad_gateway("cannot build the paths-info request".into());
    };
    let cfg = ctx.state.config();
    match ctx.state.proxy.upstream.forward(&cfg, &url, out).await {
        Ok(resp) if resp.status() == StatusCode::OK => keep(ctx, repo, &key, resp, true).await,
        Ok(resp) if !resp.status().is_server_error() => ctx.pass(resp),
        Ok(resp) => unavailable(format!(
            "upstream answered {} and this paths-info is not cached",
            resp.status()
        )),
        Err(e) => unavailable(format!(
            "upstream is unreachable ({e:#}) and this paths-info is not cached"
        )),
    }
}
