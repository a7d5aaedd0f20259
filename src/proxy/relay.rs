//! The relay: a streaming reverse proxy for the requests on an intercepted host that the cache
//! does not cache. `hf.co` is a registry (`/v2/...`) and also Hugging Face's short-link domain
//! (`hf.co/<user>/<repo>` is a link to a model's page), so once DNS answers `hf.co` with the
//! cache, everything on it that is not the registry API must still reach Hugging Face as if
//! the cache were not there. The Hugging Face issue reuses this for huggingface.co's pages,
//! login, uploads and git over HTTPS.
//!
//! What "unchanged" means here:
//! - the method, path and query, and the headers go upstream as the client sent them, except
//!   the hop-by-hop ones (RFC 9110 §7.6.1: `Connection` and the headers it names, `Keep-Alive`,
//!   `Proxy-*`, `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade`) and `Expect` (this server has
//!   already answered `100-continue` when it starts reading the body). `Host` names the
//!   upstream; the loop-guard header is added;
//! - the request body streams upstream as it arrives, and the answer's status, headers (minus
//!   hop-by-hop) and body stream back as they arrive: nothing is buffered whole;
//! - redirects are not followed: they are links for the client (a browser, `git`) to follow;
//! - `Upgrade` (WebSocket) is not relayed: none of these hosts needs it for what clients do.
//!
//! Upstream is reached with the daemon's own client ([`super::upstream`]): its resolvers, its
//! roots, its loop guard. Nothing is logged of the headers (they carry tokens and cookies).

use http::header::{self, HeaderMap, HeaderName};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::sync::Arc;

use super::{base_url, strip_port};
use crate::config::{BaseUrl, Config};
use crate::http::body::{self, Body};
use crate::state::State;

/// Registry hosts whose paths outside the registry API are relayed. An explicit list, not
/// every registry: a registry host that is only a registry answers 404 for other paths, and
/// the cache's own name keeps its own endpoints (`/health`, `/api/models`, the web UI).
pub const RELAYED_HOSTS: &[&str] = &["hf.co"];

/// Whether a path on a relayed host is the cache's own: the registry API, and the data plane's
/// `/blobs/sha256:…` (a blob answer may name it on the host the client asked for). Neither can
/// be a Hugging Face link: `/v2` is no user, and no repository name holds a `:`.
pub fn stays_with_cache(path: &str) -> bool {
    path == "/v2" || path.starts_with("/v2/") || path.starts_with("/blobs/sha256:")
}

/// The base URL to relay `req` to: its host is a relayed host configured in
/// `[upstream.registries]` (so tests and mirrors point it elsewhere, like the registry API).
pub fn target(cfg: &Config, req: &Request<Incoming>) -> Option<BaseUrl> {
    let host = super::request_host(req);
    let host = strip_port(&host).trim_end_matches('.');
    if !RELAYED_HOSTS.contains(&host) {
        return None;
    }
    base_url(cfg, host)
}

/// Relays `req` to `base` and streams the answer back.
pub async fn handle(req: Request<Incoming>, base: &BaseUrl, state: &Arc<State>) -> Response<Body> {
    let cfg = state.config();
    let url = match upstream_url(base, req.uri()) {
        Ok(u) => u,
        Err(e) => return body::text(StatusCode::BAD_REQUEST, e),
    };
    let (mut parts, incoming) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(header::EXPECT);
    let method = parts.method.clone();
    let out = Request::from_parts(parts, incoming);
    let resp = match state.proxy.upstream.forward(&cfg, &url, out).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(%method, url = %url_for_log(&url), "relay: upstream failed: {e:#}");
            return body::text(
                StatusCode::BAD_GATEWAY,
                format!("lancached could not relay this request upstream: {e:#}"),
            );
        }
    };
    tracing::debug!(%method, url = %url_for_log(&url), status = resp.status().as_u16(), "relayed");
    let (mut parts, incoming) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    // An upstream body error ends the client's response early (truncated, never "complete").
    let body = incoming.map_err(std::io::Error::other).boxed();
    Response::from_parts(parts, body)
}

/// `base` + the request's path and query, byte for byte (no decoding, no normalisation: a
/// path that means something to upstream must mean the same after the hop).
fn upstream_url(base: &BaseUrl, uri: &Uri) -> Result<Uri, String> {
    let pq = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    format!("{}{pq}", base.as_str())
        .parse()
        .map_err(|e| format!("cannot relay {pq:?}: {e}"))
}

/// The URL without its query: queries carry signatures and tokens.
fn url_for_log(url: &Uri) -> String {
    format!(
        "{}://{}{}",
        url.scheme_str().unwrap_or("?"),
        url.authority().map(|a| a.as_str()).unwrap_or("?"),
        url.path()
    )
}

/// Removes the headers that describe one connection, not the message (RFC 9110 §7.6.1),
/// including any that `Connection` names.
fn strip_hop_by_hop(h: &mut HeaderMap) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in [
        header::CONNECTION,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        h.remove(n);
    }
    for n in ["keep-alive", "proxy-connection"] {
        h.remove(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn hop_by_hop_headers_go_and_the_rest_stay() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, X-Session-Hop"),
            ("x-session-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic x"),
            ("authorization", "Bearer hf_x"),
            ("cookie", "token=1"),
            ("user-agent", "git/2.45"),
            ("content-length", "5"),
        ] {
            h.append(k, HeaderValue::from_static(v));
        }
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(
            left,
            ["authorization", "content-length", "cookie", "user-agent"]
        );
    }

    #[test]
    fn upstream_url_keeps_path_and_query_byte_for_byte() {
        let base = BaseUrl("https://hf.co".into());
        let uri: Uri = "/Bartowski/Repo%2Fx?a=1&b=%20".parse().unwrap();
        assert_eq!(
            upstream_url(&base, &uri).unwrap().to_string(),
            "https://hf.co/Bartowski/Repo%2Fx?a=1&b=%20"
        );
        let prefixed = BaseUrl("http://127.0.0.1:9/mirror".into());
        assert_eq!(
            upstream_url(&prefixed, &"/".parse().unwrap())
                .unwrap()
                .to_string(),
            "http://127.0.0.1:9/mirror/"
        );
        let signed: Uri = "https://hf.co/x?__sign=secret".parse().unwrap();
        assert_eq!(url_for_log(&signed), "https://hf.co/x");
    }

    #[test]
    fn only_the_registry_api_and_blobs_stay_with_the_cache() {
        assert!(stays_with_cache("/v2") && stays_with_cache("/v2/library/x/manifests/latest"));
        assert!(stays_with_cache("/blobs/sha256:00"));
        for relayed in [
            "/v2x",
            "/bartowski/Llama-3.2-1B",
            "/",
            "/blobs",
            "/health",
            "/api/models",
        ] {
            assert!(!stays_with_cache(relayed), "{relayed}");
        }
    }
}
