//! A registry stand-in whose blob answers a test picks, for the self-tests of the strict
//! clients: it listens on 127.0.0.1 (the "registry") and 127.0.0.2 (the "other host"), serves
//! `/v2/`, manifests, `/v2/<name>/blobs/<digest>` per [`BlobAnswer`], and `/data/<digest>` (the
//! blob, exact single Range unless `ignore_range`), with the same routes on both addresses.
//! Manifest builders for model and tensor-model manifests live here too.
//!
//! Plain threads and blocking sockets, like `upstream.rs`: nothing shared with the daemon.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::upstream::{digest, MANIFEST_TYPE};

/// What `GET`/`HEAD /v2/<name>/blobs/<digest>` answers.
#[derive(Debug, Clone)]
pub enum BlobAnswer {
    /// The way that works for every client: `HEAD` 200 with `Content-Length`; `GET` 200 with
    /// `Location` = the request's own path, the blob as body, Range honoured there.
    Direct,
    /// 200 with the blob but no `Location` (the cache's old answer on its own host name).
    NoLocation,
    /// `status` with `Location: <to>`, where `{other}` is the other host's `host:port` and
    /// `{digest}` the blob's digest; without `{digest}`, `to` is a base (`""`: relative, same
    /// host) and `/data/<digest>` is appended.
    Redirect { status: u16, to: String },
}

struct Shared {
    answer: Mutex<BlobAnswer>,
    ignore_range: AtomicBool,
    manifests: Mutex<HashMap<String, Vec<u8>>>,
    blobs: Mutex<HashMap<String, Arc<Vec<u8>>>>,
    body_bytes: AtomicU64,
    requests: Mutex<Vec<String>>,
    other: SocketAddr,
}

pub struct StandIn {
    shared: Arc<Shared>,
    pub addr: SocketAddr,
    pub other: SocketAddr,
}

impl StandIn {
    pub fn start(answer: BlobAnswer) -> StandIn {
        let a = TcpListener::bind("127.0.0.1:0").unwrap();
        let b = TcpListener::bind("127.0.0.2:0").unwrap();
        let shared = Arc::new(Shared {
            answer: Mutex::new(answer),
            ignore_range: AtomicBool::new(false),
            manifests: Mutex::default(),
            blobs: Mutex::default(),
            body_bytes: AtomicU64::new(0),
            requests: Mutex::default(),
            other: b.local_addr().unwrap(),
        });
        let s = StandIn {
            addr: a.local_addr().unwrap(),
            other: b.local_addr().unwrap(),
            shared: shared.clone(),
        };
        for l in [a, b] {
            let shared = shared.clone();
            std::thread::spawn(move || {
                for c in l.incoming().flatten() {
                    let shared = shared.clone();
                    std::thread::spawn(move || {
                        let _ = serve(c, &shared);
                    });
                }
            });
        }
        s
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_answer(&self, a: BlobAnswer) {
        *self.shared.answer.lock().unwrap() = a;
    }

    /// Answer ranged GETs with the whole blob and 200, as a server that ignores Range does.
    pub fn ignore_range(&self, yes: bool) {
        self.shared.ignore_range.store(yes, Ordering::SeqCst);
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

    /// Config + one `image.model` layer per blob; returns the manifest bytes.
    pub fn add_model(&self, repo: &str, tag: &str, layers: &[&[u8]]) -> Vec<u8> {
        let cfg = config_blob();
        let c = (cfg.len() as u64, self.add_blob(cfg));
        let ls: Vec<ManifestLayer> = layers
            .iter()
            .map(|l| {
                ManifestLayer::new(
                    "application/vnd.ollama.image.model",
                    &self.add_blob(l.to_vec()),
                    l.len(),
                )
            })
            .collect();
        let m = manifest_json(c, &ls);
        self.shared
            .manifests
            .lock()
            .unwrap()
            .insert(format!("{repo}:{tag}"), m.clone());
        m
    }

    pub fn set_manifest(&self, repo: &str, tag: &str, bytes: Vec<u8>) {
        self.shared
            .manifests
            .lock()
            .unwrap()
            .insert(format!("{repo}:{tag}"), bytes);
    }

    /// Body bytes sent (blob bytes, on every route).
    pub fn body_bytes(&self) -> u64 {
        self.shared.body_bytes.load(Ordering::SeqCst)
    }

    /// `METHOD path [range]` of every request, in order.
    pub fn requests(&self) -> Vec<String> {
        self.shared.requests.lock().unwrap().clone()
    }
}

/// A layer line of a manifest, with the optional `name` of tensor/json layers.
#[derive(Debug, Clone)]
pub struct ManifestLayer {
    pub media_type: String,
    pub digest: String,
    pub size: usize,
    pub name: Option<String>,
}

impl ManifestLayer {
    pub fn new(media_type: &str, digest: &str, size: usize) -> ManifestLayer {
        ManifestLayer {
            media_type: media_type.into(),
            digest: digest.into(),
            size,
            name: None,
        }
    }

    pub fn named(mut self, name: &str) -> ManifestLayer {
        self.name = Some(name.into());
        self
    }
}

pub fn config_blob() -> Vec<u8> {
    br#"{"model_format":"gguf","model_family":"llama","architecture":"amd64","os":"linux"}"#
        .to_vec()
}

/// A Docker v2 manifest in the field order ollama writes (so the real 0.5.4, which re-marshals
/// it, writes the same bytes).
pub fn manifest_json(config: (u64, String), layers: &[ManifestLayer]) -> Vec<u8> {
    let ls: Vec<String> = layers
        .iter()
        .map(|l| {
            let name = l
                .name
                .as_ref()
                .map(|n| format!(r#","name":"{n}""#))
                .unwrap_or_default();
            format!(
                r#"{{"mediaType":"{}","digest":"{}","size":{}{name}}}"#,
                l.media_type, l.digest, l.size
            )
        })
        .collect();
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{MANIFEST_TYPE}","config":{{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"{}","size":{}}},"layers":[{}]}}"#,
        config.1,
        config.0,
        ls.join(",")
    )
    .into_bytes()
}

fn respond(
    c: &mut TcpStream,
    status: u16,
    headers: &[(&str, String)],
    len: usize,
) -> std::io::Result<()> {
    let mut head = format!("HTTP/1.1 {status} X\r\nConnection: close\r\nContent-Length: {len}\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    c.write_all(head.as_bytes())
}

fn serve(mut c: TcpStream, s: &Shared) -> std::io::Result<()> {
    let mut r = BufReader::new(c.try_clone()?);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let mut it = line.split_whitespace();
    let (method, path) = (
        it.next().unwrap_or("").to_string(),
        it.next().unwrap_or("").to_string(),
    );
    let mut range = None;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.trim().eq_ignore_ascii_case("range") {
                range = Some(v.trim().to_string());
            }
        }
    }
    s.requests.lock().unwrap().push(format!(
        "{method} {path} {}",
        range.clone().unwrap_or_default()
    ));
    let head = method == "HEAD";
    let p = path.split('?').next().unwrap_or("").to_string();
    if p == "/v2/" {
        respond(&mut c, 200, &[], 2)?;
        return c.write_all(b"{}");
    }
    if let Some(d) = p.strip_prefix("/data/") {
        return serve_blob(&mut c, s, d, head, range.as_deref(), &[]);
    }
    let segs: Vec<&str> = p.trim_start_matches("/v2/").split('/').collect();
    if segs.len() >= 3 {
        let name = segs[..segs.len() - 2].join("/");
        let reference = segs[segs.len() - 1];
        match segs[segs.len() - 2] {
            "manifests" => {
                let m = s
                    .manifests
                    .lock()
                    .unwrap()
                    .get(&format!("{name}:{reference}"))
                    .cloned();
                let Some(m) = m else {
                    return respond(&mut c, 404, &[], 0);
                };
                respond(
                    &mut c,
                    200,
                    &[("Content-Type", MANIFEST_TYPE.into())],
                    m.len(),
                )?;
                return if head { Ok(()) } else { c.write_all(&m) };
            }
            "blobs" => {
                let answer = s.answer.lock().unwrap().clone();
                return match answer {
                    BlobAnswer::Direct => {
                        let loc = [("Location", path.clone())];
                        serve_blob(
                            &mut c,
                            s,
                            reference,
                            head,
                            range.as_deref(),
                            if head { &[] } else { &loc },
                        )
                    }
                    BlobAnswer::NoLocation => {
                        serve_blob(&mut c, s, reference, head, range.as_deref(), &[])
                    }
                    BlobAnswer::Redirect { status, to } => {
                        let mut to = to.replace("{other}", &s.other.to_string());
                        if !to.contains("{digest}") {
                            to.push_str("/data/{digest}");
                        }
                        let to = to.replace("{digest}", reference);
                        respond(&mut c, status, &[("Location", to)], 0)
                    }
                };
            }
            _ => {}
        }
    }
    respond(&mut c, 404, &[], 0)
}

fn serve_blob(
    c: &mut TcpStream,
    s: &Shared,
    d: &str,
    head: bool,
    range: Option<&str>,
    extra: &[(&str, String)],
) -> std::io::Result<()> {
    let Some(blob) = s.blobs.lock().unwrap().get(d).cloned() else {
        return respond(c, 404, &[], 0);
    };
    let size = blob.len() as u64;
    let mut headers = vec![
        ("Accept-Ranges", "bytes".to_string()),
        ("Docker-Content-Digest", d.to_string()),
    ];
    headers.extend(extra.iter().cloned());
    let parsed = range
        .filter(|_| !s.ignore_range.load(Ordering::SeqCst))
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split_once('-'))
        .and_then(|(a, b)| {
            let a: u64 = a.parse().ok()?;
            let b: u64 = if b.is_empty() {
                size - 1
            } else {
                b.parse::<u64>().ok()?.min(size - 1)
            };
            Some((a, b))
        });
    let (status, a, b) = match parsed {
        Some((a, _)) if a >= size => {
            return respond(c, 416, &[("Content-Range", format!("bytes */{size}"))], 0);
        }
        Some((a, b)) => {
            headers.push(("Content-Range", format!("bytes {a}-{b}/{size}")));
            (206, a, b)
        }
        None => (200, 0, size.saturating_sub(1)),
    };
    let len = if size == 0 { 0 } else { b + 1 - a };
    respond(c, status, &headers, len as usize)?;
    if head || len == 0 {
        return Ok(());
    }
    let r = c.write_all(&blob[a as usize..=b as usize]);
    if r.is_ok() {
        s.body_bytes.fetch_add(len, Ordering::SeqCst);
    }
    r
}
