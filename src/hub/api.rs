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
    cached_get(ctx, repo, &key, &rest, query, true).await
}

/// A GET answer at a commit: from the metadata store, else from upstream (and kept).
async fn cached_get(
    ctx: &Ctx<'_>,
    repo: &RepoId,
    key: &str,
    rest: &str,
    query: &str,
    entries: bool,
) -> Response<Body> {
    if let Some(a) = ctx.state.hub.meta.get(key) {
        return answer(ctx, &a);
    }
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
        Ok(resp) => unavailable(format!(
            "upstream answered {} and {} is not cached",
            resp.status(),
            rest
        )),
        Err(e) => unavailable(format!(
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
