//! A fake registry.ollama.ai and its CDN, on two loopback host names: the registry on
//! 127.0.0.1:P answers `/v2/` and manifests, and redirects blob requests (307) to the "CDN" on
//! 127.0.0.2:Q with a presigned-looking query, the way the real registry sends clients to
//! Cloudflare R2. The CDN honours single Ranges. Faults are switched on at run time, for every
//! blob or for one blob (so that concurrent runs each get their own): throttling, truncation at
//! an absolute byte offset, wrong bytes, a stall, each either every time or for the first N
//! responses that reach the offset; 5xx, 404 and 401 with `WWW-Authenticate`. Byte and request
//! counters (in all and per blob) tell how much the cache fetched.
//!
//! [`FakeUpstream::redirect_blobs_via`] sends the registry's blob redirect to another host
//! first (as hf.co sends clients to huggingface.co, which then sends them to its CDN); see
//! `hop`.
//!
//! Plain threads and blocking sockets: nothing here shares code with the daemon under test.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::Digest as _;

/// Fault injection, changeable while the fake runs.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// CDN bytes per second (0 = unlimited).
    pub throttle: u64,
    /// The CDN never sends a byte at or past this blob offset (the connection just closes).
    pub truncate_at: Option<u64>,
    /// The CDN sends a flipped byte at this blob offset.
    pub corrupt_at: Option<u64>,
    /// The first CDN response that reaches this offset stops sending for this long.
    pub stall_at: Option<(u64, Duration)>,
    /// The CDN accepts the request and says nothing (not even the status line) for this long,
    /// then closes.
    pub silent: Option<Duration>,
    /// Every request (registry and CDN) answers this status.
    pub status: Option<u16>,
    /// Manifests answer 401 with a `WWW-Authenticate` challenge.
    pub unauthorized: bool,
    /// When set, truncation, corruption, the stall and silence each hit only the first `limit`
    /// CDN responses whose range contains their offset (a transient fault); otherwise
    /// truncation, corruption and silence hit every response and the stall one.
    pub limit: Option<u32>,
}

/// Faults in force for one set of responses, with how often each has hit.
struct Armed {
    faults: Faults,
    truncations: AtomicU32,
    corruptions: AtomicU32,
    stalls: AtomicU32,
    silences: AtomicU32,
}

impl Armed {
    fn new(faults: Faults) -> Arc<Armed> {
        Arc::new(Armed {
            faults,
            truncations: AtomicU32::new(0),
            corruptions: AtomicU32::new(0),
            stalls: AtomicU32::new(0),
            silences: AtomicU32::new(0),
        })
    }

    /// Whether a fault at `at` hits a response covering `start..=end`; counts the hit.
    fn hits(&self, hits: &AtomicU32, at: u64, start: u64, end: u64, always: bool) -> bool {
        match self.faults.limit {
            None if always => true,
            None => hits.fetch_add(1, Ordering::SeqCst) == 0,
            Some(n) => {
                start <= at
                    && at <= end
                    && hits
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |h| {
                            (h < n).then_some(h + 1)
                        })
                        .is_ok()
            }
        }
    }
}

struct Shared {
    manifests: Mutex<HashMap<String, Vec<u8>>>,
    blobs: Mutex<HashMap<String, Arc<Vec<u8>>>>,
    faults: Mutex<Arc<Armed>>,
    /// Faults for one blob (by digest), in place of `faults`.
    blob_faults: Mutex<HashMap<String, Arc<Armed>>>,
    cdn_bytes: AtomicU64,
    blob_bytes: Mutex<HashMap<String, u64>>,
    cdn_requests: AtomicU64,
    registry_requests: AtomicU64,
    manifest_requests: AtomicU64,
    last_accept: Mutex<Option<String>>,
    /// The registry's version gate: manifests answer 412 to `ollama/<v>` clients below it.
    min_ollama: Mutex<Option<Vec<u64>>>,
    /// Every manifest request's User-Agent, in order.
    manifest_agents: Mutex<Vec<String>>,
    stop: AtomicBool,
    cdn: SocketAddr,
    /// Base URL the registry's blob redirects go to instead of the CDN.
    via: Mutex<Option<String>>,
}

pub struct FakeUpstream {
    shared: Arc<Shared>,
    pub registry: SocketAddr,
    pub cdn: SocketAddr,
}

pub const MANIFEST_TYPE: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// A sha256 digest string of bytes.
pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// Deterministic pseudo-random bytes (so failures are reproducible).
pub fn blob_bytes(len: usize, seed: u64) -> Vec<u8> {
    super::models::noise(seed, len)
}

impl FakeUpstream {
    pub fn start() -> FakeUpstream {
        Self::start_on("127.0.0.1", "127.0.0.2")
    }

    /// The registry on `registry_ip` and its CDN on `cdn_ip` (addresses of the calling
    /// thread's network namespace), each on a port of its own.
    pub fn start_on(registry_ip: &str, cdn_ip: &str) -> FakeUpstream {
        let reg = TcpListener::bind((registry_ip, 0)).unwrap();
        let cdn = TcpListener::bind((cdn_ip, 0)).unwrap();
        let shared = Arc::new(Shared {
            manifests: Mutex::new(HashMap::new()),
            blobs: Mutex::new(HashMap::new()),
            faults: Mutex::new(Armed::new(Faults::default())),
            blob_faults: Mutex::new(HashMap::new()),
            cdn_bytes: AtomicU64::new(0),
            blob_bytes: Mutex::new(HashMap::new()),
            cdn_requests: AtomicU64::new(0),
            registry_requests: AtomicU64::new(0),
            manifest_requests: AtomicU64::new(0),
            last_accept: Mutex::new(None),
            min_ollama: Mutex::new(None),
            manifest_agents: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            cdn: cdn.local_addr().unwrap(),
            via: Mutex::new(None),
        });
        let up = FakeUpstream {
            registry: reg.local_addr().unwrap(),
            cdn: cdn.local_addr().unwrap(),
            shared: shared.clone(),
        };
        for (l, is_cdn) in [(reg, false), (cdn, true)] {
            let shared = shared.clone();
            std::thread::spawn(move || {
                for conn in l.incoming() {
                    if shared.stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(conn) = conn else { continue };
                    let shared = shared.clone();
                    std::thread::spawn(move || {
                        let _ = serve(conn, &shared, is_cdn);
                    });
                }
            });
        }
        up
    }

    /// Base URL for `[upstream.registries]`.
    pub fn url(&self) -> String {
        format!("http://{}", self.registry)
    }

    pub fn add_blob(&self, bytes: Vec<u8>) -> String {
        let d = digest(&bytes);
        self.shared
            .blobs
            .lock()
            .unwrap()
            .insert(d.clone(), Arc::new(bytes));
        d
    }

    /// Adds a blob whose digest the caller computed (large blobs: hashed by `sha256sum`).
    pub fn add_blob_with_digest(&self, bytes: Vec<u8>, digest: String) -> String {
        self.shared
            .blobs
            .lock()
            .unwrap()
            .insert(digest.clone(), Arc::new(bytes));
        digest
    }

    /// Total size of every blob the fake holds.
    pub fn blob_total(&self) -> u64 {
        self.shared
            .blobs
            .lock()
            .unwrap()
            .values()
            .map(|b| b.len() as u64)
            .sum()
    }

    /// Like [`add_model`](Self::add_model), with layers whose digests are given.
    pub fn add_model_with_digests(
        &self,
        repo: &str,
        tag: &str,
        layers: Vec<(Vec<u8>, String)>,
    ) -> Vec<u8> {
        let sizes: Vec<(usize, String)> = layers
            .into_iter()
            .map(|(b, d)| (b.len(), self.add_blob_with_digest(b, d)))
            .collect();
        self.model_manifest(repo, tag, &sizes)
    }

    fn model_manifest(&self, repo: &str, tag: &str, layers: &[(usize, String)]) -> Vec<u8> {
        let config = br#"{"model_format":"gguf","model_family":"llama","architecture":"amd64","os":"linux"}"#.to_vec();
        let cfg_size = config.len();
        let cfg_digest = self.add_blob(config);
        let layers_json: Vec<String> = layers
            .iter()
            .map(|(size, d)| {
                format!(r#"{{"mediaType":"application/vnd.ollama.image.model","digest":"{d}","size":{size}}}"#)
            })
            .collect();
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{MANIFEST_TYPE}","config":{{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"{cfg_digest}","size":{cfg_size}}},"layers":[{}]}}"#,
            layers_json.join(",")
        )
        .into_bytes();
        self.set_manifest(repo, tag, manifest.clone());
        manifest
    }

    /// Adds an Ollama-style model (config + layers) under `repo:tag`; returns the manifest bytes.
    pub fn add_model(&self, repo: &str, tag: &str, layers: &[&[u8]]) -> Vec<u8> {
        let sizes: Vec<(usize, String)> = layers
            .iter()
            .map(|l| (l.len(), self.add_blob(l.to_vec())))
            .collect();
        self.model_manifest(repo, tag, &sizes)
    }

    pub fn set_manifest(&self, repo: &str, tag: &str, bytes: Vec<u8>) {
        self.shared
            .manifests
            .lock()
            .unwrap()
            .insert(format!("{repo}:{tag}"), bytes);
    }

    /// Faults for every blob without faults of its own (and for the registry's status).
    pub fn faults(&self, f: Faults) {
        *self.shared.faults.lock().unwrap() = Armed::new(f);
    }

    /// Faults for the CDN responses of one blob only (`None` clears them).
    pub fn blob_faults(&self, digest: &str, f: Option<Faults>) {
        let mut m = self.shared.blob_faults.lock().unwrap();
        match f {
            Some(f) => m.insert(digest.to_string(), Armed::new(f)),
            None => m.remove(digest),
        };
    }

    pub fn cdn_bytes(&self) -> u64 {
        self.shared.cdn_bytes.load(Ordering::SeqCst)
    }

    /// CDN body bytes sent for one blob.
    pub fn cdn_bytes_of(&self, digest: &str) -> u64 {
        self.shared
            .blob_bytes
            .lock()
            .unwrap()
            .get(digest)
            .copied()
            .unwrap_or(0)
    }

    pub fn cdn_requests(&self) -> u64 {
        self.shared.cdn_requests.load(Ordering::SeqCst)
    }

    pub fn manifest_requests(&self) -> u64 {
        self.shared.manifest_requests.load(Ordering::SeqCst)
    }

    pub fn registry_requests(&self) -> u64 {
        self.shared.registry_requests.load(Ordering::SeqCst)
    }

    pub fn last_accept(&self) -> Option<String> {
        self.shared.last_accept.lock().unwrap().clone()
    }

    /// Blob requests redirect (307) to `{base}/v2/<name>/blobs/<digest>?__sign=…` instead of
    /// the CDN: a middle hop (see `hop`) is then expected to send them on to [`cdn_url`].
    pub fn redirect_blobs_via(&self, base: &str) {
        *self.shared.via.lock().unwrap() = Some(base.to_string());
    }

    /// The presigned CDN URL of a blob (`sha256:<hex>`), as the registry's redirect names it.
    pub fn cdn_url(&self, digest: &str) -> String {
        cdn_url(self.cdn, digest.trim_start_matches("sha256:"))
    }

    /// Gates manifests like registry.ollama.ai: a client whose `User-Agent` names
    /// `ollama/<version>` below `min` (e.g. "0.6.0") gets 412 "requires a newer version".
    pub fn require_ollama(&self, min: Option<&str>) {
        *self.shared.min_ollama.lock().unwrap() = min.map(version_parts);
    }

    /// The User-Agent of every manifest request so far.
    pub fn manifest_agents(&self) -> Vec<String> {
        self.shared.manifest_agents.lock().unwrap().clone()
    }
}

fn cdn_url(cdn: SocketAddr, hex: &str) -> String {
    format!(
        "http://{cdn}/cdn/{hex}?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Expires=1200&X-Amz-Signature=0f{hex}"
    )
}

fn version_parts(v: &str) -> Vec<u64> {
    v.split(['.', '-']).map_while(|p| p.parse().ok()).collect()
}

/// The registry's gate: whether this User-Agent is an Ollama older than `min`.
fn too_old(user_agent: &str, min: &[u64]) -> bool {
    user_agent
        .split_whitespace()
        .find_map(|t| t.strip_prefix("ollama/"))
        .is_some_and(|v| version_parts(v).as_slice() < min)
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the accept loops so they see the flag.
        let _ = TcpStream::connect(self.registry);
        let _ = TcpStream::connect(self.cdn);
    }
}

struct Req {
    method: String,
    path: String,
    headers: HashMap<String, String>,
}

fn read_request(conn: &TcpStream) -> std::io::Result<Req> {
    let mut r = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("").to_string();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    Ok(Req {
        method,
        path,
        headers,
    })
}

fn respond(
    conn: &mut TcpStream,
    status: u16,
    headers: &[(&str, String)],
    body: &[u8],
) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {status} X\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    conn.write_all(head.as_bytes())?;
    conn.write_all(body)
}

fn serve(mut conn: TcpStream, s: &Shared, is_cdn: bool) -> std::io::Result<()> {
    let req = read_request(&conn)?;
    let armed = s.faults.lock().unwrap().clone();
    if is_cdn {
        return serve_cdn(conn, s, &req, armed);
    }
    let faults = &armed.faults;
    if let Some(st) = faults.status {
        return respond(&mut conn, st, &[], b"injected failure\n");
    }
    s.registry_requests.fetch_add(1, Ordering::SeqCst);
    let path = req.path.split('?').next().unwrap_or("").to_string();
    if path == "/v2/" {
        return respond(&mut conn, 200, &[], b"{}");
    }
    let segs: Vec<&str> = path.trim_start_matches("/v2/").split('/').collect();
    if segs.len() >= 3 {
        let name = segs[..segs.len() - 2].join("/");
        let reference = segs[segs.len() - 1];
        match segs[segs.len() - 2] {
            "manifests" => {
                s.manifest_requests.fetch_add(1, Ordering::SeqCst);
                *s.last_accept.lock().unwrap() = req.headers.get("accept").cloned();
                let agent = req.headers.get("user-agent").cloned().unwrap_or_default();
                s.manifest_agents.lock().unwrap().push(agent.clone());
                if let Some(min) = s.min_ollama.lock().unwrap().clone() {
                    if too_old(&agent, &min) {
                        return respond(
                            &mut conn,
                            412,
                            &[("Content-Type", "application/json".into())],
                            br#"{"errors":[{"code":"PRECONDITION_FAILED","message":"this model requires a newer version of Ollama"}]}"#,
                        );
                    }
                }
                if faults.unauthorized {
                    return respond(
                        &mut conn,
                        401,
                        &[(
                            "WWW-Authenticate",
                            r#"Bearer realm="https://auth.example/token",service="registry""#.into(),
                        ), ("Content-Type", "application/json".into())],
                        br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
                    );
                }
                let m = s
                    .manifests
                    .lock()
                    .unwrap()
                    .get(&format!("{name}:{reference}"))
                    .cloned();
                return match m {
                    Some(m) => respond(
                        &mut conn,
                        200,
                        &[
                            ("Content-Type", MANIFEST_TYPE.into()),
                            ("Docker-Content-Digest", digest(&m)),
                        ],
                        if req.method == "HEAD" { &[] } else { &m },
                    ),
                    None => respond(
                        &mut conn,
                        404,
                        &[("Content-Type", "application/json".into())],
                        br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#,
                    ),
                };
            }
            "blobs" => {
                if !s.blobs.lock().unwrap().contains_key(reference) {
                    return respond(
                        &mut conn,
                        404,
                        &[],
                        br#"{"errors":[{"code":"BLOB_UNKNOWN"}]}"#,
                    );
                }
                let hex = reference.trim_start_matches("sha256:");
                let loc = match &*s.via.lock().unwrap() {
                    Some(via) => format!("{via}/v2/{name}/blobs/{reference}?__sign=s{hex}"),
                    None => cdn_url(s.cdn, hex),
                };
                return respond(&mut conn, 307, &[("Location", loc)], b"");
            }
            _ => {}
        }
    }
    respond(&mut conn, 404, &[], b"not found\n")
}

fn serve_cdn(mut conn: TcpStream, s: &Shared, req: &Req, armed: Arc<Armed>) -> std::io::Result<()> {
    s.cdn_requests.fetch_add(1, Ordering::SeqCst);
    let path = req.path.split('?').next().unwrap_or("");
    let d = format!("sha256:{}", path.trim_start_matches("/cdn/"));
    let armed = s
        .blob_faults
        .lock()
        .unwrap()
        .get(&d)
        .cloned()
        .unwrap_or(armed);
    let f = &armed.faults;
    if let Some(st) = f.status {
        return respond(&mut conn, st, &[], b"injected failure\n");
    }
    if !req.path.contains("X-Amz-Signature=") {
        return respond(&mut conn, 403, &[], b"unsigned\n");
    }
    let Some(blob) = s.blobs.lock().unwrap().get(&d).cloned() else {
        return respond(&mut conn, 404, &[], b"no such key\n");
    };
    let size = blob.len() as u64;
    let (status, start, end) = match req
        .headers
        .get("range")
        .and_then(|r| r.strip_prefix("bytes="))
    {
        Some(r) => {
            let (a, b) = r.split_once('-').unwrap_or(("0", ""));
            let (a, b): (u64, u64) = if a.is_empty() {
                let n: u64 = b.parse().unwrap_or(0);
                (size.saturating_sub(n), size - 1)
            } else {
                (
                    a.parse().unwrap_or(0),
                    if b.is_empty() {
                        size - 1
                    } else {
                        b.parse::<u64>().unwrap_or(0).min(size - 1)
                    },
                )
            };
            if a >= size {
                return respond(
                    &mut conn,
                    416,
                    &[("Content-Range", format!("bytes */{size}"))],
                    b"",
                );
            }
            (206, a, b)
        }
        None => (200, 0, size - 1),
    };
    if let Some(dur) = f.silent {
        if armed.hits(&armed.silences, start, start, end, true) {
            std::thread::sleep(dur);
            return Ok(());
        }
    }
    let mut head = format!(
        "HTTP/1.1 {status} X\r\nConnection: close\r\nContent-Length: {}\r\nAccept-Ranges: bytes\r\n",
        end + 1 - start
    );
    if status == 206 {
        head.push_str(&format!("Content-Range: bytes {start}-{end}/{size}\r\n"));
    }
    head.push_str("\r\n");
    conn.write_all(head.as_bytes())?;
    if req.method == "HEAD" {
        return Ok(());
    }
    // Which faults hit this response is decided once, before the first byte.
    let truncate_at = f
        .truncate_at
        .filter(|&t| armed.hits(&armed.truncations, t, start, end, true));
    let corrupt_at = f
        .corrupt_at
        .filter(|&c| armed.hits(&armed.corruptions, c, start, end, true));
    let mut stall_at = f.stall_at.filter(|&(at, _)| {
        // A once-only stall (no limit) is spent by the first response that reaches it.
        f.limit.is_none() || armed.hits(&armed.stalls, at, start, end, false)
    });
    let mut pos = start;
    let chunk = 16 * 1024u64;
    while pos <= end {
        let mut n = chunk.min(end + 1 - pos);
        if let Some(t) = truncate_at {
            if pos >= t {
                return Ok(());
            }
            n = n.min(t - pos);
        }
        if let Some((at, dur)) = stall_at {
            if pos == at {
                stall_at = None;
                if f.limit.is_some() || armed.hits(&armed.stalls, at, start, end, false) {
                    std::thread::sleep(dur);
                    return Ok(());
                }
            }
            if pos < at && at < pos + n {
                n = at - pos;
            }
        }
        let mut buf = blob[pos as usize..(pos + n) as usize].to_vec();
        if let Some(c) = corrupt_at {
            if pos <= c && c < pos + n {
                buf[(c - pos) as usize] ^= 0xff;
            }
        }
        conn.write_all(&buf)?;
        s.cdn_bytes.fetch_add(n, Ordering::SeqCst);
        *s.blob_bytes.lock().unwrap().entry(d.clone()).or_default() += n;
        pos += n;
        if f.throttle > 0 {
            std::thread::sleep(Duration::from_secs_f64(n as f64 / f.throttle as f64));
        }
        if s.stop.load(Ordering::SeqCst) {
            return Ok(());
        }
    }
    // Drain anything the client still sends so the close is clean.
    let _ = conn.set_read_timeout(Some(Duration::from_millis(10)));
    let _ = conn.read(&mut [0u8; 64]);
    Ok(())
}

/// A raw HTTP/1.1 GET that reports what a client actually saw: status, headers, the body bytes
/// received, and whether the body was complete (Content-Length reached before the close).
pub struct RawResponse {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
    pub complete: bool,
}

pub fn raw_get(addr: SocketAddr, host: &str, path: &str, extra: &[(&str, &str)]) -> RawResponse {
    raw_request(addr, "GET", host, path, extra)
}

pub fn raw_request(
    addr: SocketAddr,
    method: &str,
    host: &str,
    path: &str,
    extra: &[(&str, &str)],
) -> RawResponse {
    try_request(addr, method, host, path, extra).unwrap()
}

/// The registry API's "direct URL" for a blob, found the way Ollama's classic downloader finds
/// it: a GET whose headers are read and whose body is dropped unread. The cache answers 200 with a
/// `Location` on its own host (no redirect); returns that path, or the status when it is not 200.
pub fn direct_url(addr: SocketAddr, host: &str, path: &str) -> Result<String, u16> {
    let mut c = TcpStream::connect(addr).map_err(|_| 0u16)?;
    c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    c.write_all(req.as_bytes()).map_err(|_| 0u16)?;
    let mut r = BufReader::new(c);
    let mut line = String::new();
    r.read_line(&mut line).map_err(|_| 0u16)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut location = None;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.trim().eq_ignore_ascii_case("location") {
                location = Some(v.trim().to_string());
            }
        }
    }
    if status != 200 {
        return Err(status);
    }
    let loc = location.expect("a 200 from the registry API carries a Location");
    assert!(
        loc.starts_with('/'),
        "the direct URL stays on the request's scheme and host: {loc}"
    );
    Ok(loc)
}

/// Like [`raw_request`], for servers that may die or reset the connection mid-answer: an I/O
/// error before the status line is an `Err`; one after it ends the body (`complete` is false).
pub fn try_request(
    addr: SocketAddr,
    method: &str,
    host: &str,
    path: &str,
    extra: &[(&str, &str)],
) -> std::io::Result<RawResponse> {
    let mut c = TcpStream::connect(addr)?;
    c.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in extra {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    c.write_all(req.as_bytes())?;
    let mut r = BufReader::new(c);
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed before the status line",
        ));
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .unwrap_or("0")
        .parse()
        .unwrap_or(0);
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let mut body = Vec::new();
    let _ = r.read_to_end(&mut body);
    let len: Option<usize> = headers.get("content-length").and_then(|v| v.parse().ok());
    let complete = method == "HEAD" || len.is_some_and(|l| l == body.len());
    if method == "HEAD" {
        body.clear();
    }
    Ok(RawResponse {
        status,
        headers,
        body,
        complete,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_upstream_behaves() {
        let up = FakeUpstream::start();
        let blob = blob_bytes(100_000, 1);
        let m = up.add_model("library/tiny", "latest", &[&blob[..]]);
        let r = raw_get(
            up.registry,
            "registry.ollama.ai",
            "/v2/library/tiny/manifests/latest",
            &[],
        );
        assert_eq!(r.status, 200);
        assert_eq!(r.body, m);
        let d = digest(&blob);
        let r = raw_get(
            up.registry,
            "registry.ollama.ai",
            &format!("/v2/library/tiny/blobs/{d}"),
            &[],
        );
        assert_eq!(r.status, 307);
        let loc = r.headers["location"].clone();
        assert!(loc.starts_with(&format!("http://{}/", up.cdn)) && loc.contains("X-Amz-"));
        let path = loc.splitn(4, '/').nth(3).map(|p| format!("/{p}")).unwrap();
        let r = raw_get(up.cdn, "cdn", &path, &[("Range", "bytes=10-19")]);
        assert_eq!((r.status, &r.body[..]), (206, &blob[10..20]));
        assert_eq!(up.cdn_bytes(), 10);
        up.faults(Faults {
            truncate_at: Some(50),
            ..Default::default()
        });
        let r = raw_get(up.cdn, "cdn", &path, &[]);
        assert!(!r.complete && r.body == blob[..50]);
        up.faults(Faults {
            corrupt_at: Some(5),
            ..Default::default()
        });
        let r = raw_get(up.cdn, "cdn", &path, &[("Range", "bytes=0-9")]);
        assert!(r.complete && r.body != blob[..10]);
        up.faults(Faults {
            status: Some(503),
            ..Default::default()
        });
        assert_eq!(raw_get(up.registry, "x", "/v2/", &[]).status, 503);
        up.faults(Faults {
            unauthorized: true,
            ..Default::default()
        });
        let r = raw_get(up.registry, "x", "/v2/library/tiny/manifests/latest", &[]);
        assert_eq!(r.status, 401);
        assert!(r.headers["www-authenticate"].starts_with("Bearer realm="));
        up.faults(Faults::default());
        assert_eq!(
            raw_get(up.registry, "x", "/v2/library/none/manifests/latest", &[]).status,
            404
        );
    }

    /// The CDN path of a blob, as the registry's 307 names it.
    fn cdn_path(up: &FakeUpstream, d: &str) -> String {
        let r = raw_get(up.registry, "x", &format!("/v2/library/t/blobs/{d}"), &[]);
        let loc = r.headers["location"].clone();
        loc.splitn(4, '/').nth(3).map(|p| format!("/{p}")).unwrap()
    }

    #[test]
    fn limited_and_per_blob_faults() {
        let up = FakeUpstream::start();
        let a = blob_bytes(200_000, 2);
        let b = blob_bytes(200_000, 3);
        let (da, db) = (up.add_blob(a.clone()), up.add_blob(b.clone()));
        let (pa, pb) = (cdn_path(&up, &da), cdn_path(&up, &db));
        // Truncation of the first two responses that cover the offset, for blob a only.
        up.blob_faults(
            &da,
            Some(Faults {
                truncate_at: Some(150_000),
                limit: Some(2),
                ..Default::default()
            }),
        );
        // A range before the offset is untouched and does not use up the limit.
        let r = raw_get(up.cdn, "cdn", &pa, &[("Range", "bytes=0-99")]);
        assert!(r.complete && r.body == a[..100]);
        for _ in 0..2 {
            let r = raw_get(up.cdn, "cdn", &pa, &[]);
            assert!(!r.complete && r.body == a[..150_000]);
        }
        let r = raw_get(up.cdn, "cdn", &pa, &[]);
        assert!(r.complete && r.body == a, "the third response is whole");
        let r = raw_get(up.cdn, "cdn", &pb, &[]);
        assert!(r.complete && r.body == b, "blob b has no faults");
        assert_eq!(up.cdn_bytes_of(&db), 200_000);
        assert_eq!(up.cdn_bytes_of(&da), 100 + 2 * 150_000 + 200_000);

        // Corruption once; a stall for every response (limit) cut short by the client.
        up.blob_faults(
            &db,
            Some(Faults {
                corrupt_at: Some(10),
                limit: Some(1),
                ..Default::default()
            }),
        );
        let r = raw_get(up.cdn, "cdn", &pb, &[("Range", "bytes=0-99")]);
        assert!(r.complete && r.body != b[..100] && r.body[11..] == b[11..100]);
        let r = raw_get(up.cdn, "cdn", &pb, &[("Range", "bytes=0-99")]);
        assert!(r.complete && r.body == b[..100]);
        up.blob_faults(
            &db,
            Some(Faults {
                stall_at: Some((50_000, Duration::from_millis(300))),
                limit: Some(u32::MAX),
                ..Default::default()
            }),
        );
        for _ in 0..2 {
            let t = std::time::Instant::now();
            let r = raw_get(up.cdn, "cdn", &pb, &[]);
            assert!(!r.complete && r.body == b[..50_000]);
            assert!(t.elapsed() >= Duration::from_millis(300));
        }
        // Silence before the status line, once.
        up.blob_faults(
            &db,
            Some(Faults {
                silent: Some(Duration::from_millis(300)),
                limit: Some(1),
                ..Default::default()
            }),
        );
        let t = std::time::Instant::now();
        assert!(try_request(up.cdn, "GET", "cdn", &pb, &[]).is_err());
        assert!(t.elapsed() >= Duration::from_millis(300));
        assert!(raw_get(up.cdn, "cdn", &pb, &[]).complete);
        up.blob_faults(&db, None);
        assert!(raw_get(up.cdn, "cdn", &pb, &[]).complete);
        // A per-blob status.
        up.blob_faults(
            &da,
            Some(Faults {
                status: Some(500),
                ..Default::default()
            }),
        );
        assert_eq!(raw_get(up.cdn, "cdn", &pa, &[]).status, 500);
        assert_eq!(raw_get(up.cdn, "cdn", &pb, &[]).status, 200);
    }
}
