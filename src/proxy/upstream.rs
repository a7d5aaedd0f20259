//! The client the cache uses to reach upstream registries and their CDNs: hyper over TCP or
//! rustls, one connection per request (fills use a handful of long requests; manifests are few).
//!
//! Names are resolved through `[upstream] resolvers` with hickory, never through the system
//! resolver: on the cache box the system resolver may well be our own interceptor, which would
//! answer registry.ollama.ai with ourselves. IP literals need no lookup. TLS trusts the webpki
//! roots plus `[upstream] ca_file`. Every request carries the loop-guard header, and redirects
//! (the registry's 307 to a presigned CDN URL) are followed here and never remembered.
//!
//! With `upstream.parent`, every request is dialled to the parent cache instead of the
//! resolved name, with its own Host and SNI, so each registry keeps its name and the parent's
//! CA (in `ca_file`) vouches for it.

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::TokioResolver;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::rustls::{self, pki_types};

use crate::config::Config;

/// Marks requests the cache sends. Its value is the list of the instance ids of the daemons
/// the request has passed (`id1,id2`, oldest first, see [`instance_id`]): a daemon refuses
/// (508) a request whose list holds its own id (a DNS loop back to itself, or A -> B -> A),
/// and appends its own when it goes upstream on that request's behalf, so that a cache can
/// be fed from another cache. A value that is not such a list (the `1` of older versions,
/// which cannot say whose request it was) or a list longer than [`MAX_HOPS`] is refused too.
pub const LOOP_HEADER: &str = "x-lancached-hop";

/// The longest chain of caches a request may pass.
pub const MAX_HOPS: usize = 8;

/// This daemon's id in the hop list: random at every start, 16 hex digits.
pub fn instance_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        use std::hash::{BuildHasher, Hasher};
        // RandomState is seeded from the OS per process; mix in time and pid anyway.
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        h.write_u32(std::process::id());
        format!("{:016x}", h.finish())
    })
}

tokio::task_local! {
    /// The hop list of the client request being served, for the upstream requests made on its
    /// behalf (see [`LOOP_HEADER`]).
    pub static HOPS: Arc<str>;
}

/// The hop list of the request being served (empty outside one).
pub fn current_hops() -> Arc<str> {
    HOPS.try_with(|h| h.clone())
        .unwrap_or_else(|_| Arc::from(""))
}

/// Checks an arriving hop list: `Err` says why it is a loop.
pub fn check_hops(value: &[u8]) -> std::result::Result<Arc<str>, String> {
    let v = std::str::from_utf8(value).map_err(|_| "an unreadable hop list".to_string())?;
    let ids: Vec<&str> = v.split(',').map(str::trim).collect();
    let well_formed = ids
        .iter()
        .all(|i| i.len() == 16 && i.bytes().all(|b| b.is_ascii_hexdigit()));
    if !well_formed {
        return Err(format!(
            "hop list {v:?} is not a list of cache ids (an older lancached, which cannot say whose request it was)"
        ));
    }
    if ids.contains(&instance_id()) {
        return Err(format!(
            "hop list {v} holds this cache's own id {}: the request came back to us",
            instance_id()
        ));
    }
    if ids.len() >= MAX_HOPS {
        return Err(format!("hop list {v} is {} caches long", ids.len()));
    }
    Ok(Arc::from(ids.join(",")))
}

/// The hop header for a request this daemon sends: the list of the request it serves, plus
/// its own id.
pub(crate) fn hop_value() -> HeaderValue {
    let prev = current_hops();
    let v = if prev.is_empty() {
        instance_id().to_string()
    } else {
        format!("{prev},{}", instance_id())
    };
    HeaderValue::from_str(&v).expect("hex ids and commas")
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_REDIRECTS: usize = 5;

/// Resolver and TLS settings, rebuilt when the configuration they come from changes.
struct Setup {
    resolvers: Vec<SocketAddr>,
    ca_file: PathBuf,
    resolver: Option<TokioResolver>,
    tls: Arc<rustls::ClientConfig>,
    /// `upstream.parent`: every request is dialled there, keeping its Host and SNI.
    parent: Option<(String, Option<u16>)>,
    parent_text: String,
}

pub struct Upstream {
    setup: Mutex<Option<Arc<Setup>>>,
}

impl Default for Upstream {
    fn default() -> Self {
        Self::new()
    }
}

impl Upstream {
    pub fn new() -> Upstream {
        Upstream {
            setup: Mutex::new(None),
        }
    }

    fn setup(&self, cfg: &Config) -> Result<Arc<Setup>> {
        let mut cur = self.setup.lock().unwrap();
        if let Some(s) = &*cur {
            if s.resolvers == cfg.upstream.resolvers
                && s.ca_file == cfg.upstream.ca_file
                && s.parent_text == cfg.upstream.parent
            {
                return Ok(s.clone());
            }
        }
        let resolver = if cfg.upstream.resolvers.is_empty() {
            None
        } else {
            let servers = cfg
                .upstream
                .resolvers
                .iter()
                .map(|a| {
                    let mut ns = NameServerConfig::udp_and_tcp(a.ip());
                    for c in &mut ns.connections {
                        c.port = a.port();
                    }
                    ns
                })
                .collect();
            Some(
                TokioResolver::builder_with_config(
                    ResolverConfig::from_name_servers(servers),
                    TokioRuntimeProvider::default(),
                )
                .build()
                .map_err(|e| anyhow!("cannot build the upstream resolver: {e}"))?,
            )
        };
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if !cfg.upstream.ca_file.as_os_str().is_empty() {
            use pki_types::pem::PemObject;
            let path = &cfg.upstream.ca_file;
            let mut n = 0;
            for cert in pki_types::CertificateDer::pem_file_iter(path)
                .with_context(|| format!("cannot read upstream.ca_file {}", path.display()))?
            {
                let cert =
                    cert.with_context(|| format!("bad certificate in {}", path.display()))?;
                roots
                    .add(cert)
                    .with_context(|| format!("unusable certificate in {}", path.display()))?;
                n += 1;
            }
            if n == 0 {
                bail!("upstream.ca_file {} holds no certificate", path.display());
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let s = Arc::new(Setup {
            resolvers: cfg.upstream.resolvers.clone(),
            ca_file: cfg.upstream.ca_file.clone(),
            resolver,
            tls: Arc::new(tls),
            parent: crate::config::parse_parent(&cfg.upstream.parent).map_err(|e| anyhow!(e))?,
            parent_text: cfg.upstream.parent.clone(),
        });
        *cur = Some(s.clone());
        Ok(s)
    }

    /// Sends one request, following redirects (to any host) when `follow` is set. The returned
    /// response's extension holds the final URL.
    pub async fn send(
        &self,
        cfg: &Config,
        method: Method,
        url: Uri,
        headers: &HeaderMap,
        follow: bool,
    ) -> Result<Response<Incoming>> {
        let setup = self.setup(cfg)?;
        let mut url = url;
        for _ in 0..=MAX_REDIRECTS {
            let resp = send_once(&setup, method.clone(), &url, headers).await?;
            let redirect = matches!(
                resp.status(),
                StatusCode::MOVED_PERMANENTLY
                    | StatusCode::FOUND
                    | StatusCode::SEE_OTHER
                    | StatusCode::TEMPORARY_REDIRECT
                    | StatusCode::PERMANENT_REDIRECT
            );
            if !(follow && redirect) {
                return Ok(resp);
            }
            let loc = resp
                .headers()
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| anyhow!("{} from {url} without a Location", resp.status()))?;
            url = join_url(&url, loc)?;
        }
        bail!("too many redirects (last: {url})")
    }
}

impl Upstream {
    /// Sends a request on behalf of a client, as it is: `req`'s method, headers and streamed
    /// body go to `url` (whose path and query replace the request's), and the answer comes back
    /// unread, redirects included (they are for the client to follow). Unlike [`send`]
    /// (Self::send), the client's `User-Agent` and `Accept-Encoding` are kept; only `Host` and
    /// the loop guard are set. The caller removes hop-by-hop headers.
    pub async fn forward<B>(
        &self,
        cfg: &Config,
        url: &Uri,
        mut req: Request<B>,
    ) -> Result<Response<Incoming>>
    where
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let setup = self.setup(cfg)?;
        let (conn, authority) = connect(&setup, url).await?;
        let path = url.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        *req.uri_mut() = path.parse()?;
        // An HTTP/2 client's request is relayed as HTTP/1.1 upstream.
        *req.version_mut() = http::Version::HTTP_11;
        let h = req.headers_mut();
        h.insert(header::HOST, HeaderValue::from_str(&authority)?);
        h.insert(LOOP_HEADER, hop_value());
        conn.exchange(req).await.with_context(|| format!("{url}"))
    }
}

/// Resolves `loc` (absolute, or absolute-path) against `base`.
pub fn join_url(base: &Uri, loc: &str) -> Result<Uri> {
    if loc.starts_with("http://") || loc.starts_with("https://") {
        return loc.parse().with_context(|| format!("bad Location {loc:?}"));
    }
    if loc.starts_with('/') {
        let mut parts = base.clone().into_parts();
        parts.path_and_query = Some(
            loc.parse()
                .with_context(|| format!("bad Location {loc:?}"))?,
        );
        return Uri::from_parts(parts).with_context(|| format!("bad Location {loc:?}"));
    }
    bail!("unsupported relative Location {loc:?}")
}

async fn send_once(
    setup: &Setup,
    method: Method,
    url: &Uri,
    headers: &HeaderMap,
) -> Result<Response<Incoming>> {
    let (conn, authority) = connect(setup, url).await?;
    let path = url.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut req = Request::builder().method(method).uri(path);
    for (k, v) in headers {
        req = req.header(k, v);
    }
    let mut req = req.body(Empty::<Bytes>::new())?;
    let h = req.headers_mut();
    h.insert(header::HOST, HeaderValue::from_str(&authority)?);
    // A client's own User-Agent (manifest fetches pass it on: the registry's version gate reads
    // it) is kept; the cache's own requests name the cache.
    if !h.contains_key(header::USER_AGENT) {
        h.insert(
            header::USER_AGENT,
            HeaderValue::from_static(concat!("lancached/", env!("CARGO_PKG_VERSION"))),
        );
    }
    h.insert(LOOP_HEADER, hop_value());
    // Blobs are stored byte-exact and hashed: no content coding.
    h.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
    conn.exchange(req).await.with_context(|| format!("{url}"))
}

/// A connection to an upstream URL's host, plain or TLS.
enum Conn {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Conn {
    async fn exchange<B>(self, req: Request<B>) -> Result<Response<Incoming>>
    where
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        match self {
            Conn::Plain(s) => exchange(s, req).await,
            Conn::Tls(t) => exchange(*t, req).await,
        }
    }
}

/// Resolves the URL's host through the upstream resolvers (never the system's, see the module
/// note), connects, and does the TLS handshake for https. Returns the `Host` header to send.
async fn connect(setup: &Setup, url: &Uri) -> Result<(Conn, String)> {
    let https = match url.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => bail!("unsupported URL {url}"),
    };
    let host = url.host().ok_or_else(|| anyhow!("no host in {url}"))?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let mut port = url.port_u16().unwrap_or(if https { 443 } else { 80 });
    // With a parent cache, the name is not resolved: the parent answers for every host.
    let dial = match &setup.parent {
        Some((addr, p)) => {
            if let (true, Some(p)) = (https, p) {
                port = *p;
            }
            addr.as_str()
        }
        None => bare,
    };
    let addrs: Vec<IpAddr> = match dial.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => {
            let resolver = setup
                .resolver
                .as_ref()
                .ok_or_else(|| anyhow!("cannot resolve {dial}: upstream.resolvers is empty"))?;
            let lookup = resolver
                .lookup_ip(dial)
                .await
                .map_err(|e| anyhow!("cannot resolve {dial}: {e}"))?;
            lookup.iter().collect()
        }
    };
    let mut stream = None;
    let mut last_err = anyhow!("{dial} has no addresses");
    for ip in addrs {
        let addr = SocketAddr::new(ip, port);
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                stream = Some(s);
                break;
            }
            Ok(Err(e)) => last_err = anyhow!("cannot connect to {addr}: {e}"),
            Err(_) => last_err = anyhow!("connecting to {addr} timed out"),
        }
    }
    let stream = stream.ok_or(last_err)?;
    let _ = stream.set_nodelay(true);

    let authority = match url.port_u16() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    };
    if !https {
        return Ok((Conn::Plain(stream), authority));
    }
    let name = pki_types::ServerName::try_from(bare.to_string())
        .map_err(|e| anyhow!("bad TLS server name {bare}: {e}"))?;
    let tls = tokio_rustls::TlsConnector::from(setup.tls.clone())
        .connect(name, stream)
        .await
        .with_context(|| format!("TLS handshake with {authority}"))?;
    Ok((Conn::Tls(Box::new(tls)), authority))
}

async fn exchange<IO, B>(io: IO, req: Request<B>) -> Result<Response<Incoming>>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(async move {
        // The connection lives until the response body is read to its end or dropped.
        let _ = conn.await;
    });
    Ok(sender.send_request(req).await?)
}
