//! How a fill gets bytes from a registry: `GET <base>/v2/<repo>/blobs/<digest>` with an exact
//! `Range`, following the registry's redirect to its CDN anew for every slice (presigned URLs
//! expire, so they are never remembered). The answer is checked before a byte is written: a
//! 206 whose `Content-Range` is not the range asked for (or names another total size), or a
//! 200 to a ranged request for part of the blob, is refused rather than written at the wrong
//! offset.

use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use http_body_util::BodyExt;
use std::sync::Arc;

use crate::state::State;
use crate::store::fill::{ByteStream, FetchError, Fetcher};
use crate::store::Digest;

pub struct RegistryFetcher {
    state: Arc<State>,
    registry: String,
    repository: String,
    digest: Digest,
    size: u64,
    /// The hop list of the request that started the fill, for its upstream requests.
    hops: Arc<str>,
}

impl RegistryFetcher {
    pub fn new(
        state: Arc<State>,
        registry: &str,
        repository: &str,
        digest: &Digest,
        size: u64,
    ) -> RegistryFetcher {
        RegistryFetcher {
            state,
            registry: registry.to_string(),
            repository: repository.to_string(),
            digest: digest.clone(),
            size,
            hops: super::upstream::current_hops(),
        }
    }
}

/// The upstream URL of a blob.
pub fn blob_url(
    cfg: &crate::config::Config,
    registry: &str,
    repository: &str,
    digest: &Digest,
) -> Result<Uri, FetchError> {
    let base = super::base_url(cfg, registry).ok_or_else(|| {
        FetchError::new(
            "config",
            format!("registry {registry} is not in [upstream.registries]"),
        )
    })?;
    format!("{}/v2/{repository}/blobs/{digest}", base.as_str())
        .parse()
        .map_err(|e| FetchError::new("config", format!("bad blob URL: {e}")))
}

/// A ranged GET of a blob from its registry, following the redirect to the CDN (whose presigned
/// URL is used once and never kept). Shared by the fill's slice fetches and the size probe.
async fn get_range(
    state: &State,
    registry: &str,
    repository: &str,
    digest: &Digest,
    range: &str,
) -> Result<http::Response<hyper::body::Incoming>, FetchError> {
    let cfg = state.config();
    let url = blob_url(&cfg, registry, repository, digest)?;
    let mut headers = HeaderMap::new();
    let range = HeaderValue::from_str(range).expect("a byte range is ASCII");
    headers.insert(header::RANGE, range);
    state
        .proxy
        .upstream
        .send(&cfg, Method::GET, url, &headers, true)
        .await
        .map_err(|e| FetchError::new("upstream_unreachable", format!("{e:#}")))
}

/// Parses `bytes a-b/total`.
pub fn content_range(v: &str) -> Option<(u64, u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (a, b) = range.split_once('-')?;
    let total = if total == "*" {
        None
    } else {
        Some(total.parse().ok()?)
    };
    Some((a.parse().ok()?, b.parse().ok()?, total))
}

impl Fetcher for RegistryFetcher {
    fn fetch(&self, start: u64, end: u64) -> BoxFuture<'static, Result<ByteStream, FetchError>> {
        let state = self.state.clone();
        let registry = self.registry.clone();
        let repository = self.repository.clone();
        let digest = self.digest.clone();
        let size = self.size;
        let hops = self.hops.clone();
        Box::pin(super::upstream::HOPS.scope(hops, async move {
            let resp = get_range(
                &state,
                &registry,
                &repository,
                &digest,
                &format!("bytes={start}-{end}"),
            )
            .await?;
            ranged_body(resp, start, end, size, &digest.to_string())
        }))
    }
}

/// Checks a ranged answer for bytes `start..=end` of a `size`-byte blob (`what` names it in
/// errors) and turns its body into the fill's byte stream. Shared with the Hub's fetcher.
pub fn ranged_body(
    resp: http::Response<hyper::body::Incoming>,
    start: u64,
    end: u64,
    size: u64,
    what: &str,
) -> Result<ByteStream, FetchError> {
    match resp.status() {
        StatusCode::PARTIAL_CONTENT => {
            let cr = resp
                .headers()
                .get(header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(content_range);
            match cr {
                Some((a, b, total))
                    if a == start && b == end && total.is_none_or(|t| t == size) => {}
                _ => {
                    return Err(FetchError::new(
                        "upstream_range",
                        format!(
                            "asked for bytes {start}-{end}/{size}, upstream answered {:?}",
                            resp.headers().get(header::CONTENT_RANGE)
                        ),
                    ))
                }
            }
        }
        // A server that ignores Range is usable only when the whole blob was asked for.
        StatusCode::OK if start == 0 && end + 1 == size => {}
        StatusCode::OK => {
            return Err(FetchError::new(
                "upstream_range",
                "upstream ignored the Range header",
            ))
        }
        StatusCode::NOT_FOUND => {
            return Err(FetchError::new(
                "upstream_not_found",
                format!("{what} not found upstream"),
            ))
        }
        s => {
            return Err(FetchError::new(
                "upstream_status",
                format!("upstream answered {s}"),
            ))
        }
    }
    let stream = resp.into_body().into_data_stream().map(|r| {
        r.map_err(|e| {
            // A connection closed before Content-Length: a truncated answer.
            let kind = if is_truncation(&e) {
                "truncated"
            } else {
                "upstream_body"
            };
            FetchError::new(kind, error_chain(&e))
        })
    });
    Ok(stream.boxed())
}

/// Whether a body error means the connection ended before the promised length.
pub(crate) fn is_truncation(e: &hyper::Error) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            if h.is_incomplete_message() {
                return true;
            }
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::UnexpectedEof {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(err) = cur {
        s.push_str(": ");
        s.push_str(&err.to_string());
        cur = err.source();
    }
    s
}

/// The size of a blob according to upstream, for a cold `HEAD` or a fill whose manifest we
/// never saw: a one-byte ranged GET (a presigned CDN URL answers GET, not always HEAD).
pub async fn probe_size(
    state: &Arc<State>,
    registry: &str,
    repository: &str,
    digest: &Digest,
) -> Result<Option<u64>, FetchError> {
    let resp = get_range(state, registry, repository, digest, "bytes=0-0").await?;
    match resp.status() {
        StatusCode::PARTIAL_CONTENT => Ok(resp
            .headers()
            .get(header::CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(content_range)
            .and_then(|(_, _, t)| t)),
        StatusCode::OK => Ok(resp
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())),
        StatusCode::RANGE_NOT_SATISFIABLE => Ok(Some(0)),
        StatusCode::NOT_FOUND => Ok(None),
        s => Err(FetchError::new(
            "upstream_status",
            format!("upstream answered {s}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn content_range_parsing() {
        use super::content_range;
        assert_eq!(content_range("bytes 0-9/100"), Some((0, 9, Some(100))));
        assert_eq!(content_range("bytes 5-9/*"), Some((5, 9, None)));
        assert_eq!(content_range("bytes */100"), None);
        assert_eq!(content_range("items 0-1/2"), None);
    }
}
