//! What clients fetch to trust the cache: `/ca.crt` (the CA certificate, PEM) and the helper
//! scripts `/setup.sh` (Linux, macOS) and `/setup.ps1` (Windows), whose templates live in
//! `scripts/`. When served, each script gets the cache's base URL and the CA's SHA-256
//! fingerprint filled in, so `curl -fsSL http://cache/setup.sh | sudo sh` needs no argument and
//! refuses a CA that is not the one the cache had when the script was served.
//!
//! The base URL is `[http] public_url`, else the first `[dns] advertise` address, else the
//! request's `Host` header, else the address the request arrived on. The Host header comes from
//! the network, and a script is about to run as root: it is used only when it is a plain
//! `host[:port]`, and the final URL is checked against a small character set before it is
//! written into the script.

use http::{header, HeaderMap, HeaderValue, Response, StatusCode};
use std::net::{IpAddr, Ipv6Addr};

use crate::config::Config;
use crate::http::body::{self, Body};
use crate::http::Peer;
use crate::state::State;

const SETUP_SH: &str = include_str!("../../scripts/setup.sh");
const SETUP_PS1: &str = include_str!("../../scripts/setup.ps1");
const URL_PLACEHOLDER: &str = "@@LANCACHE_URL@@";
const SHA_PLACEHOLDER: &str = "@@LANCACHE_CA_SHA256@@";

#[derive(Debug, Clone, Copy)]
pub enum Script {
    Sh,
    Ps1,
}

/// `GET /ca.crt`: the CA certificate in PEM (the same bytes `lancachectl ca` prints).
pub fn ca_crt(state: &State) -> Response<Body> {
    match state.tls.ca(&state.config()) {
        Ok(ca) => {
            let mut r = Response::new(body::full(ca.pem.clone()));
            let h = r.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-pem-file"),
            );
            h.insert(
                header::CONTENT_DISPOSITION,
                HeaderValue::from_static("attachment; filename=\"lancache-ca.crt\""),
            );
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            r
        }
        Err(e) => unavailable(e),
    }
}

/// `GET /setup.sh`, `GET /setup.ps1`: the helper with URL and fingerprint filled in.
pub fn script(which: Script, headers: &HeaderMap, peer: Peer, state: &State) -> Response<Body> {
    let config = state.config();
    let ca = match state.tls.ca(&config) {
        Ok(ca) => ca,
        Err(e) => return unavailable(e),
    };
    let url = match base_url(&config, headers.get(header::HOST), peer) {
        Ok(u) => u,
        Err(e) => return body::text(StatusCode::BAD_REQUEST, e),
    };
    let (template, content_type) = match which {
        Script::Sh => (SETUP_SH, "text/x-shellscript; charset=utf-8"),
        Script::Ps1 => (SETUP_PS1, "text/plain; charset=utf-8"),
    };
    let text = template
        .replace(URL_PLACEHOLDER, &url)
        .replace(SHA_PLACEHOLDER, &ca.fingerprint);
    let mut r = Response::new(body::full(text));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // The fingerprint changes when the CA is rotated: never serve a stale copy.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn unavailable(e: anyhow::Error) -> Response<Body> {
    tracing::error!("the cache's CA is unavailable: {e:#}");
    body::text(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("the cache's CA is unavailable: {e:#}"),
    )
}

/// The base URL a client should fetch `/ca.crt` from (see the module note for the order).
pub fn base_url(config: &Config, host: Option<&HeaderValue>, peer: Peer) -> Result<String, String> {
    // A port the client used for plain HTTP is worth keeping; over HTTPS it is the TLS port,
    // which the script (speaking plain HTTP) must not use.
    let http_port = (!peer.tls && peer.local.port() != 80).then_some(peer.local.port());
    let url = if config.http.public_url.is_set() {
        config.http.public_url.0.clone()
    } else if let Some(ip) = config.dns.advertise.first() {
        format!("http://{}", with_port(&host_literal(*ip), http_port))
    } else if let Some(hp) = host.and_then(|h| h.to_str().ok()).and_then(parse_host_port) {
        let port = if peer.tls { None } else { hp.1 };
        format!("http://{}", with_port(&hp.0, port))
    } else {
        format!(
            "http://{}",
            with_port(&host_literal(peer.local.ip()), http_port)
        )
    };
    let safe = (url.starts_with("http://") || url.starts_with("https://"))
        && url
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".:/[]-_".contains(&b));
    if safe {
        Ok(url)
    } else {
        Err(format!(
            "cannot build a safe base URL for the script (got {url:?}); set `[http] public_url`"
        ))
    }
}

fn host_literal(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

fn with_port(host: &str, port: Option<u16>) -> String {
    match port {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    }
}

/// Accepts `name`, `name:port`, `1.2.3.4[:port]` and `[v6][:port]`; nothing else.
pub fn parse_host_port(s: &str) -> Option<(String, Option<u16>)> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (inner, after) = rest.split_once(']')?;
        let v6: Ipv6Addr = inner.parse().ok()?;
        (format!("[{v6}]"), after)
    } else {
        let h = s.rsplit_once(':').map_or(s, |(h, _)| h);
        if !crate::store::names::valid_dns_name(h) {
            return None;
        }
        (h.to_ascii_lowercase(), &s[h.len()..])
    };
    let port = match port {
        "" => None,
        p => {
            let digits = p.strip_prefix(':')?;
            if digits.is_empty() || digits.len() > 5 || !digits.bytes().all(|b| b.is_ascii_digit())
            {
                return None;
            }
            let n: u16 = digits.parse().ok()?;
            if n == 0 {
                return None;
            }
            Some(n)
        }
    };
    Some((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(local: &str, tls: bool) -> Peer {
        Peer {
            addr: "127.0.0.1:5000".parse().unwrap(),
            local: local.parse().unwrap(),
            tls,
        }
    }

    #[test]
    fn host_header_is_validated() {
        assert_eq!(
            parse_host_port("Cache.LAN:8080"),
            Some(("cache.lan".into(), Some(8080)))
        );
        assert_eq!(parse_host_port("10.0.0.5"), Some(("10.0.0.5".into(), None)));
        assert_eq!(
            parse_host_port("[fd00::1]:80"),
            Some(("[fd00::1]".into(), Some(80)))
        );
        for bad in [
            "",
            "a b",
            "x;rm -rf /",
            "x'$(id)'",
            "host:",
            "host:99999",
            "host:0",
            "[nope]",
            "[::1]x",
            "-bad.lan",
            "a:b:c",
            "user@host",
        ] {
            assert_eq!(parse_host_port(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn base_url_order() {
        let c = Config::default();
        let host = HeaderValue::from_static("cache.lan:8080");
        assert_eq!(
            base_url(&c, Some(&host), peer("10.0.0.2:8080", false)).unwrap(),
            "http://cache.lan:8080"
        );
        // Over HTTPS the Host port is the TLS port: dropped.
        assert_eq!(
            base_url(&c, Some(&host), peer("10.0.0.2:443", true)).unwrap(),
            "http://cache.lan"
        );
        // A hostile Host header falls back to the local address.
        let evil = HeaderValue::from_static("x'$(reboot)'");
        assert_eq!(
            base_url(&c, Some(&evil), peer("10.0.0.2:80", false)).unwrap(),
            "http://10.0.0.2"
        );
        let adv = Config::parse("[dns]\nadvertise = [\"fd00::5\"]\n").unwrap();
        assert_eq!(
            base_url(&adv, Some(&host), peer("[fd00::5]:8080", false)).unwrap(),
            "http://[fd00::5]:8080"
        );
        let public =
            Config::parse("[http]\npublic_url = \"https://cache.example:8443\"\n").unwrap();
        assert_eq!(
            base_url(&public, None, peer("10.0.0.2:80", false)).unwrap(),
            "https://cache.example:8443"
        );
    }
}
