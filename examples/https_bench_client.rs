//! The HTTPS benchmark's client (scripts/bench/https.sh): downloads one file over TLS as 1 stream
//! or N parallel byte ranges, over HTTP/1.1 (one connection per range, like Ollama's classic
//! downloader without HTTP/2) or over h2 (all ranges on one connection, as Go's client does when
//! ALPN offers h2). It is written in Rust with rustls so that the client is not the limit: curl
//! over HTTP/2 and h2load advertise small receive windows (h2load 64 KiB) and cannot send a
//! different `Range` per stream, and Python cannot decrypt at GiB/s. The h2 settings are Go's
//! (net/http's bundled x/net/http2): 4 MiB per stream, 1 GiB per connection, 1 MiB frames.
//! Cipher suites are offered in Go's order on AES hardware (AES-128-GCM first), so both servers
//! negotiate what a real Ollama would.
//!
//! Prints one line: `seconds=<f> bytes=<n> cipher=<suite> alpn=<proto>`; exits non-zero when a
//! body is short or an answer is not 200/206.
//!
//! usage: https_bench_client --addr 127.0.0.1:8443 --sni registry.ollama.ai --ca ca.crt
//!        --path /blobs/sha256:<hex> --size <bytes> --parts 16 --proto h2|h1 [--suites go|openssl]

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::crypto::ring::{cipher_suite, default_provider};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use std::sync::Arc;
use std::time::Instant;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Go's HTTP/2 client: `transportDefaultStreamFlow` (4 MiB), `transportDefaultConnFlow`
/// (1 GiB), and `defaultMaxReadFrameSize` (1 MiB) sent as SETTINGS_MAX_FRAME_SIZE.
const GO_STREAM_WINDOW: u32 = 4 << 20;
const GO_CONN_WINDOW: u32 = 1 << 30;
const GO_MAX_FRAME: u32 = 1 << 20;

struct Args {
    addr: String,
    sni: String,
    ca: String,
    path: String,
    size: u64,
    parts: u64,
    h2: bool,
    max_frame: u32,
    /// `go` (AES-128-GCM first, Go on AES hardware) or `openssl` (AES-256-GCM first, what
    /// OpenSSL-based clients such as curl and Python's huggingface_hub offer).
    suites: String,
}

fn args() -> Result<Args> {
    let mut a = Args {
        addr: String::new(),
        sni: "registry.ollama.ai".into(),
        ca: String::new(),
        path: String::new(),
        size: 0,
        parts: 1,
        h2: false,
        max_frame: GO_MAX_FRAME,
        suites: "go".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().with_context(|| format!("{k} needs a value"))?;
        match k.as_str() {
            "--addr" => a.addr = v,
            "--sni" => a.sni = v,
            "--ca" => a.ca = v,
            "--path" => a.path = v,
            "--size" => a.size = v.parse()?,
            "--parts" => a.parts = v.parse()?,
            "--proto" => a.h2 = v == "h2",
            "--max-frame" => a.max_frame = v.parse()?,
            "--suites" => a.suites = v,
            _ => bail!("unknown argument {k}"),
        }
    }
    if a.addr.is_empty() || a.ca.is_empty() || a.path.is_empty() || a.size == 0 {
        bail!("--addr, --ca, --path and --size are required");
    }
    Ok(a)
}

/// The byte ranges: the last one takes the remainder (scripts/bench/benchlib.py's `ranges`).
fn ranges(size: u64, parts: u64) -> Vec<(u64, u64)> {
    let step = size / parts;
    (0..parts)
        .map(|i| {
            let end = if i == parts - 1 {
                size - 1
            } else {
                (i + 1) * step - 1
            };
            (i * step, end)
        })
        .collect()
}

fn connector(a: &Args) -> Result<TlsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&a.ca)? {
        roots.add(c?)?;
    }
    let mut provider = default_provider();
    provider.cipher_suites = match a.suites.as_str() {
        // Go's order when the CPU has AES instructions (crypto/tls defaultCipherSuitesTLS13).
        "go" => vec![
            cipher_suite::TLS13_AES_128_GCM_SHA256,
            cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
            cipher_suite::TLS13_AES_256_GCM_SHA384,
        ],
        // OpenSSL 3's default TLS 1.3 order.
        "openssl" => vec![
            cipher_suite::TLS13_AES_256_GCM_SHA384,
            cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
            cipher_suite::TLS13_AES_128_GCM_SHA256,
        ],
        // A client without AES instructions (Go, BoringSSL on such CPUs put ChaCha first).
        "chacha" => vec![
            cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
            cipher_suite::TLS13_AES_128_GCM_SHA256,
            cipher_suite::TLS13_AES_256_GCM_SHA384,
        ],
        other => bail!("--suites {other}: go, openssl or chacha"),
    };
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![if a.h2 {
        b"h2".to_vec()
    } else {
        b"http/1.1".to_vec()
    }];
    Ok(TlsConnector::from(Arc::new(cfg)))
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

async fn connect(a: &Args, tls: &TlsConnector) -> Result<Tls> {
    let tcp = TcpStream::connect(&a.addr).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from(a.sni.clone())?;
    Ok(tls.connect(name, tcp).await?)
}

fn request(a: &Args, range: Option<(u64, u64)>) -> Result<http::Request<Empty<Bytes>>> {
    let mut b = http::Request::get(format!("https://{}{}", a.sni, a.path));
    if !a.h2 {
        b = b.header(http::header::HOST, &a.sni);
    }
    if let Some((from, to)) = range {
        b = b.header(http::header::RANGE, format!("bytes={from}-{to}"));
    }
    Ok(b.body(Empty::new())?)
}

/// Reads a response body to the end; returns its length.
async fn drain(resp: http::Response<hyper::body::Incoming>) -> Result<u64> {
    let status = resp.status();
    if status != http::StatusCode::OK && status != http::StatusCode::PARTIAL_CONTENT {
        bail!("answer {status}");
    }
    let mut body = resp.into_body();
    let mut n = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            n += data.len() as u64;
        }
    }
    Ok(n)
}

fn describe(tls: &Tls) -> String {
    let (_, conn) = tls.get_ref();
    let suite = conn
        .negotiated_cipher_suite()
        .map(|s| format!("{:?}", s.suite()))
        .unwrap_or_default();
    let alpn = conn
        .alpn_protocol()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .unwrap_or_default();
    format!("cipher={suite} alpn={alpn}")
}

async fn run_h2(
    a: &Args,
    tls: &TlsConnector,
    rs: Vec<Option<(u64, u64)>>,
) -> Result<(u64, String)> {
    let io = connect(a, tls).await?;
    let desc = describe(&io);
    let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(GO_STREAM_WINDOW)
        .initial_connection_window_size(GO_CONN_WINDOW)
        .max_frame_size(a.max_frame)
        .adaptive_window(false)
        .handshake(TokioIo::new(io))
        .await?;
    tokio::spawn(conn);
    let mut tasks = tokio::task::JoinSet::new();
    for r in rs {
        let mut send = send.clone();
        let req = request(a, r)?;
        tasks.spawn(async move {
            send.ready().await?;
            drain(send.send_request(req).await?).await
        });
    }
    let mut total = 0;
    while let Some(n) = tasks.join_next().await {
        total += n??;
    }
    Ok((total, desc))
}

async fn run_h1(
    a: Arc<Args>,
    tls: TlsConnector,
    rs: Vec<Option<(u64, u64)>>,
) -> Result<(u64, String)> {
    let mut tasks = tokio::task::JoinSet::new();
    for r in rs {
        let (a, tls) = (a.clone(), tls.clone());
        tasks.spawn(async move {
            let io = connect(&a, &tls).await?;
            let desc = describe(&io);
            let (mut send, conn) =
                hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(io)).await?;
            tokio::spawn(conn);
            let n = drain(send.send_request(request(&a, r)?).await?).await?;
            anyhow::Ok((n, desc))
        });
    }
    let (mut total, mut desc) = (0, String::new());
    while let Some(r) = tasks.join_next().await {
        let (n, d) = r??;
        total += n;
        desc = d;
    }
    Ok((total, desc))
}

fn main() -> Result<()> {
    let a = Arc::new(args()?);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let tls = connector(&a)?;
    let rs: Vec<_> = if a.parts <= 1 {
        vec![None]
    } else {
        ranges(a.size, a.parts).into_iter().map(Some).collect()
    };
    let t = Instant::now();
    let (n, desc) = rt.block_on(async {
        if a.h2 {
            run_h2(&a, &tls, rs).await
        } else {
            run_h1(a.clone(), tls.clone(), rs).await
        }
    })?;
    let secs = t.elapsed().as_secs_f64();
    if n != a.size {
        bail!("got {n} bytes of {}", a.size);
    }
    println!("seconds={secs:.4} bytes={n} {desc}");
    Ok(())
}
