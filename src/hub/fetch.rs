//! How a Hub LFS fill gets its bytes: `GET <upstream>/[datasets/]{repo}/resolve/{commit}/{path}`
//! with the exact `Range` and the client's token, then the Hub's 302 to its CDN followed
//! cache-side without the token (a presigned URL carries its own authority, and a token must
//! not reach another host). The redirect is taken anew for every slice: presigned URLs expire.
//! The answer is checked as a registry's is ([`crate::proxy::fetch::ranged_body`]); the fill
//! engine checks the sha256 (the linked ETag) before anything is published.

use futures_util::future::BoxFuture;
use http::{header, HeaderMap, HeaderValue, Method, Uri};
use std::sync::Arc;

use super::repo::{encode_path, is_commit, valid_path, Kind, RepoId};
use crate::state::State;
use crate::store::fill::{ByteStream, FetchError, Fetcher};

pub struct HubFetcher {
    state: Arc<State>,
    /// The path (and query) below the upstream base URL.
    rest: String,
    auth: Option<HeaderValue>,
    size: u64,
    what: String,
    hops: Arc<str>,
}

/// The slice map's origin for a Hub file: `{models,datasets}/{repo}@{commit}/{path}`.
pub fn origin(repo: &RepoId, commit: &str, path: &str) -> String {
    format!("{}@{commit}/{path}", repo.key())
}

/// [`origin`] read back, checked like a request's names (a slice map is on-disk input).
pub fn parse_origin(origin: &str) -> Option<(RepoId, String, String)> {
    let (repo, rest) = origin.split_once('@')?;
    let (commit, path) = rest.split_once('/')?;
    let (kind, id) = repo.split_once('/')?;
    let kind = match kind {
        "models" => Kind::Model,
        "datasets" => Kind::Dataset,
        _ => return None,
    };
    let repo = RepoId::new(kind, id).ok()?;
    (is_commit(commit) && valid_path(path)).then(|| (repo, commit.to_string(), path.to_string()))
}

impl HubFetcher {
    pub fn new(
        state: Arc<State>,
        repo: &RepoId,
        commit: &str,
        path: &str,
        auth: Option<HeaderValue>,
        size: u64,
    ) -> HubFetcher {
        HubFetcher {
            state,
            rest: format!(
                "/{}{}/resolve/{commit}/{}",
                repo.kind.url_prefix(),
                repo.id,
                encode_path(path)
            ),
            auth,
            size,
            what: format!("{}/{path}@{commit}", repo.key()),
            hops: crate::proxy::upstream::current_hops(),
        }
    }

    /// Rebuilds a fetcher from a slice map's origin (a resumed fill has no token).
    pub fn from_origin(state: Arc<State>, origin: &str, size: u64) -> Option<HubFetcher> {
        let (repo, commit, path) = parse_origin(origin)?;
        Some(HubFetcher::new(state, &repo, &commit, &path, None, size))
    }
}

impl Fetcher for HubFetcher {
    fn fetch(&self, start: u64, end: u64) -> BoxFuture<'static, Result<ByteStream, FetchError>> {
        let state = self.state.clone();
        let rest = self.rest.clone();
        let auth = self.auth.clone();
        let (size, what) = (self.size, self.what.clone());
        let hops = self.hops.clone();
        Box::pin(crate::proxy::upstream::HOPS.scope(hops, async move {
            let cfg = state.config();
            let url: Uri = format!("{}{rest}", cfg.huggingface.upstream.as_str())
                .parse()
                .map_err(|e| FetchError::new("config", format!("bad Hub URL: {e}")))?;
            let mut h = HeaderMap::new();
            h.insert(
                header::RANGE,
                HeaderValue::from_str(&format!("bytes={start}-{end}")).expect("ascii"),
            );
            let mut with_auth = h.clone();
            if let Some(a) = auth {
                with_auth.insert(header::AUTHORIZATION, a);
            }
            let up = &state.proxy.upstream;
            let unreachable =
                |e: anyhow::Error| FetchError::new("upstream_unreachable", format!("{e:#}"));
            // A renamed repo answers a same-host 307 to its new name (the token still belongs
            // there), and the file itself a 302 to the CDN (which must not see the token).
            // `follow` is set once the request leaves the Hub's own host.
            let mut next = url.clone();
            let mut hops = 0;
            let resp = loop {
                let same_host = next.authority() == url.authority();
                let headers = if same_host { &with_auth } else { &h };
                let resp = up
                    .send(&cfg, Method::GET, next.clone(), headers, !same_host)
                    .await
                    .map_err(unreachable)?;
                if !resp.status().is_redirection() || !same_host {
                    break resp;
                }
                hops += 1;
                if hops > 5 {
                    return Err(FetchError::new(
                        "upstream_status",
                        "more than 5 redirects on the Hub",
                    ));
                }
                let loc = resp
                    .headers()
                    .get(header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| {
                        FetchError::new("upstream_status", "redirect without Location")
                    })?;
                next = crate::proxy::upstream::join_url(&next, loc)
                    .map_err(|e| FetchError::new("upstream_status", format!("{e:#}")))?;
            };
            crate::proxy::fetch::ranged_body(resp, start, end, size, &what)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_round_trip_and_hostile_ones_are_refused() {
        let r = RepoId::new(Kind::Dataset, "o/d").unwrap();
        let c = "a".repeat(40);
        let o = origin(&r, &c, "data/x.parquet");
        assert_eq!(o, format!("datasets/o/d@{c}/data/x.parquet"));
        assert_eq!(
            parse_origin(&o),
            Some((r, c.clone(), "data/x.parquet".into()))
        );
        for bad in [
            format!("models/o/n@{c}/../x"),
            "models/o/n@main/x".to_string(),
            format!("spaces/o/n@{c}/x"),
            format!("models/../n@{c}/x"),
            "models/o/n".to_string(),
        ] {
            assert_eq!(parse_origin(&bad), None, "{bad}");
        }
    }
}
