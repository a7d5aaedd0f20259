//! Blob bodies: what the registry routes (`/v2/<name>/blobs/<digest>`, where Ollama's up-to-16
//! parallel ranged GETs land) and the data plane (`GET|HEAD /blobs/sha256:<hex>` on the cache's
//! own address, for side-loads, scripts and browsers) both answer with.
//!
//! Ollama does not check the status of its ranged GETs, so Range must be exact: one range
//! (`a-b`, `a-`, `-n`) answers 206 with `Content-Range`; an unsatisfiable one 416 with
//! `bytes */size`; several ranges, or a Range whose `If-Range` does not match, the whole 200.
//! Strong `ETag` = the digest (the bytes can never change), `If-None-Match` answers 304, no
//! content coding. Bodies are read in large chunks straight from the file (or, for a cold blob,
//! from the fill as its bytes land) without ever holding the blob in memory; a fill that fails
//! aborts the body, so a client never mistakes a partial blob for a whole one.

use bytes::Bytes;
use futures_util::stream;
use futures_util::StreamExt;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use super::registry::error as registry_error;
use super::{fetch, join_fill, FillStartError, KnownBlob};
use crate::http::body::{self, Body};
use crate::http::client::client_addr;
use crate::http::sessions::SessionGuard;
use crate::http::Peer;
use crate::state::State;
use crate::store::fill::{Joined, Origin, Waiter, READ_CHUNK};
use crate::store::names::valid_host;
use crate::store::pins::Pin;
use crate::store::stats::Event;
use crate::store::{Digest, ModelRef};

/// `/blobs/<digest>[?registry=..&repo=..]`.
pub async fn handle(req: Request<Incoming>, peer: Peer, state: &Arc<State>) -> Response<Body> {
    let raw = req.uri().path().trim_start_matches("/blobs/");
    let digest = match Digest::parse(raw) {
        Ok(d) => d,
        Err(e) => return registry_error(StatusCode::BAD_REQUEST, "DIGEST_INVALID", &e.message),
    };
    // A data-plane URL may name the blob's origin, so that a fill can always start here.
    let mut origin = None;
    let (mut reg, mut repo) = (None, None);
    for (k, v) in req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
    {
        match k {
            "registry" => reg = Some(v.to_string()),
            "repo" => repo = Some(v.to_string()),
            _ => {}
        }
    }
    if let (Some(reg), Some(repo)) = (reg, repo) {
        if !valid_host(&reg) || ModelRef::from_repository(&reg, &repo, "latest").is_err() {
            return registry_error(
                StatusCode::BAD_REQUEST,
                "NAME_INVALID",
                "invalid registry or repo in the query",
            );
        }
        origin = Some((reg, repo));
    }
    serve(&req, peer, state, &digest, origin).await
}

/// Serves one blob: from `blobs/` when cached, else from its fill (started if need be). The
/// registry routes and `/blobs/` both come here; `origin` is the blob's registry and repository
/// when the request names them.
pub async fn serve(
    req: &Request<Incoming>,
    peer: Peer,
    state: &Arc<State>,
    digest: &Digest,
    origin: Option<(String, String)>,
) -> Response<Body> {
    if let Some((reg, repo)) = &origin {
        state.proxy.learn(digest, reg, repo, None);
    }
    let known = state.proxy.known(digest);
    let sessions = SessionStarter::new(req, peer, state, digest, known.as_ref());
    if let Ok(file) = open_published(&state.layout.blob_path(digest)) {
        let registry = known.map_or_else(|| "local".to_string(), |k| k.registry);
        return serve_published(req, state, digest, file, &registry, &sessions);
    }
    let Some(known) = known else {
        return registry_error(
            StatusCode::NOT_FOUND,
            "BLOB_UNKNOWN",
            &format!(
                "{digest} is not cached and its repository is unknown (ask via /v2/<name>/blobs/)"
            ),
        );
    };
    let size = match cold_size(state, digest, &known).await {
        Ok(s) => s,
        Err(resp) => return resp,
    };
    serve_cold(req, state, digest, known, size, &sessions).await
}

/// Starts one `/api/sessions` entry per body, named by repository when known.
struct SessionStarter<'a> {
    state: &'a State,
    client: std::net::SocketAddr,
    what: String,
}

impl<'a> SessionStarter<'a> {
    fn new(
        req: &Request<Incoming>,
        peer: Peer,
        state: &'a State,
        digest: &Digest,
        known: Option<&KnownBlob>,
    ) -> SessionStarter<'a> {
        let cfg = state.config();
        SessionStarter {
            state,
            client: client_addr(peer.addr, req.headers(), &cfg.http.trusted_proxies),
            what: match known {
                Some(k) => format!("{}@{digest}", k.repository),
                None => digest.to_string(),
            },
        }
    }

    fn start(&self, start: u64, end: u64) -> SessionGuard {
        self.state
            .sessions
            .start(self.client, self.what.clone(), end - start)
    }
}

/// A hit: the published file, zero-copy.
fn serve_published(
    req: &Request<Incoming>,
    state: &State,
    digest: &Digest,
    file: std::fs::File,
    registry: &str,
    sessions: &SessionStarter,
) -> Response<Body> {
    // The file's own size is the truth, whatever a manifest said.
    let size = match file.metadata() {
        Ok(m) => m.len(),
        Err(e) => return internal(e),
    };
    let counters = &state.proxy.counters;
    counters.count(registry, Event::BlobHit);
    state.index.touch_blob(digest);
    let pin = state.pins.pin(digest);
    respond(req, digest, size, |start, end| {
        counters.count(registry, Event::BytesFromCache(end - start));
        published_body(file, size, start, end, pin, sessions.start(start, end))
    })
}

/// The size of a blob not yet in the cache: from the manifest's layer list, else an upstream
/// probe (never from waiting for the fill). `Err` is the client's answer.
async fn cold_size(
    state: &Arc<State>,
    digest: &Digest,
    known: &KnownBlob,
) -> Result<u64, Response<Body>> {
    if let Some(s) = known.size {
        return Ok(s);
    }
    match fetch::probe_size(state, &known.registry, &known.repository, digest).await {
        Ok(Some(s)) => {
            state
                .proxy
                .learn(digest, &known.registry, &known.repository, Some(s));
            Ok(s)
        }
        Ok(None) => Err(registry_error(
            StatusCode::NOT_FOUND,
            "BLOB_UNKNOWN",
            &format!("{digest} not found upstream"),
        )),
        Err(e) => {
            state.proxy.counters.failure(e.kind);
            Err(registry_error(
                StatusCode::BAD_GATEWAY,
                "UNAVAILABLE",
                &e.to_string(),
            ))
        }
    }
}

/// A miss: joins (or starts) the blob's fill and streams from it as bytes land. A `HEAD`, a 304
/// or a 416 answers from the size alone and starts nothing.
async fn serve_cold(
    req: &Request<Incoming>,
    state: &Arc<State>,
    digest: &Digest,
    known: KnownBlob,
    size: u64,
    sessions: &SessionStarter<'_>,
) -> Response<Body> {
    let plan = plan_for(req.headers(), size, &format!("\"{digest}\""));
    if req.method() == Method::HEAD || !matches!(plan, Plan::Whole | Plan::Part(..)) {
        return respond(req, digest, size, |_, _| body::empty());
    }
    state.proxy.counters.count(&known.registry, Event::BlobMiss);
    state.index.touch_blob(digest);
    let origin = Origin {
        registry: known.registry.clone(),
        repository: known.repository,
    };
    match join_fill(state, digest, size, size, origin).await {
        Ok(Joined::Published) => match open_published(&state.layout.blob_path(digest)) {
            Ok(file) => serve_published(req, state, digest, file, &known.registry, sessions),
            Err(e) => internal(e),
        },
        Ok(Joined::Filling(fill)) => {
            let pin = state.pins.pin(digest);
            respond(req, digest, size, |start, end| {
                let s = sessions.start(start, end);
                file_body(Source::Fill(fill.waiter(start)), start, end, pin, s)
            })
        }
        Err(e) => fill_refused(digest, e),
    }
}

/// The answer when a fill cannot start: 507 with the lifecycle's reason when there is no room
/// (hits keep being served), 500 on a disk error.
pub fn fill_refused(digest: &Digest, e: FillStartError) -> Response<Body> {
    match e {
        FillStartError::NoSpace(e) => {
            tracing::warn!(%digest, "fill refused: {e}");
            registry_error(StatusCode::INSUFFICIENT_STORAGE, "UNAVAILABLE", &e.message)
        }
        FillStartError::Io(e) => internal(e),
    }
}

/// Starts the fill of a cold blob whose origin and size are known, without serving it: the
/// registry API's `HEAD` does this, so upstream bytes are on their way before the client's GETs
/// arrive. `Err` when the fill cannot start.
pub async fn warm(state: &Arc<State>, digest: &Digest) -> Result<(), FillStartError> {
    if state.layout.blob_path(digest).exists() {
        return Ok(());
    }
    let Some(KnownBlob {
        registry,
        repository,
        size: Some(size),
    }) = state.proxy.known(digest)
    else {
        return Ok(());
    };
    let origin = Origin {
        registry,
        repository,
    };
    join_fill(state, digest, size, size, origin).await.map(drop)
}

/// Opens a published blob without following a symlink planted in `blobs/`.
pub fn open_published(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    Ok(f)
}

fn internal(e: std::io::Error) -> Response<Body> {
    tracing::error!("data plane: {e}");
    registry_error(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", &e.to_string())
}

/// What a request asks of a blob of `size` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    Whole,
    /// Bytes `start..end` (end exclusive).
    Part(u64, u64),
    NotModified,
    Unsatisfiable,
}

fn etag_matches(list: &str, etag: &str) -> bool {
    list.split(',')
        .map(str::trim)
        .any(|t| t == "*" || t == etag || t.strip_prefix("W/") == Some(etag))
}

/// Decides the answer from `If-None-Match`, `Range` and `If-Range` (RFC 9110 §13, §14).
pub fn plan_for(headers: &HeaderMap, size: u64, etag: &str) -> Plan {
    if let Some(inm) = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
    {
        if etag_matches(inm, etag) {
            return Plan::NotModified;
        }
    }
    let Some(range) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) else {
        return Plan::Whole;
    };
    // If-Range with anything but our (strong) ETag, a date included, means "send it all".
    if let Some(ir) = headers.get(header::IF_RANGE) {
        if ir.to_str().ok().map(str::trim) != Some(etag) {
            return Plan::Whole;
        }
    }
    let Some(spec) = range
        .trim()
        .get(..6)
        .filter(|u| u.eq_ignore_ascii_case("bytes="))
        .map(|_| range.trim()[6..].trim())
    else {
        return Plan::Whole;
    };
    if spec.contains(',') {
        // Several ranges: the whole body is a valid answer (RFC 9110 §14.2).
        return Plan::Whole;
    }
    let Some((a, b)) = spec.split_once('-') else {
        return Plan::Whole;
    };
    let (a, b) = (a.trim(), b.trim());
    let num = |s: &str| -> Option<u64> {
        if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
            None
        } else {
            s.parse().ok()
        }
    };
    if a.is_empty() {
        // Suffix range: the last n bytes.
        let Some(n) = num(b) else { return Plan::Whole };
        if n == 0 || size == 0 {
            return Plan::Unsatisfiable;
        }
        return Plan::Part(size - n.min(size), size);
    }
    let Some(first) = num(a) else {
        return Plan::Whole;
    };
    let last = if b.is_empty() {
        None
    } else {
        match num(b) {
            Some(l) => Some(l),
            None => return Plan::Whole,
        }
    };
    if let Some(l) = last {
        if l < first {
            // Syntactically invalid: ignore the header.
            return Plan::Whole;
        }
    }
    if first >= size {
        return Plan::Unsatisfiable;
    }
    // `last` may be u64::MAX: `l + 1` would overflow (a panic in debug, a wrap to 0 and so an
    // inverted part in release).
    let end = last.map_or(size, |l| l.saturating_add(1).min(size));
    Plan::Part(first, end)
}

/// Builds the response for `plan`; `body` makes the body for bytes `start..end`.
fn respond(
    req: &Request<Incoming>,
    digest: &Digest,
    size: u64,
    body: impl FnOnce(u64, u64) -> Body,
) -> Response<Body> {
    let etag = format!("\"{digest}\"");
    let plan = plan_for(req.headers(), size, &etag);
    let head = req.method() == Method::HEAD;
    let mut r = Response::new(body::empty());
    let h = r.headers_mut();
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::ETAG, HeaderValue::from_str(&etag).expect("ascii"));
    h.insert(
        "docker-content-digest",
        HeaderValue::from_str(digest.as_str()).expect("ascii"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
    let (status, range) = match plan {
        Plan::NotModified => (StatusCode::NOT_MODIFIED, None),
        Plan::Unsatisfiable => {
            h.insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes */{size}")).expect("ascii"),
            );
            h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
            (StatusCode::RANGE_NOT_SATISFIABLE, None)
        }
        Plan::Whole => (StatusCode::OK, Some((0, size))),
        Plan::Part(a, b) => {
            h.insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes {a}-{}/{size}", b - 1)).expect("ascii"),
            );
            (StatusCode::PARTIAL_CONTENT, Some((a, b)))
        }
    };
    *r.status_mut() = status;
    if let Some((a, b)) = range {
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(b - a));
        if !head {
            *r.body_mut() = body(a, b);
        }
    }
    r
}

/// Bytes `start..end` of a blob being filled, streamed as they land (other fronts, like the
/// Hub's `resolve`, serve fills with this).
pub fn fill_body(
    fill: &Arc<crate::store::fill::Fill>,
    start: u64,
    end: u64,
    pin: Pin,
    session: SessionGuard,
) -> Body {
    file_body(Source::Fill(fill.waiter(start)), start, end, pin, session)
}

/// Bytes `start..end` of a complete file of `size` bytes (zero-copy when it maps).
pub fn whole_file_body(
    file: std::fs::File,
    size: u64,
    start: u64,
    end: u64,
    pin: Pin,
    session: SessionGuard,
) -> Body {
    published_body(file, size, start, end, pin, session)
}

/// A published blob's body: mapped (zero-copy into hyper), or read with pread if mapping fails.
fn published_body(
    file: std::fs::File,
    size: u64,
    start: u64,
    end: u64,
    pin: Pin,
    session: SessionGuard,
) -> Body {
    match crate::store::mapped::Mapping::new(&file, size) {
        Ok(map) => super::mapped::body(Arc::new(map), start, end, pin, session),
        Err(_) => file_body(Source::File(Arc::new(file)), start, end, pin, session),
    }
}

enum Source {
    File(Arc<std::fs::File>),
    Fill(Waiter),
}

struct Cursor {
    source: Source,
    pos: u64,
    end: u64,
    done: bool,
    _pin: Pin,
    session: SessionGuard,
}

/// Streams bytes `start..end` from a published file or a fill, in chunks of up to 1 MiB read
/// with pread on the blocking pool. A failed fill ends the stream with an error (the response
/// is aborted, never completed).
fn file_body(source: Source, start: u64, end: u64, pin: Pin, session: SessionGuard) -> Body {
    let cursor = Cursor {
        source,
        pos: start,
        end,
        done: false,
        _pin: pin,
        session,
    };
    let s = stream::unfold(cursor, |mut c| async move {
        if c.done || c.pos >= c.end {
            return None;
        }
        let (file, avail) = match &mut c.source {
            Source::File(f) => (f.clone(), c.end - c.pos),
            Source::Fill(w) => match w.available(c.pos).await {
                Ok(0) => {
                    c.done = true;
                    return Some((Err(std::io::Error::other("fill ended early")), c));
                }
                Ok(n) => {
                    if let Some(map) = w.mapping() {
                        // Landed bytes straight from the fill's mapping, no copy.
                        let len = n.min(c.end - c.pos).min(super::mapped::FRAME);
                        let b = crate::store::mapped::slice(&map, c.pos, c.pos + len);
                        c.pos += len;
                        c.session.add(len);
                        return Some((Ok(b), c));
                    }
                    (w.file(), n)
                }
                Err(e) => {
                    c.done = true;
                    return Some((Err(e), c));
                }
            },
        };
        let len = avail.min(c.end - c.pos).min(READ_CHUNK as u64) as usize;
        let at = c.pos;
        let read = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; len];
            file.read_exact_at(&mut buf, at).map(|()| Bytes::from(buf))
        })
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r);
        match read {
            Ok(b) => {
                c.pos += b.len() as u64;
                c.session.add(b.len() as u64);
                Some((Ok(b), c))
            }
            Err(e) => {
                c.done = true;
                Some((Err(e), c))
            }
        }
    });
    BodyExt::boxed(StreamBody::new(s.map(|r| r.map(Frame::data))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(range: Option<&str>, if_range: Option<&str>, inm: Option<&str>, size: u64) -> Plan {
        let mut h = HeaderMap::new();
        if let Some(r) = range {
            h.insert(header::RANGE, r.parse().unwrap());
        }
        if let Some(r) = if_range {
            h.insert(header::IF_RANGE, r.parse().unwrap());
        }
        if let Some(r) = inm {
            h.insert(header::IF_NONE_MATCH, r.parse().unwrap());
        }
        plan_for(&h, size, "\"e\"")
    }

    /// Found by the `range_header` fuzz target: a last byte of u64::MAX overflowed `last + 1`.
    #[test]
    fn last_byte_at_u64_max_is_clamped_to_the_blob() {
        let max = u64::MAX.to_string();
        assert_eq!(
            p(Some(&format!("bytes=3-{max}")), None, None, 10),
            Plan::Part(3, 10)
        );
        assert_eq!(
            p(Some(&format!("bytes=0-{max}")), None, None, u64::MAX),
            Plan::Part(0, u64::MAX)
        );
        assert_eq!(
            p(Some(&format!("bytes={max}-{max}")), None, None, u64::MAX),
            Plan::Unsatisfiable
        );
    }

    #[test]
    fn ranges() {
        assert_eq!(p(None, None, None, 10), Plan::Whole);
        assert_eq!(p(Some("bytes=0-4"), None, None, 10), Plan::Part(0, 5));
        assert_eq!(p(Some("bytes=5-"), None, None, 10), Plan::Part(5, 10));
        assert_eq!(p(Some("bytes=-3"), None, None, 10), Plan::Part(7, 10));
        assert_eq!(p(Some("bytes=-30"), None, None, 10), Plan::Part(0, 10));
        assert_eq!(p(Some("bytes=8-100"), None, None, 10), Plan::Part(8, 10));
        assert_eq!(p(Some("bytes=10-"), None, None, 10), Plan::Unsatisfiable);
        assert_eq!(p(Some("bytes=-0"), None, None, 10), Plan::Unsatisfiable);
        assert_eq!(p(Some("bytes=0-0"), None, None, 0), Plan::Unsatisfiable);
        assert_eq!(p(Some("bytes=0-1,3-4"), None, None, 10), Plan::Whole);
        assert_eq!(p(Some("bytes=5-2"), None, None, 10), Plan::Whole);
        assert_eq!(p(Some("items=0-1"), None, None, 10), Plan::Whole);
        assert_eq!(p(Some("bytes=x-1"), None, None, 10), Plan::Whole);
        assert_eq!(
            p(Some("bytes=0-4"), Some("\"e\""), None, 10),
            Plan::Part(0, 5)
        );
        assert_eq!(
            p(Some("bytes=0-4"), Some("\"other\""), None, 10),
            Plan::Whole
        );
        assert_eq!(
            p(
                Some("bytes=0-4"),
                Some("Wed, 21 Oct 2015 07:28:00 GMT"),
                None,
                10
            ),
            Plan::Whole
        );
        assert_eq!(p(None, None, Some("\"e\""), 10), Plan::NotModified);
        assert_eq!(p(None, None, Some("\"x\", W/\"e\""), 10), Plan::NotModified);
        assert_eq!(
            p(Some("bytes=0-1"), None, Some("\"x\""), 10),
            Plan::Part(0, 2)
        );
    }
}
