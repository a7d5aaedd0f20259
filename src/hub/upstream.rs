//! How a Hub request reaches upstream, and what a branch or tag resolves to.
//!
//! - The client's `Authorization` goes upstream with every request made for it (never logged).
//! - A revision resolves to a commit through `GET /api/{kind}/{repo}/revision/{rev}`, kept as
//!   the hub cache's `refs/<rev>` for `revision_ttl`; past it, upstream is asked again, and
//!   when upstream is down (unreachable, or a 5xx) the last answer stands.
//! - Every cached answer first passes [`Ctx::commit_for`], which is also the access check: a
//!   public repo, or a token upstream accepted for this repo within `auth_ttl`, is served
//!   from cache; anyone else is asked about upstream, and upstream's 401/403/404 goes back
//!   as it is (never cached bytes). Offline, only those two are served; others get a 503
//!   saying why.
//! - Upstream's refusals and redirects are passed back with their `Location` made relative
//!   to the cache (a renamed repo's 307 stays on the cache) and without Xet headers.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use std::sync::Arc;
use std::time::Duration;

use super::repo::{encode_segment, is_commit, RepoId};
use crate::http::body::{self, Body};
use crate::http::Peer;
use crate::state::State;

/// The biggest metadata answer read (a tree page, repo info with many siblings).
pub const META_LIMIT: usize = 64 << 20;

pub struct Ctx<'a> {
    pub state: &'a Arc<State>,
    pub peer: Peer,
    pub prefix: &'static str,
    /// The client's `Authorization`, passed upstream.
    pub auth: Option<HeaderValue>,
    /// Its bearer token (or the whole value), for the access cache.
    pub token: Option<String>,
    /// `scheme://host` + prefix as the client reached the cache.
    pub base: String,
}

impl<'a> Ctx<'a> {
    pub fn new<B>(
        req: &Request<B>,
        prefix: &'static str,
        peer: Peer,
        state: &'a Arc<State>,
    ) -> Ctx<'a> {
        let auth = req.headers().get(header::AUTHORIZATION).cloned();
        let token = auth
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .map(|v| v.strip_prefix("Bearer ").unwrap_or(v).trim().to_string());
        let scheme = if peer.tls { "https" } else { "http" };
        let host = crate::proxy::request_host(req);
        Ctx {
            state,
            peer,
            prefix,
            auth,
            token,
            base: format!("{scheme}://{host}{prefix}"),
        }
    }

    /// `<upstream>/<rest>`. The error is the client's answer (rare: a URL that cannot be).
    #[allow(clippy::result_large_err)]
    pub fn url(&self, rest: &str) -> Result<Uri, Response<Body>> {
        let cfg = self.state.config();
        format!("{}{rest}", cfg.huggingface.upstream.as_str())
            .parse()
            .map_err(|e| body::text(StatusCode::BAD_REQUEST, format!("bad upstream URL: {e}")))
    }

    /// One upstream request with the client's token; redirects not followed.
    pub async fn send(
        &self,
        method: Method,
        url: Uri,
        extra: &HeaderMap,
    ) -> anyhow::Result<Response<Incoming>> {
        let cfg = self.state.config();
        let mut h = extra.clone();
        if let Some(a) = &self.auth {
            h.insert(header::AUTHORIZATION, a.clone());
        }
        self.state
            .proxy
            .upstream
            .send(&cfg, method, url, &h, false)
            .await
    }

    /// A GET that follows a renamed repo's redirect on upstream itself (a `Location` that is
    /// an absolute path), so that what the client asked (a tree, a file) is not answered with
    /// a redirect to the repo info. Other redirects come back as they are.
    async fn send_following_renames(&self, url: Uri) -> anyhow::Result<Response<Incoming>> {
        let mut url = url;
        for _ in 0..3 {
            let resp = self
                .send(Method::GET, url.clone(), &HeaderMap::new())
                .await?;
            let next = resp
                .headers()
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .filter(|l| l.starts_with('/') && !l.starts_with("//"))
                .map(str::to_string);
            match next {
                Some(loc) if resp.status().is_redirection() => {
                    url = crate::proxy::upstream::join_url(&url, &loc)?;
                }
                _ => return Ok(resp),
            }
        }
        anyhow::bail!("too many redirects from upstream (last: {url})")
    }

    fn ttls(&self) -> (Duration, Duration) {
        let cfg = self.state.config();
        (cfg.huggingface.revision_ttl.0, cfg.huggingface.auth_ttl.0)
    }

    /// Served from cache without asking upstream: public as of `revision_ttl`, or this
    /// token accepted within `auth_ttl`.
    fn allowed(&self, repo: &RepoId) -> bool {
        let (rev_ttl, auth_ttl) = self.ttls();
        let hub = &self.state.hub;
        let key = repo.key();
        hub.access.public_within(&key, rev_ttl)
            || self
                .token
                .as_deref()
                .is_some_and(|t| hub.access.accepted_within(&key, t, auth_ttl))
    }

    /// Learns from a 2xx answer for `repo` (its repo info when `info`).
    pub fn learn(&self, repo: &RepoId, info: Option<&serde_json::Value>) {
        let access = &self.state.hub.access;
        let key = repo.key();
        if let Some(t) = &self.token {
            access.accept(&key, t);
        }
        match info {
            // The repo info says what it is, whoever asked.
            Some(v) => {
                let private = v["private"].as_bool().unwrap_or(false);
                let gated = !matches!(
                    v["gated"],
                    serde_json::Value::Bool(false) | serde_json::Value::Null
                );
                access.set_public(&key, !private && !gated);
            }
            // Upstream answered a request without a token.
            None if self.token.is_none() => access.set_public(&key, true),
            None => {}
        }
    }

    /// The commit `rev` names, after the access check (see the module docs). `Err` is the
    /// client's answer.
    pub async fn commit_for(&self, repo: &RepoId, rev: &str) -> Result<String, Response<Body>> {
        let (rev_ttl, auth_ttl) = self.ttls();
        let hub = &self.state.hub;
        let cached = if is_commit(rev) {
            Some((rev.to_string(), true))
        } else {
            hub.cache.read_ref(repo, rev).map(|(c, when)| {
                let fresh = when.elapsed().is_ok_and(|age| age < rev_ttl);
                (c, fresh)
            })
        };
        if let Some((c, true)) = &cached {
            if self.allowed(repo) {
                return Ok(c.clone());
            }
        }
        let url = self.url(&format!(
            "/api/{}/{}/revision/{}",
            repo.kind.plural(),
            repo.id,
            encode_segment(rev)
        ))?;
        let why = match self.send_following_renames(url).await {
            Ok(resp) if resp.status() == StatusCode::OK => {
                let bytes = match read_limited(resp.into_body()).await {
                    Ok(b) => b,
                    Err(e) => return Err(bad_gateway(format!("repo info: {e}"))),
                };
                let v: serde_json::Value = serde_json::from_slice(&bytes)
                    .map_err(|e| bad_gateway(format!("upstream's repo info is not JSON: {e}")))?;
                let Some(sha) = v["sha"]
                    .as_str()
                    .filter(|s| is_commit(s))
                    .map(str::to_string)
                else {
                    return Err(bad_gateway("upstream's repo info names no commit".into()));
                };
                self.learn(repo, Some(&v));
                if !is_commit(rev) {
                    if let Err(e) = hub.cache.write_ref(repo, rev, &sha) {
                        tracing::warn!(repo = %repo.key(), "hub: cannot record {rev}: {e}");
                    }
                }
                hub.meta.put(
                    &super::api::info_key(repo, &sha, ""),
                    &super::meta::Answer {
                        content_type: "application/json".into(),
                        link: None,
                        body: String::from_utf8_lossy(&bytes).into_owned(),
                    },
                );
                return Ok(sha);
            }
            Ok(resp) if resp.status().is_server_error() => {
                format!("upstream answered {}", resp.status())
            }
            Ok(resp) => {
                if let (Some(t), true) = (
                    &self.token,
                    matches!(resp.status().as_u16(), 401 | 403 | 404),
                ) {
                    hub.access.reject(&repo.key(), t);
                }
                return Err(self.pass(resp));
            }
            Err(e) => format!("upstream is unreachable: {e:#}"),
        };
        // Upstream is down: the last answer stands, for those allowed offline.
        let Some((commit, _)) = cached else {
            return Err(unavailable(format!(
                "{why}, and {} at {rev:?} was never resolved by this cache",
                repo.key()
            )));
        };
        let key = repo.key();
        let ok = hub.access.was_public(&key)
            || self
                .token
                .as_deref()
                .is_some_and(|t| hub.access.accepted_within(&key, t, auth_ttl));
        if !ok {
            return Err(unavailable(format!(
                "{why}; {key} is gated or private (or not known to be public), and only a token \
                 upstream accepted for it within auth_ttl ({}) is served from cache",
                humantime::format_duration(auth_ttl)
            )));
        }
        tracing::debug!(repo = %key, %rev, "hub: {why}; serving the cached revision");
        Ok(commit)
    }

    /// Upstream's answer passed back: status, end-to-end headers but the Xet ones, body
    /// streamed; a redirect to upstream itself made relative to the cache.
    pub fn pass(&self, resp: Response<Incoming>) -> Response<Body> {
        let (mut parts, incoming) = resp.into_parts();
        strip_xet(&mut parts.headers);
        for h in ["connection", "transfer-encoding", "keep-alive"] {
            parts.headers.remove(h);
        }
        if let Some(loc) = parts
            .headers
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(|l| self.rewrite_url(l))
        {
            if let Ok(v) = HeaderValue::from_str(&loc) {
                parts.headers.insert(header::LOCATION, v);
            }
        }
        Response::from_parts(parts, incoming.map_err(std::io::Error::other).boxed())
    }

    /// An upstream URL (absolute on upstream, or absolute-path) as the client should see it:
    /// on the cache, under its prefix. Other hosts' URLs are left alone.
    pub fn rewrite_url(&self, url: &str) -> String {
        let cfg = self.state.config();
        let up = cfg.huggingface.upstream.as_str();
        if let Some(rest) = url.strip_prefix(up) {
            if rest.is_empty() || rest.starts_with('/') || rest.starts_with('?') {
                return format!("{}{rest}", self.base);
            }
        }
        if url.starts_with('/') && !url.starts_with("//") {
            let up_path = cfg
                .huggingface
                .upstream
                .uri()
                .path()
                .trim_end_matches('/')
                .to_string();
            let rest = url.strip_prefix(up_path.as_str()).unwrap_or(url);
            return format!("{}{rest}", self.prefix);
        }
        url.to_string()
    }

    /// A `Link` header's URLs rewritten with [`Ctx::rewrite_url`], upstream's host being
    /// whatever it named itself (the `Host` it was asked with).
    pub fn rewrite_link(&self, link: &str) -> String {
        let cfg = self.state.config();
        let up_path = cfg
            .huggingface
            .upstream
            .uri()
            .path()
            .trim_end_matches('/')
            .to_string();
        let mut out = String::new();
        let mut rest = link;
        while let Some(a) = rest.find('<') {
            let Some(b) = rest[a..].find('>') else { break };
            out.push_str(&rest[..=a]);
            let url = &rest[a + 1..a + b];
            let pq = url
                .parse::<Uri>()
                .ok()
                .and_then(|u| u.path_and_query().map(|p| p.as_str().to_string()));
            match pq {
                Some(pq) => {
                    let pq = pq.strip_prefix(up_path.as_str()).unwrap_or(&pq).to_string();
                    out.push_str(&format!("{}{pq}", self.base));
                }
                None => out.push_str(url),
            }
            out.push('>');
            rest = &rest[a + b + 1..];
        }
        out.push_str(rest);
        out
    }
}

/// Removes what would send an `hf_xet` client to the Xet service instead of this cache.
pub fn strip_xet(h: &mut HeaderMap) {
    let xet: Vec<_> = h
        .keys()
        .filter(|k| k.as_str().starts_with("x-xet-"))
        .cloned()
        .collect();
    for k in xet {
        h.remove(k);
    }
    let links: Vec<String> = h
        .get_all(header::LINK)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(split_links)
        .filter(|l| !l.contains("rel=\"xet-") && !l.contains("rel=xet-"))
        .collect();
    h.remove(header::LINK);
    if !links.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&links.join(", ")) {
            h.insert(header::LINK, v);
        }
    }
}

/// The links of one `Link` value (commas inside `<...>` kept).
fn split_links(v: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut inside = false;
    for c in v.chars() {
        match c {
            '<' => inside = true,
            '>' => inside = false,
            ',' if !inside => {
                out.push(cur.trim().to_string());
                cur.clear();
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    out
}

pub async fn read_limited(b: Incoming) -> Result<Bytes, String> {
    Limited::new(b, META_LIMIT)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| format!("reading upstream's answer: {e}"))
}

/// A 503 that says why, also in `X-Error-Message` (which `huggingface_hub` shows).
pub fn unavailable(why: String) -> Response<Body> {
    with_message(StatusCode::SERVICE_UNAVAILABLE, why)
}

pub fn bad_gateway(why: String) -> Response<Body> {
    with_message(StatusCode::BAD_GATEWAY, why)
}

fn with_message(status: StatusCode, why: String) -> Response<Body> {
    tracing::warn!("hub: {why}");
    let mut r = body::text(status, format!("lancached: {why}"));
    if let Ok(v) = HeaderValue::from_str(&why.replace(['\r', '\n'], " ")) {
        r.headers_mut().insert("x-error-message", v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xet_headers_go_and_other_links_stay() {
        let mut h = HeaderMap::new();
        h.insert("x-xet-hash", HeaderValue::from_static("abc"));
        h.insert("x-repo-commit", HeaderValue::from_static("c"));
        h.insert(
            header::LINK,
            HeaderValue::from_static(
                "<https://x/api/models/o/n/xet-read-token/c>; rel=\"xet-auth\", <https://x/a,b>; rel=\"next\", <http://127.0.0.1:9/>; rel=\"xet-reconstruction-info\"",
            ),
        );
        strip_xet(&mut h);
        assert!(h.get("x-xet-hash").is_none() && h.get("x-repo-commit").is_some());
        assert_eq!(h[header::LINK], "<https://x/a,b>; rel=\"next\"");
    }
}
