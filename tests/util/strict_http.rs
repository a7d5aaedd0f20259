//! The HTTP layer of the test clients that stand in for Ollama 0.34.2 (`strict_ollama`,
//! `transfer_client`), and the redirect policy of ollama PRs 18512/18533 as DESIGN.md states it.
//!
//! - Names resolve through an in-process map `host:port → SocketAddr` (like curl's
//!   `--connect-to`), so tests need no network namespace; names not in the map are IP literals or
//!   go to the system resolver. The address the policy checks is the one connected to.
//! - TLS is rustls with the roots given (the cache's CA), SNI = the URL's host, and no way to skip
//!   verification. ALPN offers h2 and http/1.1 as Go does (h2 can be switched off); plain HTTP is
//!   HTTP/1.1. One connection per request: dropping a response closes its connection, which is
//!   how "close the body after reading the headers" is done.
//! - [`check_redirect`] is the policy, applied to every redirect a client follows and to a URL
//!   taken from a `Location`. Checks in this order, the first one violated is the error:
//!   1. another host name (ports are ignored, as Go's `URL.Hostname()` does) is refused unless
//!      both are ollama.com / ollama.ai / hf.co / huggingface.co or below: "blocked redirect to
//!      a different host" (DESIGN.md's wording, which users see for the cache's old 307 that
//!      breaks all three rules);
//!   2. https → http is refused: "blocked redirect from https to http", never waived;
//!   3. a target at a private address (loopback, RFC 1918, CGNAT 100.64/10, link-local, ULA
//!      fc00::/7, ::1, unspecified) is refused: "blocked redirect to a private address IP".
//!      Same-host hops are checked too (DESIGN: treat the unknown as checked), with one reading
//!      made explicit here: a hop to the same host name that lands on the very address the
//!      request already used gains no reach and passes. Without that no client could ever pull
//!      from a LAN registry with a same-host `Location`, which DESIGN.md says works for every
//!      client; a same-host hop whose name now resolves elsewhere (DNS rebinding) is refused.
//!
//!   `insecure` waives 1 and 3 but records each waiver, so a test can prove a pull did not rely
//!   on them.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};

/// How long any one request may take to produce its headers.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub scheme: String,
    /// Lower case, without brackets for IPv6.
    pub host: String,
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
}

impl Url {
    pub fn parse(s: &str) -> Result<Url, String> {
        let (scheme, rest) = s
            .split_once("://")
            .ok_or_else(|| format!("not an absolute URL: {s:?}"))?;
        let scheme = scheme.to_ascii_lowercase();
        let default = match scheme.as_str() {
            "http" => 80,
            "https" => 443,
            _ => return Err(format!("unsupported scheme in {s:?}")),
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], rest[i..].to_string()),
            None => (rest, "/".to_string()),
        };
        let path = if path.starts_with('?') {
            format!("/{path}")
        } else {
            path
        };
        let (host, port) = split_authority(authority, default)?;
        Ok(Url {
            scheme,
            host,
            port,
            path,
        })
    }

    fn default_port(&self) -> u16 {
        if self.scheme == "https" {
            443
        } else {
            80
        }
    }

    /// `host[:port]`, the port only when it is not the scheme's default (Go's `Host` header).
    pub fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == self.default_port() {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    /// `host:port` with the port always present (the resolve map's key).
    pub fn host_port(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// A `Location` value resolved against this URL (absolute, scheme-relative, absolute-path or
    /// relative-path reference).
    pub fn join(&self, location: &str) -> Result<Url, String> {
        if location.contains("://") {
            return Url::parse(location);
        }
        if let Some(rest) = location.strip_prefix("//") {
            return Url::parse(&format!("{}://{rest}", self.scheme));
        }
        let path = if location.starts_with('/') {
            location.to_string()
        } else {
            let base = self.path.split('?').next().unwrap_or("/");
            let dir = &base[..base.rfind('/').map(|i| i + 1).unwrap_or(0)];
            format!("{dir}{location}")
        };
        Ok(Url {
            path,
            ..self.clone()
        })
    }
}

impl std::fmt::Display for Url {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}{}", self.scheme, self.authority(), self.path)
    }
}

/// `host[:port]` → (lower-case host, port).
pub fn split_authority(authority: &str, default: u16) -> Result<(String, u16), String> {
    let bad = || format!("bad host {authority:?}");
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (h, after) = rest.split_once(']').ok_or_else(bad)?;
        match after.strip_prefix(':') {
            Some(p) => (h, Some(p)),
            None if after.is_empty() => (h, None),
            None => return Err(bad()),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(bad());
    }
    let port = match port {
        Some(p) => p.parse().map_err(|_| bad())?,
        None => default,
    };
    Ok((host.to_ascii_lowercase(), port))
}

/// Hosts whose redirects to each other 0.34.2 allows.
const TRUSTED: [&str; 4] = ["ollama.com", "ollama.ai", "hf.co", "huggingface.co"];

fn trusted(host: &str) -> bool {
    let host = host.trim_end_matches('.');
    TRUSTED
        .iter()
        .any(|d| host == *d || host.ends_with(&format!(".{d}")))
}

/// Loopback, RFC 1918, CGNAT, link-local, ULA, unspecified (and IPv4-mapped forms of them).
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_private(IpAddr::V4(v4));
            }
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
        }
    }
}

/// One side of a redirect: the URL and the address it was (or will be) reached at.
#[derive(Debug, Clone)]
pub struct Hop<'a> {
    pub url: &'a Url,
    pub ip: IpAddr,
}

/// The 0.34.2 policy for a redirect (or a `Location` taken as a URL) from `from` to `to`; see
/// the module docs. Waivers (insecure mode only) are appended to `waived`.
pub fn check_redirect(
    from: Hop,
    to: Hop,
    insecure: bool,
    waived: &mut Vec<String>,
) -> Result<(), String> {
    let same_host = from.url.host == to.url.host;
    let both_trusted = trusted(&from.url.host) && trusted(&to.url.host);
    if !same_host && !both_trusted {
        if !insecure {
            return Err("blocked redirect to a different host".into());
        }
        waived.push(format!(
            "host: {} → {} ({})",
            from.url.host, to.url.host, to.url
        ));
    }
    if from.url.scheme == "https" && to.url.scheme == "http" {
        return Err("blocked redirect from https to http".into());
    }
    if is_private(to.ip) && !(same_host && to.ip == from.ip) {
        if !insecure {
            return Err(format!("blocked redirect to a private address {}", to.ip));
        }
        waived.push(format!(
            "address: {} is {} ({})",
            to.url.host, to.ip, to.url
        ));
    }
    Ok(())
}

/// A response whose body has not been read yet.
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Incoming,
    /// The address the request went to.
    pub peer: SocketAddr,
    pub version: http::Version,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Reads up to `limit` body bytes (all when `None`), calling `sink` with each chunk; returns
    /// how many were read and whether the body ended cleanly (`Err` = the connection broke).
    pub async fn read_body(
        &mut self,
        limit: Option<u64>,
        mut sink: impl FnMut(&[u8]),
    ) -> (u64, Result<(), String>) {
        let mut n = 0u64;
        loop {
            if limit.is_some_and(|l| n >= l) {
                return (n, Ok(()));
            }
            let frame = match tokio::time::timeout(Duration::from_secs(30), self.body.frame()).await
            {
                Err(_) => return (n, Err("body stalled for 30 s".into())),
                Ok(None) => return (n, Ok(())),
                Ok(Some(Err(e))) => return (n, Err(format!("reading the body: {e}"))),
                Ok(Some(Ok(f))) => f,
            };
            if let Ok(data) = frame.into_data() {
                let take = match limit {
                    Some(l) => (l - n).min(data.len() as u64) as usize,
                    None => data.len(),
                };
                sink(&data[..take]);
                n += take as u64;
            }
        }
    }

    pub async fn bytes(&mut self) -> Result<Vec<u8>, String> {
        let mut v = Vec::new();
        let (_, r) = self.read_body(None, |b| v.extend_from_slice(b)).await;
        r.map(|_| v)
    }
}

/// Name resolution and TLS trust for one client.
#[derive(Clone)]
pub struct Net {
    resolve: Arc<Mutex<HashMap<String, SocketAddr>>>,
    tls: Option<Arc<rustls::ClientConfig>>,
    tls_h1: Option<Arc<rustls::ClientConfig>>,
    /// Offer h2 by ALPN on TLS connections (Go's default).
    pub http2: bool,
}

impl Default for Net {
    fn default() -> Self {
        Net::new()
    }
}

impl Net {
    /// No TLS roots at all: every https URL fails verification.
    pub fn new() -> Net {
        Net {
            resolve: Arc::default(),
            tls: None,
            tls_h1: None,
            http2: true,
        }
    }

    /// Trusts exactly the certificates in `pem` (e.g. the cache's `ca.crt`).
    pub fn with_roots(mut self, pem: &[u8]) -> Net {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(pem) {
            roots
                .add(c.expect("a PEM certificate"))
                .expect("usable root");
        }
        let make = |alpn: Vec<Vec<u8>>| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut c = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots.clone())
                .with_no_client_auth();
            c.alpn_protocols = alpn;
            Arc::new(c)
        };
        self.tls = Some(make(vec![b"h2".to_vec(), b"http/1.1".to_vec()]));
        self.tls_h1 = Some(make(vec![b"http/1.1".to_vec()]));
        self
    }

    /// Connections to `host:port` go to `to` (the port defaults to none: give it).
    pub fn resolve(self, host_port: &str, to: SocketAddr) -> Net {
        self.resolve
            .lock()
            .unwrap()
            .insert(host_port.to_ascii_lowercase(), to);
        self
    }

    /// Where a URL's host:port is reached.
    pub async fn lookup(&self, url: &Url) -> Result<SocketAddr, String> {
        if let Some(a) = self.resolve.lock().unwrap().get(&url.host_port()) {
            return Ok(*a);
        }
        if let Ok(ip) = url.host.parse::<IpAddr>() {
            return Ok(SocketAddr::new(ip, url.port));
        }
        tokio::net::lookup_host(url.host_port())
            .await
            .map_err(|e| format!("dial tcp: lookup {}: {e}", url.host))?
            .next()
            .ok_or_else(|| format!("dial tcp: lookup {}: no such host", url.host))
    }

    /// Sends one request (no redirects followed) and returns once the headers are in.
    pub async fn send(
        &self,
        method: &Method,
        url: &Url,
        headers: &[(&str, String)],
    ) -> Result<Resp, String> {
        let fut = self.send_inner(method, url, headers);
        match tokio::time::timeout(HEAD_TIMEOUT, fut).await {
            Ok(r) => r.map_err(|e| format!("{} {:?}: {e}", go_op(method), url.to_string())),
            Err(_) => Err(format!(
                "{} {:?}: no response headers within {HEAD_TIMEOUT:?}",
                go_op(method),
                url.to_string()
            )),
        }
    }

    async fn send_inner(
        &self,
        method: &Method,
        url: &Url,
        headers: &[(&str, String)],
    ) -> Result<Resp, String> {
        let peer = self.lookup(url).await?;
        let tcp = tokio::net::TcpStream::connect(peer)
            .await
            .map_err(|e| format!("dial tcp {peer}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let mut req = Request::builder().method(method.clone());
        for (k, v) in headers {
            req = req.header(*k, v.as_str());
        }
        if url.scheme == "https" {
            let cfg = if self.http2 { &self.tls } else { &self.tls_h1 };
            let cfg = cfg
                .clone()
                .ok_or("tls: failed to verify certificate: x509: no roots given")?;
            let name = ServerName::try_from(url.host.clone()).map_err(|e| e.to_string())?;
            let tls = tokio_rustls::TlsConnector::from(cfg)
                .connect(name, tcp)
                .await
                .map_err(|e| format!("tls: {e}"))?;
            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            if h2 {
                let (mut sender, conn) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                        .await
                        .map_err(|e| format!("h2 handshake: {e}"))?;
                tokio::spawn(conn);
                let req = req
                    .uri(url.to_string())
                    .body(Empty::<Bytes>::new())
                    .map_err(|e| e.to_string())?;
                let r = sender.send_request(req).await.map_err(|e| e.to_string())?;
                return Ok(into_resp(r, peer));
            }
            return send_h1(TokioIo::new(tls), req, url, peer).await;
        }
        send_h1(TokioIo::new(tcp), req, url, peer).await
    }
}

async fn send_h1<T>(
    io: T,
    req: http::request::Builder,
    url: &Url,
    peer: SocketAddr,
) -> Result<Resp, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    let req = req
        .uri(url.path.as_str())
        .header("host", url.authority())
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let r = sender.send_request(req).await.map_err(|e| e.to_string())?;
    Ok(into_resp(r, peer))
}

fn into_resp(r: http::Response<Incoming>, peer: SocketAddr) -> Resp {
    let version = r.version();
    let (parts, body) = r.into_parts();
    Resp {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
        peer,
        version,
    }
}

/// Go's `url.Error` operation name ("Get", "Head") for error messages.
pub fn go_op(m: &Method) -> String {
    let s = m.as_str();
    format!("{}{}", &s[..1], s[1..].to_ascii_lowercase())
}

/// The redirect statuses Go's client follows.
pub fn is_redirect(status: u16) -> bool {
    matches!(status, 301 | 302 | 303 | 307 | 308)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    fn check(from: &str, fip: &str, to: &str, tip: &str, insecure: bool) -> (String, usize) {
        let (f, t) = (u(from), u(to));
        let mut w = Vec::new();
        let r = check_redirect(
            Hop {
                url: &f,
                ip: fip.parse().unwrap(),
            },
            Hop {
                url: &t,
                ip: tip.parse().unwrap(),
            },
            insecure,
            &mut w,
        );
        (r.err().unwrap_or_else(|| "ok".into()), w.len())
    }

    #[test]
    fn urls_parse_and_join() {
        let b = u("https://Registry.Ollama.ai/v2/library/x/blobs/sha256:ab?x=1");
        assert_eq!((b.host.as_str(), b.port), ("registry.ollama.ai", 443));
        assert_eq!(b.authority(), "registry.ollama.ai");
        assert_eq!(u("http://127.0.0.1:8080").path, "/");
        assert_eq!(u("http://[::1]:81/a").authority(), "[::1]:81");
        assert_eq!(
            b.join("/blobs/x?y").unwrap().to_string(),
            "https://registry.ollama.ai/blobs/x?y"
        );
        assert_eq!(
            b.join("sha256:cd").unwrap().path,
            "/v2/library/x/blobs/sha256:cd"
        );
        assert_eq!(b.join("//cdn.ollama.com/p").unwrap().host, "cdn.ollama.com");
        assert_eq!(b.join("http://10.0.0.1/p").unwrap().scheme, "http");
    }

    #[test]
    fn the_policy_as_design_states_it() {
        let pub_ip = "104.18.1.1";
        // Ollama's own tests: registry.ollama.ai → cdn.ollama.com is allowed.
        let ok = check(
            "https://registry.ollama.ai/v2/x",
            pub_ip,
            "https://cdn.ollama.com/x",
            "104.18.2.2",
            false,
        );
        assert_eq!(ok, ("ok".into(), 0));
        assert_eq!(
            check(
                "https://hf.co/v2/x",
                pub_ip,
                "https://us.aws.cdn.hf.co/x",
                pub_ip,
                false
            )
            .0,
            "ok"
        );
        // The cache's old answer breaks all three rules; users see the host message.
        let old = (
            "https://registry.ollama.ai/v2/x",
            "10.0.0.5",
            "http://10.0.0.5/blobs/x",
        );
        assert_eq!(
            check(old.0, old.1, old.2, "10.0.0.5", false).0,
            "blocked redirect to a different host"
        );
        // --insecure relaxes host and address, never the scheme.
        assert_eq!(
            check(old.0, old.1, old.2, "10.0.0.5", true),
            ("blocked redirect from https to http".into(), 1)
        );
        let plain = (
            "http://registry.ollama.ai/v2/x",
            "10.0.0.5",
            "http://10.0.0.5/blobs/x",
        );
        assert_eq!(
            check(plain.0, plain.1, plain.2, "10.0.0.5", true),
            ("ok".into(), 2)
        );
        // Same-host downgrade is refused even in insecure mode.
        assert_eq!(
            check("https://hf.co/a", pub_ip, "http://hf.co/b", pub_ip, true).0,
            "blocked redirect from https to http"
        );
        // Trusted names at private addresses: the address check.
        assert_eq!(
            check(
                "https://registry.ollama.ai/a",
                pub_ip,
                "https://cdn.ollama.com/b",
                "192.168.1.9",
                false
            )
            .0,
            "blocked redirect to a private address 192.168.1.9"
        );
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.20.0.1",
            "100.100.0.1",
            "169.254.169.254",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(is_private(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["8.8.8.8", "100.128.0.1", "172.32.0.1", "2606:4700::1"] {
            assert!(!is_private(ip.parse().unwrap()), "{ip}");
        }
        // Same host at the address already in use passes; rebinding to another one does not.
        let same = "https://registry.ollama.ai/v2/x/blobs/d";
        assert_eq!(check(same, "10.0.0.5", same, "10.0.0.5", false).0, "ok");
        assert_eq!(
            check(same, pub_ip, same, "10.0.0.5", false).0,
            "blocked redirect to a private address 10.0.0.5"
        );
        // Ports do not make another host (Go compares Hostname()).
        assert_eq!(
            check(
                "http://cache.lan:8080/a",
                "10.0.0.5",
                "http://cache.lan:9090/b",
                "10.0.0.5",
                false
            )
            .0,
            "ok"
        );
    }
}
