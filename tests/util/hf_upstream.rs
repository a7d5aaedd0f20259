//! A stand-in for huggingface.co and its CDN, on two loopback addresses: the Hub on
//! 127.0.0.1:P answers what `huggingface_hub` asks (`/api/{models,datasets}/{repo}[/revision/{rev}]`,
//! `.../tree/{rev}[/{path}]?recursive=` paginated with `Link: <…>; rel="next"`,
//! `POST .../paths-info/{rev}`, `HEAD`/`GET /[datasets/]{repo}/resolve/{rev}/{path}`), and the
//! "CDN" on 127.0.0.2:Q serves LFS files behind a presigned-looking query (a wrong or missing
//! signature is a 403) with single Ranges.
//!
//! As the real Hub does:
//! - a small file is answered in place, `ETag` its git blob SHA-1, `X-Repo-Commit`;
//! - an LFS file (at or above [`HfUpstream::lfs_threshold`]) is a `302` to the CDN with
//!   `X-Linked-Etag` (its sha256), `X-Linked-Size`, and, unless switched off, the Xet headers
//!   (`X-Xet-Hash`, `Link: <…/xet-read-token/…>; rel="xet-auth"`). The xet-read-token route
//!   answers with a CAS URL nobody listens on: this stand-in has no CAS, so a client that follows
//!   the Xet headers fails (which is why the cache strips them);
//! - branches and tags resolve to commits and can be moved ([`HfUpstream::set_ref`]); a renamed
//!   repo answers a relative `307` to its new name;
//! - gated repos answer 401 without a token and 403 with a token not granted; private repos
//!   answer 401 (`X-Error-Code: RepositoryNotFound`) to anyone without a granted token;
//! - unknown revisions answer 404 `X-Error-Code: RevisionNotFound`, unknown files
//!   `EntryNotFound`.
//!
//! Faults (per file path or for all): truncation at a byte offset (the connection closes early),
//! a flipped byte, an injected status, each for every response or the first N. Counters: file
//! body bytes sent (total and per `repo/path`), and a log of every request (method, path, whether
//! it carried a token — never the token itself).
//!
//! Plain threads and blocking sockets; nothing here shares code with the daemon under test.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use sha2::Digest as _;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Model,
    Dataset,
}

impl Kind {
    /// The `/api/{models,datasets}` segment.
    pub fn api(self) -> &'static str {
        match self {
            Kind::Model => "models",
            Kind::Dataset => "datasets",
        }
    }
    /// The prefix of resolve URLs (`""` or `"datasets/"`).
    pub fn url_prefix(self) -> &'static str {
        match self {
            Kind::Model => "",
            Kind::Dataset => "datasets/",
        }
    }
    /// `huggingface_hub`'s `repo_type`.
    pub fn repo_type(self) -> &'static str {
        match self {
            Kind::Model => "model",
            Kind::Dataset => "dataset",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    Public,
    /// Gated: these tokens have been granted access.
    Gated(Vec<String>),
    /// Private: only these tokens can see it.
    Private(Vec<String>),
}

#[derive(Debug, Clone, Default)]
pub struct HfFaults {
    /// Bodies stop (the connection closes) before this file offset.
    pub truncate_at: Option<u64>,
    /// The byte at this file offset is flipped.
    pub corrupt_at: Option<u64>,
    /// Every request for the file (HEAD and GET, Hub and CDN) answers this status.
    pub status: Option<u16>,
    /// When set, the fault hits only the first `limit` body responses.
    pub limit: Option<u32>,
}

#[derive(Clone)]
struct File {
    bytes: Arc<Vec<u8>>,
    lfs: bool,
    /// Git blob SHA-1 of the file (small) or of its LFS pointer (LFS).
    oid: String,
    sha256: String,
}

struct Repo {
    access: Access,
    /// commit -> path -> file
    commits: HashMap<String, BTreeMap<String, File>>,
    refs: HashMap<String, String>,
}

struct Shared {
    repos: Mutex<HashMap<(Kind, String), Repo>>,
    renames: Mutex<HashMap<(Kind, String), String>>,
    faults: Mutex<HashMap<String, (HfFaults, u32)>>,
    all_faults: Mutex<Option<(HfFaults, u32)>>,
    bytes: AtomicU64,
    file_bytes: Mutex<HashMap<String, u64>>,
    log: Mutex<Vec<String>>,
    xet: AtomicBool,
    page_size: AtomicU64,
    lfs_threshold: AtomicU64,
    stop: AtomicBool,
    hub: SocketAddr,
    cdn: SocketAddr,
}

pub struct HfUpstream {
    shared: Arc<Shared>,
    pub hub: SocketAddr,
    pub cdn: SocketAddr,
}

/// Git's blob id: SHA-1 of `blob <len>\0<bytes>`.
pub fn git_blob_sha1(bytes: &[u8]) -> String {
    let mut v = format!("blob {}\0", bytes.len()).into_bytes();
    v.extend_from_slice(bytes);
    sha1_hex(&v)
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

/// A plain SHA-1 (FIPS 180-1), here so the stand-in needs no crate the daemon might use.
pub fn sha1_hex(data: &[u8]) -> String {
    let mut h: [u32; 5] = [0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0];
    let mut msg = data.to_vec();
    let bitlen = (data.len() as u64).wrapping_mul(8);
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&bitlen.to_be_bytes());
    for chunk in msg.chunks(64) {
        let mut w = [0u32; 80];
        for i in 0..16 {
            w[i] = u32::from_be_bytes([
                chunk[4 * i],
                chunk[4 * i + 1],
                chunk[4 * i + 2],
                chunk[4 * i + 3],
            ]);
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (i, wi) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5A827999),
                20..=39 => (b ^ c ^ d, 0x6ED9EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1BBCDC),
                _ => (b ^ c ^ d, 0xCA62C1D6),
            };
            let t = a
                .rotate_left(5)
                .wrapping_add(f)
                .wrapping_add(e)
                .wrapping_add(k)
                .wrapping_add(*wi);
            e = d;
            d = c;
            c = b.rotate_left(30);
            b = a;
            a = t;
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e]) {
            *x = x.wrapping_add(y);
        }
    }
    h.iter().map(|x| format!("{x:08x}")).collect()
}

fn lfs_pointer(sha256: &str, size: usize) -> Vec<u8> {
    format!("version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n")
        .into_bytes()
}

/// The presigned-looking signature of a CDN path (so a guessed URL is refused).
fn sign(path: &str) -> String {
    sha256_hex(format!("stand-in-secret:{path}").as_bytes())[..32].to_string()
}

fn pct_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) =
                u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16)
            {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn pct_encode(s: &str) -> String {
    s.bytes()
        .map(|c| {
            if c.is_ascii_alphanumeric() || b"-._~".contains(&c) {
                (c as char).to_string()
            } else {
                format!("%{c:02X}")
            }
        })
        .collect()
}

impl HfUpstream {
    pub fn start() -> HfUpstream {
        let hub = TcpListener::bind("127.0.0.1:0").unwrap();
        let cdn = TcpListener::bind("127.0.0.2:0").unwrap();
        let shared = Arc::new(Shared {
            repos: Mutex::new(HashMap::new()),
            renames: Mutex::new(HashMap::new()),
            faults: Mutex::new(HashMap::new()),
            all_faults: Mutex::new(None),
            bytes: AtomicU64::new(0),
            file_bytes: Mutex::new(HashMap::new()),
            log: Mutex::new(Vec::new()),
            xet: AtomicBool::new(true),
            page_size: AtomicU64::new(1000),
            lfs_threshold: AtomicU64::new(64 * 1024),
            stop: AtomicBool::new(false),
            hub: hub.local_addr().unwrap(),
            cdn: cdn.local_addr().unwrap(),
        });
        for (l, is_cdn) in [(hub, false), (cdn, true)] {
            let s = shared.clone();
            std::thread::spawn(move || {
                for conn in l.incoming() {
                    if s.stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let s = s.clone();
                    std::thread::spawn(move || {
                        let _ = serve(conn, &s, is_cdn);
                    });
                }
            });
        }
        HfUpstream {
            hub: shared.hub,
            cdn: shared.cdn,
            shared,
        }
    }

    /// `http://127.0.0.1:P`, what `HF_ENDPOINT` (or the cache's `upstream`) points at.
    pub fn url(&self) -> String {
        format!("http://{}", self.hub)
    }

    /// Files at or above this size are LFS (default 64 KiB).
    pub fn set_lfs_threshold(&self, bytes: u64) {
        self.shared.lfs_threshold.store(bytes, Ordering::SeqCst);
    }

    /// Whether LFS answers carry the Xet headers (default on, as on the real Hub).
    pub fn set_xet(&self, on: bool) {
        self.shared.xet.store(on, Ordering::SeqCst);
    }

    /// Entries per tree page (default 1000).
    pub fn set_page_size(&self, n: u64) {
        self.shared.page_size.store(n.max(1), Ordering::SeqCst);
    }

    pub fn add_repo(&self, kind: Kind, id: &str, access: Access) {
        self.shared.repos.lock().unwrap().insert(
            (kind, id.to_string()),
            Repo {
                access,
                commits: HashMap::new(),
                refs: HashMap::new(),
            },
        );
    }

    /// Makes a commit holding exactly `files` and points `main` at it; returns the commit id.
    pub fn commit(&self, kind: Kind, id: &str, files: &[(&str, Vec<u8>)]) -> String {
        let threshold = self.shared.lfs_threshold.load(Ordering::SeqCst);
        let mut map = BTreeMap::new();
        let mut ident = format!("{}:{id}", kind.api());
        for (path, bytes) in files {
            let lfs = bytes.len() as u64 >= threshold;
            let sha256 = sha256_hex(bytes);
            let oid = if lfs {
                git_blob_sha1(&lfs_pointer(&sha256, bytes.len()))
            } else {
                git_blob_sha1(bytes)
            };
            ident.push_str(&format!("\n{path} {oid}"));
            map.insert(
                path.to_string(),
                File {
                    bytes: Arc::new(bytes.clone()),
                    lfs,
                    oid,
                    sha256,
                },
            );
        }
        let mut repos = self.shared.repos.lock().unwrap();
        let repo = repos
            .get_mut(&(kind, id.to_string()))
            .expect("add_repo first");
        ident.push_str(&format!("\n#{}", repo.commits.len()));
        let commit = sha1_hex(ident.as_bytes());
        repo.commits.insert(commit.clone(), map);
        repo.refs.insert("main".into(), commit.clone());
        commit
    }

    /// Points a branch or tag (e.g. `main`, `v1`, `refs/pr/1`) at a commit: a revision rename.
    pub fn set_ref(&self, kind: Kind, id: &str, name: &str, commit: &str) {
        let mut repos = self.shared.repos.lock().unwrap();
        let repo = repos.get_mut(&(kind, id.to_string())).unwrap();
        assert!(repo.commits.contains_key(commit), "no commit {commit}");
        repo.refs.insert(name.to_string(), commit.to_string());
    }

    /// Requests for `old` answer a relative 307 to `new`.
    pub fn rename_repo(&self, kind: Kind, old: &str, new: &str) {
        self.shared
            .renames
            .lock()
            .unwrap()
            .insert((kind, old.to_string()), new.to_string());
    }

    pub fn set_access(&self, kind: Kind, id: &str, access: Access) {
        let mut repos = self.shared.repos.lock().unwrap();
        repos.get_mut(&(kind, id.to_string())).unwrap().access = access;
    }

    /// Faults for one file, by `path` in its repo (any repo, any commit). `None` heals it.
    pub fn set_file_faults(&self, path: &str, faults: Option<HfFaults>) {
        let mut f = self.shared.faults.lock().unwrap();
        match faults {
            Some(x) => f.insert(path.to_string(), (x, 0)),
            None => f.remove(path),
        };
    }

    /// Faults for every file. `None` heals them.
    pub fn set_faults(&self, faults: Option<HfFaults>) {
        *self.shared.all_faults.lock().unwrap() = faults.map(|f| (f, 0));
    }

    /// File body bytes sent (Hub small files plus CDN), in all.
    pub fn bytes(&self) -> u64 {
        self.shared.bytes.load(Ordering::SeqCst)
    }

    /// File body bytes sent for `repo/path` (`datasets/` prefix for datasets).
    pub fn file_bytes(&self, key: &str) -> u64 {
        *self
            .shared
            .file_bytes
            .lock()
            .unwrap()
            .get(key)
            .unwrap_or(&0)
    }

    pub fn reset_counters(&self) {
        self.shared.bytes.store(0, Ordering::SeqCst);
        self.shared.file_bytes.lock().unwrap().clear();
        self.shared.log.lock().unwrap().clear();
    }

    /// Every request so far: `"<hub|cdn> <METHOD> <path> token=<yes|no>"`.
    pub fn log(&self) -> Vec<String> {
        self.shared.log.lock().unwrap().clone()
    }

    /// Total size of the files at a commit.
    pub fn repo_size(&self, kind: Kind, id: &str, rev: &str) -> u64 {
        let repos = self.shared.repos.lock().unwrap();
        let repo = &repos[&(kind, id.to_string())];
        let commit = repo.refs.get(rev).map(String::as_str).unwrap_or(rev);
        repo.commits[commit]
            .values()
            .map(|f| f.bytes.len() as u64)
            .sum()
    }
}

impl Drop for HfUpstream {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.hub);
        let _ = TcpStream::connect(self.cdn);
    }
}

struct Req {
    method: String,
    target: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

fn read_request(conn: &TcpStream) -> std::io::Result<Req> {
    let mut r = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
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
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body)?;
    Ok(Req {
        method,
        target,
        headers,
        body,
    })
}

fn respond(
    conn: &mut TcpStream,
    status: u16,
    headers: &[(&str, String)],
    body: &[u8],
    head_only: bool,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        206 => "Partial Content",
        302 => "Found",
        307 => "Temporary Redirect",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        416 => "Range Not Satisfiable",
        _ => "X",
    };
    let mut head = format!("HTTP/1.1 {status} {reason}\r\nConnection: close\r\n");
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-length"))
    {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    conn.write_all(head.as_bytes())?;
    if !head_only {
        conn.write_all(body)?;
    }
    conn.flush()
}

fn json_err(
    conn: &mut TcpStream,
    status: u16,
    code: &str,
    msg: &str,
    head: bool,
) -> std::io::Result<()> {
    let body = serde_json::json!({ "error": msg }).to_string();
    respond(
        conn,
        status,
        &[
            ("Content-Type", "application/json".into()),
            ("X-Error-Code", code.into()),
            ("X-Error-Message", msg.into()),
        ],
        body.as_bytes(),
        head,
    )
}

fn token_of(req: &Req) -> Option<String> {
    req.headers
        .get("authorization")
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_string())
}

/// The faults in force for a file, counting one hit when `count`.
fn faults_for(s: &Shared, path: &str, count: bool) -> Option<HfFaults> {
    let mut per = s.faults.lock().unwrap();
    let mut all = s.all_faults.lock().unwrap();
    let slot = match per.get_mut(path) {
        Some(x) => x,
        None => all.as_mut()?,
    };
    if let Some(n) = slot.0.limit {
        if slot.1 >= n {
            return None;
        }
    }
    if count {
        slot.1 += 1;
    }
    Some(slot.0.clone())
}

fn serve(mut conn: TcpStream, s: &Shared, is_cdn: bool) -> std::io::Result<()> {
    let req = read_request(&conn)?;
    s.log.lock().unwrap().push(format!(
        "{} {} {} token={}",
        if is_cdn { "cdn" } else { "hub" },
        req.method,
        req.target,
        if token_of(&req).is_some() {
            "yes"
        } else {
            "no"
        }
    ));
    if is_cdn {
        return serve_cdn(&mut conn, s, &req);
    }
    let head = req.method == "HEAD";
    let (path, query) = match req.target.split_once('?') {
        Some((p, q)) => (p.to_string(), q.to_string()),
        None => (req.target.clone(), String::new()),
    };
    if let Some(rest) = path.strip_prefix("/api/") {
        return serve_api(&mut conn, s, &req, rest, &query);
    }
    // /[datasets/]{org}/{name}/resolve/{rev}/{path...}
    let (kind, rest) = match path.strip_prefix("/datasets/") {
        Some(r) => (Kind::Dataset, r),
        None => (Kind::Model, path.trim_start_matches('/')),
    };
    let segs: Vec<&str> = rest.splitn(5, '/').collect();
    if segs.len() == 5 && segs[2] == "resolve" {
        let id = format!("{}/{}", segs[0], segs[1]);
        let rev = pct_decode(segs[3]);
        let file = pct_decode(segs[4]);
        return serve_resolve(&mut conn, s, &req, kind, &id, &rev, &file, head);
    }
    respond(&mut conn, 404, &[], b"stand-in: no such page\n", head)
}

/// Checks access; `Err` has been answered.
fn check_access(
    conn: &mut TcpStream,
    s: &Shared,
    req: &Req,
    kind: Kind,
    id: &str,
    head: bool,
) -> std::io::Result<Result<(), ()>> {
    let repos = s.repos.lock().unwrap();
    let Some(repo) = repos.get(&(kind, id.to_string())) else {
        drop(repos);
        json_err(conn, 401, "RepoNotFound", "Repository not found", head)?;
        return Ok(Err(()));
    };
    let tok = token_of(req);
    let access = repo.access.clone();
    drop(repos);
    match access {
        Access::Public => Ok(Ok(())),
        Access::Gated(ok) => match tok {
            Some(t) if ok.contains(&t) => Ok(Ok(())),
            Some(_) => {
                json_err(conn, 403, "GatedRepo", "Access to this gated repo is restricted and you are not in the authorized list", head)?;
                Ok(Err(()))
            }
            None => {
                json_err(
                    conn,
                    401,
                    "GatedRepo",
                    "Access to this gated repo is restricted. You must be authenticated",
                    head,
                )?;
                Ok(Err(()))
            }
        },
        Access::Private(ok) => match tok {
            Some(t) if ok.contains(&t) => Ok(Ok(())),
            _ => {
                json_err(conn, 401, "RepoNotFound", "Repository not found", head)?;
                Ok(Err(()))
            }
        },
    }
}

/// The commit a revision names, and that commit's files.
fn resolve_rev(
    s: &Shared,
    kind: Kind,
    id: &str,
    rev: &str,
) -> Option<(String, BTreeMap<String, File>)> {
    let repos = s.repos.lock().unwrap();
    let repo = repos.get(&(kind, id.to_string()))?;
    let commit = repo
        .refs
        .get(rev)
        .cloned()
        .unwrap_or_else(|| rev.to_string());
    let files = repo.commits.get(&commit)?.clone();
    Some((commit, files))
}

fn renamed(s: &Shared, kind: Kind, id: &str) -> Option<String> {
    s.renames
        .lock()
        .unwrap()
        .get(&(kind, id.to_string()))
        .cloned()
}

#[allow(clippy::too_many_arguments)]
fn serve_resolve(
    conn: &mut TcpStream,
    s: &Shared,
    req: &Req,
    kind: Kind,
    id: &str,
    rev: &str,
    path: &str,
    head: bool,
) -> std::io::Result<()> {
    if let Some(new) = renamed(s, kind, id) {
        let loc = format!(
            "/{}{new}/resolve/{}/{path}",
            kind.url_prefix(),
            pct_encode(rev)
        );
        return respond(conn, 307, &[("Location", loc)], b"", head);
    }
    if check_access(conn, s, req, kind, id, head)?.is_err() {
        return Ok(());
    }
    let Some((commit, files)) = resolve_rev(s, kind, id, rev) else {
        return json_err(conn, 404, "RevisionNotFound", "Invalid rev id", head);
    };
    let Some(file) = files.get(path) else {
        return json_err(conn, 404, "EntryNotFound", "Entry not found", head);
    };
    if let Some(st) = faults_for(s, path, false).and_then(|f| f.status) {
        return respond(conn, st, &[], b"injected failure\n", head);
    }
    let key = format!("{}{id}/{path}", kind.url_prefix());
    if file.lfs {
        let cdn_path = format!(
            "/repos/{}/{}/{}",
            &file.sha256[..2],
            &file.sha256[2..4],
            file.sha256
        );
        let loc = format!(
            "http://{}{cdn_path}?response-content-disposition=attachment%3B+filename%3D%22{}%22&Expires=9999999999&Key-Pair-Id=K3ESJI6DHPFC7&Signature={}&f={}",
            s.cdn,
            pct_encode(path.rsplit('/').next().unwrap_or(path)),
            sign(&cdn_path),
            pct_encode(&key)
        );
        let mut h = vec![
            ("Location", loc),
            ("X-Repo-Commit", commit.clone()),
            ("ETag", format!("\"{}\"", file.oid)),
            ("X-Linked-Etag", format!("\"{}\"", file.sha256)),
            ("X-Linked-Size", file.bytes.len().to_string()),
            ("Accept-Ranges", "bytes".into()),
            ("Content-Type", "text/plain; charset=utf-8".into()),
        ];
        if s.xet.load(Ordering::SeqCst) {
            h.push((
                "X-Xet-Hash",
                sha256_hex(format!("xet:{}", file.sha256).as_bytes()),
            ));
            h.push((
                "Link",
                format!(
                    "<http://{}/api/{}/{id}/xet-read-token/{commit}>; rel=\"xet-auth\", <http://127.0.0.1:9/>; rel=\"xet-reconstruction-info\"",
                    s.hub,
                    kind.api()
                ),
            ));
        }
        return respond(conn, 302, &h, b"", head);
    }
    let hdrs = vec![
        ("X-Repo-Commit", commit),
        ("ETag", format!("\"{}\"", file.oid)),
        ("Content-Type", "text/plain; charset=utf-8".into()),
    ];
    send_body(conn, s, req, &key, path, &file.bytes, hdrs, head)
}

/// A file body (or a single range of it), with faults and byte counting.
#[allow(clippy::too_many_arguments)]
fn send_body(
    conn: &mut TcpStream,
    s: &Shared,
    req: &Req,
    key: &str,
    fault_key: &str,
    bytes: &[u8],
    mut hdrs: Vec<(&str, String)>,
    head: bool,
) -> std::io::Result<()> {
    let total = bytes.len() as u64;
    let (status, start, end) = match req.headers.get("range").and_then(|r| parse_range(r, total)) {
        Some(Some((a, b))) => (206, a, b),
        Some(None) => {
            return respond(
                conn,
                416,
                &[("Content-Range", format!("bytes */{total}"))],
                b"",
                head,
            )
        }
        None => (200, 0, total.saturating_sub(1)),
    };
    let len = if total == 0 { 0 } else { end + 1 - start };
    hdrs.push(("Accept-Ranges", "bytes".into()));
    hdrs.push(("Content-Length", len.to_string()));
    if status == 206 {
        hdrs.push(("Content-Range", format!("bytes {start}-{end}/{total}")));
    }
    let faults = if head {
        None
    } else {
        faults_for(s, fault_key, true)
    };
    let mut body = if total == 0 {
        Vec::new()
    } else {
        bytes[start as usize..=end as usize].to_vec()
    };
    if let Some(at) = faults.as_ref().and_then(|f| f.corrupt_at) {
        if at >= start && at <= end {
            body[(at - start) as usize] ^= 0xff;
        }
    }
    if let Some(at) = faults.as_ref().and_then(|f| f.truncate_at) {
        if at >= start && at <= end {
            body.truncate((at - start) as usize);
        }
    }
    respond(conn, status, &hdrs, b"", true)?;
    if head {
        return Ok(());
    }
    for chunk in body.chunks(64 * 1024) {
        conn.write_all(chunk)?;
        s.bytes.fetch_add(chunk.len() as u64, Ordering::SeqCst);
        *s.file_bytes
            .lock()
            .unwrap()
            .entry(key.to_string())
            .or_insert(0) += chunk.len() as u64;
    }
    let _ = conn.flush();
    let _ = conn.shutdown(std::net::Shutdown::Write);
    Ok(())
}

/// `Some(Some((start, end)))` for a satisfiable single range, `Some(None)` for an unsatisfiable
/// one, `None` for none (or one this stand-in ignores, like multiple ranges).
fn parse_range(h: &str, total: u64) -> Option<Option<(u64, u64)>> {
    let spec = h.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (start, end) = if a.is_empty() {
        let n: u64 = b.parse().ok()?;
        if n == 0 {
            return Some(None);
        }
        (total.saturating_sub(n), total.checked_sub(1)?)
    } else {
        let a: u64 = a.parse().ok()?;
        let b: u64 = if b.is_empty() {
            total.saturating_sub(1)
        } else {
            b.parse::<u64>().ok()?.min(total.saturating_sub(1))
        };
        (a, b)
    };
    if start >= total || start > end {
        return Some(None);
    }
    Some(Some((start, end)))
}

fn serve_cdn(conn: &mut TcpStream, s: &Shared, req: &Req) -> std::io::Result<()> {
    let head = req.method == "HEAD";
    let (path, query) = req.target.split_once('?').unwrap_or((&req.target, ""));
    let q: HashMap<String, String> = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), pct_decode(v)))
        .collect();
    if q.get("Signature").map(String::as_str) != Some(sign(path).as_str()) {
        return respond(
            conn,
            403,
            &[],
            b"<Error>AccessDenied: bad signature</Error>",
            head,
        );
    }
    let sha = path.rsplit('/').next().unwrap_or("");
    let found = {
        let repos = s.repos.lock().unwrap();
        repos
            .values()
            .flat_map(|r| r.commits.values())
            .flat_map(|c| c.iter())
            .find(|(_, f)| f.sha256 == sha)
            .map(|(p, f)| (p.clone(), f.bytes.clone()))
    };
    let Some((fpath, bytes)) = found else {
        return respond(conn, 404, &[], b"<Error>NoSuchKey</Error>", head);
    };
    if let Some(st) = faults_for(s, &fpath, false).and_then(|f| f.status) {
        return respond(conn, st, &[], b"injected failure\n", head);
    }
    let key = q.get("f").cloned().unwrap_or_else(|| fpath.clone());
    let hdrs = vec![
        ("ETag", format!("\"{sha}\"")),
        ("Content-Type", "application/octet-stream".into()),
    ];
    send_body(conn, s, req, &key, &fpath, &bytes, hdrs, head)
}

fn tree_entry(path: &str, f: &File) -> serde_json::Value {
    let mut v = serde_json::json!({
        "type": "file",
        "oid": f.oid,
        "size": f.bytes.len(),
        "path": path,
    });
    if f.lfs {
        v["lfs"] = serde_json::json!({
            "oid": f.sha256,
            "size": f.bytes.len(),
            "pointerSize": lfs_pointer(&f.sha256, f.bytes.len()).len(),
        });
    }
    v
}

fn dir_entry(path: &str) -> serde_json::Value {
    serde_json::json!({
        "type": "directory",
        "oid": sha1_hex(format!("tree:{path}").as_bytes()),
        "size": 0,
        "path": path,
    })
}

/// Entries under `prefix` (a folder, or "" for the root): files and folders directly in it, or
/// everything under it when `recursive`.
fn list_tree(
    files: &BTreeMap<String, File>,
    prefix: &str,
    recursive: bool,
) -> Vec<serde_json::Value> {
    let base = if prefix.is_empty() {
        String::new()
    } else {
        format!("{}/", prefix.trim_end_matches('/'))
    };
    let mut dirs = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for (p, f) in files {
        let Some(rel) = p.strip_prefix(&base) else {
            continue;
        };
        let parts: Vec<&str> = rel.split('/').collect();
        for i in 1..parts.len() {
            if recursive || i == 1 {
                dirs.insert(format!("{base}{}", parts[..i].join("/")));
            }
        }
        if recursive || parts.len() == 1 {
            out.push(tree_entry(p, f));
        }
    }
    let mut all: Vec<serde_json::Value> = dirs.iter().map(|d| dir_entry(d)).collect();
    all.extend(out);
    all
}

fn serve_api(
    conn: &mut TcpStream,
    s: &Shared,
    req: &Req,
    rest: &str,
    query: &str,
) -> std::io::Result<()> {
    let head = req.method == "HEAD";
    let (kind, rest) = if let Some(r) = rest.strip_prefix("models/") {
        (Kind::Model, r)
    } else if let Some(r) = rest.strip_prefix("datasets/") {
        (Kind::Dataset, r)
    } else {
        return respond(conn, 404, &[], b"stand-in: no such api\n", head);
    };
    let segs: Vec<&str> = rest.splitn(4, '/').collect();
    if segs.len() < 2 {
        return json_err(conn, 404, "RepoNotFound", "Repository not found", head);
    }
    let id = format!("{}/{}", segs[0], segs[1]);
    let op = segs.get(2).copied().unwrap_or("");
    let tail = segs.get(3).copied().unwrap_or("");
    if let Some(new) = renamed(s, kind, &id) {
        let rest_after = &rest[id.len()..];
        let q = if query.is_empty() {
            String::new()
        } else {
            format!("?{query}")
        };
        let loc = format!("/api/{}/{new}{rest_after}{q}", kind.api());
        return respond(conn, 307, &[("Location", loc)], b"", head);
    }
    if check_access(conn, s, req, kind, &id, head)?.is_err() {
        return Ok(());
    }
    let params: HashMap<String, String> = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), pct_decode(v)))
        .collect();
    let access = s.repos.lock().unwrap()[&(kind, id.clone())].access.clone();
    let json = |c: &mut TcpStream, v: serde_json::Value, extra: Vec<(&str, String)>| {
        let mut h = vec![(
            "Content-Type",
            "application/json; charset=utf-8".to_string(),
        )];
        h.extend(extra);
        respond(c, 200, &h, v.to_string().as_bytes(), head)
    };
    match op {
        "" | "revision" => {
            let rev = if op.is_empty() {
                "main".to_string()
            } else {
                pct_decode(tail)
            };
            let Some((commit, files)) = resolve_rev(s, kind, &id, &rev) else {
                return json_err(
                    conn,
                    404,
                    "RevisionNotFound",
                    &format!("Invalid rev id: {rev}"),
                    head,
                );
            };
            let siblings: Vec<_> = files
                .keys()
                .map(|p| serde_json::json!({ "rfilename": p }))
                .collect();
            let mut v = serde_json::json!({
                "_id": &commit[..24],
                "id": id,
                "author": segs[0],
                "sha": commit,
                "lastModified": "2026-01-01T00:00:00.000Z",
                "private": matches!(access, Access::Private(_)),
                "gated": if matches!(access, Access::Gated(_)) { serde_json::json!("manual") } else { serde_json::json!(false) },
                "disabled": false,
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "siblings": siblings,
                "createdAt": "2026-01-01T00:00:00.000Z",
                "usedStorage": files.values().map(|f| f.bytes.len()).sum::<usize>(),
            });
            if kind == Kind::Model {
                v["modelId"] = serde_json::json!(id);
            }
            json(conn, v, vec![])
        }
        "tree" => {
            // tail = "{rev}[/{path}]"; a rev with '/' arrives percent-encoded.
            let (rev, sub) = tail.split_once('/').unwrap_or((tail, ""));
            let rev = pct_decode(rev);
            let Some((_commit, files)) = resolve_rev(s, kind, &id, &rev) else {
                return json_err(
                    conn,
                    404,
                    "RevisionNotFound",
                    &format!("Invalid rev id: {rev}"),
                    head,
                );
            };
            let sub = pct_decode(sub);
            if !sub.is_empty()
                && !files
                    .keys()
                    .any(|p| p.starts_with(&format!("{}/", sub.trim_end_matches('/'))))
            {
                return json_err(conn, 404, "EntryNotFound", "Entry not found", head);
            }
            let recursive = matches!(
                params.get("recursive").map(String::as_str),
                Some("true" | "True" | "1")
            );
            let all = list_tree(&files, &sub, recursive);
            let page = s.page_size.load(Ordering::SeqCst) as usize;
            let cursor: usize = params
                .get("cursor")
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            let slice: Vec<_> = all.iter().skip(cursor).take(page).cloned().collect();
            let mut extra = vec![];
            if cursor + page < all.len() {
                let host = req
                    .headers
                    .get("host")
                    .cloned()
                    .unwrap_or_else(|| s.hub.to_string());
                let path = req.target.split('?').next().unwrap_or("");
                extra.push((
                    "Link",
                    format!(
                        "<http://{host}{path}?recursive={recursive}&expand=false&cursor={}>; rel=\"next\"",
                        cursor + page
                    ),
                ));
            }
            json(conn, serde_json::Value::Array(slice), extra)
        }
        "paths-info" if req.method == "POST" => {
            let rev = pct_decode(tail);
            let Some((_commit, files)) = resolve_rev(s, kind, &id, &rev) else {
                return json_err(
                    conn,
                    404,
                    "RevisionNotFound",
                    &format!("Invalid rev id: {rev}"),
                    head,
                );
            };
            let body = String::from_utf8_lossy(&req.body).into_owned();
            let mut paths = Vec::new();
            if body.trim_start().starts_with('{') {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) {
                    for p in v["paths"].as_array().into_iter().flatten() {
                        paths.push(p.as_str().unwrap_or("").to_string());
                    }
                }
            } else {
                for kv in body.split('&') {
                    if let Some(("paths", v)) = kv.split_once('=') {
                        paths.push(pct_decode(v));
                    }
                }
            }
            let mut out = Vec::new();
            for p in paths {
                if let Some(f) = files.get(&p) {
                    out.push(tree_entry(&p, f));
                } else if files.keys().any(|k| k.starts_with(&format!("{p}/"))) {
                    out.push(dir_entry(&p));
                }
            }
            json(conn, serde_json::Value::Array(out), vec![])
        }
        "xet-read-token" => {
            // No CAS here: the URL given points at a port nobody listens on.
            let h = vec![
                ("X-Xet-Cas-Url", "http://127.0.0.1:9".to_string()),
                ("X-Xet-Access-Token", "stand-in-xet-token".to_string()),
                ("X-Xet-Token-Expiration", "9999999999".to_string()),
            ];
            json(
                conn,
                serde_json::json!({"casUrl": "http://127.0.0.1:9", "accessToken": "stand-in-xet-token", "exp": 9999999999u64}),
                h,
            )
        }
        _ => respond(conn, 404, &[], b"stand-in: no such api\n", head),
    }
}
