//! Hostile input, against the real daemon: what an attacker on the LAN (or a local user who can
//! write into the cache directory) can send, and what must never come of it.
//!
//! - Path traversal (RFC 3986 3.3, RFC 9112 3.2): every path-taking endpoint — the registry
//!   routes on the registry `Host` and on the data-plane host, `/blobs/`, `/manifests/`,
//!   `/models/`, `/api/*`, the web UI, `/install.sh`, `/ca.crt`, `/setup.sh`, ... — with `..`,
//!   `%2e%2e`, `%2E%2E%2F`, `..%2f`, double encoding `%252e`, `%5c` and raw backslashes, `%00`
//!   and raw NUL, overlong UTF-8 `%c0%ae`, absolute paths, `//`, `..;/`, absolute-form and
//!   relative request targets, sent as raw bytes: never a 5xx, never a 200 on a path-shaped
//!   request, and neither a canary planted outside the cache nor `/etc/passwd` in any body.
//! - Oversized input: a 70 KiB header and 1000 headers get 431 (RFC 6585 5) or a clean close
//!   and the daemon keeps serving; header blocks inside the limits still work; over-long
//!   namespaces, models, tags and 10k-character paths are 400 with a registry JSON error naming
//!   the part (`NAME_INVALID`/`TAG_INVALID`/`DIGEST_INVALID`), or the distribution endpoints'
//!   plain-text reason (what `install.sh` prints); DNS names over 255 bytes, labels over 63
//!   bytes and truncated labels (RFC 1035 2.3.4, 4.1.2) over UDP and TCP are FORMERR or
//!   dropped, never a crash.
//! - Slowloris: HTTP clients sending their headers a byte a second, clients that connect and
//!   send nothing at all, or only part of the HTTP/2 preface, or the preface and no request
//!   (RFC 9113 3.4), are cut off at the header read timeout (30 s); stalled TLS
//!   handshakes at the handshake timeout (10 s); 200 of them at once do not slow a normal
//!   client down.
//! - DNS amplification from a source outside `[dns] allow` (RFC 5358, RFC 8482): an attacker in
//!   its own network namespace flooding ANY, large-answer and EDNS-4096/65535 queries over UDP
//!   and TCP gets only REFUSED with no records and no larger than its query (amplification
//!   ≤ 1.0), or nothing once rate-limited; nothing of it is forwarded upstream (the test's
//!   upstream resolver counts); an allowed client is answered throughout.
//! - Control socket: an unauthorised uid cannot prune (the model stays); a 4 GiB length
//!   prefix is refused without allocating it (RSS checked); half-sent frames, closed or left
//!   hanging, wedge nothing.
//! - Symlinks planted in the cache (a host, namespace or model directory, a manifest, a blob,
//!   `.lancached/partial`) are not followed out of it by the registry routes (read or write),
//!   the data plane, the distribution endpoints, `/api/models`, `lancachectl models`, prune or
//!   eviction; pruning a symlinked blob removes the link, never its target. A daemon whose own
//!   area (`.lancached`, `.lancached/partial`) is a link refuses to start, naming it.
//!
//! Also covered elsewhere: `distribution::path_tricks_are_refused` (a first set of path tricks
//! and planted symlinks on `/manifests/` and `/models/`), `proxy::manifest_errors_revalidation_and_offline`
//! (invalid registry names), `dns::sources_outside_allow_are_refused`, `dns::rate_limit_slips_to_tcp`,
//! `dns::garbage_is_survived`, `control::other_uid_is_refused` and
//! `control::malformed_frames_get_errors`, `metrics::metrics_forbidden_outside_metrics_allow`.

use crate::util::daemon::Activate;
use crate::util::models::{prepared_dir, write_model, TestModel};
use crate::util::upstream::{blob_bytes, FakeUpstream};
use crate::util::{netns, Daemon};
use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const REG: &str = "registry.ollama.ai";
const CANARY: &str = "LANCACHE-CANARY-7f3a9c";
const PASSWD: &str = "root:x:0:0";

/// One HTTP response read off a raw connection.
#[derive(Debug)]
struct Raw {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Raw {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).to_string()
    }
}

/// Writes `request` byte for byte (no client-side normalisation of any kind) and reads until
/// the server closes. `None`: closed (or reset) without a response.
fn exchange(addr: SocketAddr, request: &[u8]) -> Option<Raw> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    // The server may answer (431) and close before it has read everything: a failed write is
    // not a failure of the test, a missing answer is judged by the caller.
    let _ = s.write_all(request);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {
                panic!("no answer within 15 s to {:?}", trim(request))
            }
            Err(_) => break,
        }
    }
    let split = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..split]).to_string();
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some(Raw {
        status,
        head,
        body: buf[split + 4..].to_vec(),
    })
}

fn trim(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(b);
    s.chars().take(200).collect()
}

fn get(addr: SocketAddr, host: &str, target: &str) -> Option<Raw> {
    exchange(
        addr,
        format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

fn registry_config(up: &FakeUpstream, extra: &str) -> String {
    format!(
        "[upstream]\nresolvers = []\n[upstream.registries]\n\"{REG}\" = \"{u}\"\n\"hf.co\" = \"{u}\"\n{extra}",
        u = up.url()
    )
}

// ---------------------------------------------------------------------------------------------
// 1. Path traversal

/// Pieces an attacker puts where a name, tag, digest or file name belongs.
const PAYLOADS: &[&str] = &[
    "..",
    "../..",
    "../../../../../canary",
    "../../../../../../../../etc/passwd",
    "%2e%2e",
    "%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/canary",
    "%2E%2E%2F%2E%2E%2F%2E%2E%2F%2E%2E%2F%2E%2E%2Fcanary",
    "..%2f..%2f..%2f..%2f..%2fcanary",
    "%252e%252e%252f%252e%252e%252fcanary",
    "..%5c..%5c..%5ccanary",
    "%5c",
    "%00",
    "canary%00.txt",
    "%c0%ae%c0%ae/%c0%ae%c0%ae/canary",
    "%c0%ae%c0%ae%c0%af%c0%ae%c0%ae%c0%afcanary",
    "/etc/passwd",
    "//etc/passwd",
    ".%2e/.%2e/.%2e/canary",
    "%2e./%2e./canary",
    "..;/..;/canary",
    "./././../canary",
    ".lancached/secret",
    "../.lancached/secret",
];

/// Request targets with `{}` where the payload goes, and whether to send them with the
/// registry's `Host` (else the data-plane host, the daemon's own address).
const TEMPLATES: &[(&str, bool)] = &[
    ("/v2/{}/manifests/latest", true),
    ("/v2/library/{}/manifests/latest", true),
    ("/v2/library/qwen2.5/manifests/{}", true),
    ("/v2/library/qwen2.5/blobs/{}", true),
    ("/v2/library/qwen2.5/blobs/sha256:{}", true),
    ("/v2/{}/blobs/sha256:@HEX@", true),
    ("/v2/{}", true),
    ("/v2/{}/manifests/latest", false),
    ("/v2/library/{}/manifests/latest", false),
    ("/v2/library/qwen2.5/manifests/{}", false),
    ("/v2/library/qwen2.5/blobs/{}", false),
    ("/v2/library/qwen2.5/blobs/sha256:{}", false),
    ("/v2/{}/blobs/sha256:@HEX@", false),
    ("/blobs/{}", false),
    ("/blobs/sha256:{}", false),
    ("/blobs/sha256-{}", false),
    ("/blobs/sha256:@HEX@/{}", false),
    ("/blobs/sha256:@HEX@?registry={}&repo=library/x", false),
    (
        "/blobs/sha256:@HEX@?registry=registry.ollama.ai&repo={}",
        false,
    ),
    ("/manifests/{}", false),
    ("/manifests/library/{}:latest", false),
    ("/manifests/qwen2.5:{}", false),
    ("/models/{}", false),
    ("/models/qwen2.5:{}", false),
    ("/models/{}/qwen2.5:1.5b", false),
    ("/api/models/{}", false),
    ("/api/{}", false),
    ("/api/models?format={}", false),
    ("/{}", false),
    ("/static/{}", false),
    ("/index.html/{}", false),
    ("/install.sh/{}", false),
    ("/install.sh?{}", false),
    ("/install.sh?model={}", false),
    ("/install.ps1?{}", false),
    ("/ca.crt/{}", false),
    ("/ca.crt?{}", false),
    ("/setup.sh?{}", false),
    ("/health/{}", false),
    ("/metrics/{}", false),
    ("/cache/stats/{}", false),
    ("/{}/cache/blobs", false),
];

#[test]
fn path_traversal_in_every_endpoint() {
    let up = FakeUpstream::start();
    let tmp = prepared_dir(|c| {
        write_model(c, "qwen2.5:1.5b", &[1_000]);
        // Canaries where the payloads above would land if anything resolved them: next to the
        // cache directory, and in the daemon's private area inside it.
        std::fs::write(c.parent().unwrap().join("canary"), CANARY).unwrap();
        std::fs::create_dir_all(c.join(".lancached")).unwrap();
        std::fs::write(c.join(".lancached/secret"), CANARY).unwrap();
    });
    let d = Daemon::builder()
        .dir(tmp)
        .config(&registry_config(&up, ""))
        .start();
    let addr = d.http.unwrap();
    let data_host = addr.to_string();
    // The endpoints are live: a traversal refused below is refused by its validation, not
    // because the route is dead.
    assert_eq!(
        get(addr, &data_host, "/models/qwen2.5:1.5b")
            .unwrap()
            .status,
        200
    );
    assert_eq!(
        get(addr, &data_host, "/manifests/qwen2.5:1.5b")
            .unwrap()
            .status,
        200
    );

    let hex = "0".repeat(64);
    let mut failures = Vec::new();
    let mut sent = 0;
    let mut check = |target: &str, host: &str, path_shaped: bool, raw: Option<Raw>| {
        sent += 1;
        let Some(r) = raw else {
            failures.push(format!("{host} {target}: closed without an answer"));
            return;
        };
        let body = r.text();
        if body.contains(CANARY) || body.contains(PASSWD) {
            failures.push(format!("{host} {target}: LEAKED {} {body}", r.status));
        }
        if r.status >= 500 {
            failures.push(format!("{host} {target}: {} {body}", r.status));
        }
        if path_shaped && !(r.status == 400 || r.status == 404) {
            failures.push(format!("{host} {target}: {} (want 400/404)", r.status));
        }
    };
    for (template, registry_host) in TEMPLATES {
        let host = if *registry_host { REG } else { &data_host };
        // A payload in the query of a fixed resource may legitimately be ignored (200); one in
        // the path must be refused.
        let in_query = template
            .find('?')
            .is_some_and(|q| q < template.find("{}").unwrap());
        for p in PAYLOADS {
            let target = template.replace("@HEX@", &hex).replace("{}", p);
            check(&target, host, !in_query, get(addr, host, &target));
        }
    }
    // Request targets no client library would send.
    let raw_targets: &[&[u8]] = &[
        b"GET http://registry.ollama.ai/v2/../../../../canary HTTP/1.1\r\n",
        b"GET http://evil.example/../../../../../canary HTTP/1.1\r\n",
        b"GET ../../../../canary HTTP/1.1\r\n",
        b"GET /models/..\\..\\..\\..\\..\\canary HTTP/1.1\r\n",
        b"GET /blobs/sha256:\\..\\..\\canary HTTP/1.1\r\n",
        b"GET /manifests/qwen2.5:1.5b\x00 HTTP/1.1\r\n",
        b"GET /blobs/\x00/../../canary HTTP/1.1\r\n",
        b"GET /models/\xc0\xae\xc0\xae/\xc0\xae\xc0\xae/canary HTTP/1.1\r\n",
        b"GET /v2/library/qwen2.5/manifests/../../../../../../canary HTTP/1.1\r\n",
    ];
    for start in raw_targets {
        for host in [REG, data_host.as_str()] {
            let mut req = start.to_vec();
            req.extend_from_slice(format!("Host: {host}\r\nConnection: close\r\n\r\n").as_bytes());
            let r = exchange(addr, &req);
            check(&trim(start), host, true, r);
        }
    }
    assert!(sent > 900, "{sent} requests");
    assert!(
        failures.is_empty(),
        "{} of {sent}:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(
        up.manifest_requests(),
        0,
        "nothing invalid reached upstream"
    );
    // And the daemon is fine.
    assert_eq!(get(addr, &data_host, "/health").unwrap().status, 200);
}

// ---------------------------------------------------------------------------------------------
// 2. Oversized headers, names and DNS names

#[test]
fn oversized_headers_are_refused_and_the_daemon_serves_on() {
    let d = Daemon::start();
    let addr = d.http.unwrap();
    let health = |extra: &str| {
        exchange(
            addr,
            format!("GET /health HTTP/1.1\r\nHost: x\r\n{extra}Connection: close\r\n\r\n")
                .as_bytes(),
        )
    };
    // Inside the limits: a 8 KiB header and 90 headers are fine.
    assert_eq!(
        health(&format!("X-Big: {}\r\n", "a".repeat(8 << 10)))
            .unwrap()
            .status,
        200
    );
    let many: String = (0..90).map(|i| format!("X-H{i}: v\r\n")).collect();
    assert_eq!(health(&many).unwrap().status, 200);
    // Over them: 431 or a clean close, never a 5xx or a hang.
    let over = [
        format!("X-Big: {}\r\n", "a".repeat(70 << 10)),
        (0..1000).map(|i| format!("X-H{i}: v\r\n")).collect(),
        (0..40)
            .map(|i| format!("X-H{i}: {}\r\n", "b".repeat(4000)))
            .collect(),
    ];
    for extra in &over {
        if let Some(r) = health(extra) {
            assert_eq!(r.status, 431, "{}", r.head);
        }
    }
    // A request line beyond the buffer limit.
    let long = format!("/models/{}", "a".repeat(100 << 10));
    if let Some(r) = get(addr, "x", &long) {
        assert!([400, 414, 431].contains(&r.status), "{}", r.head);
    }
    for _ in 0..3 {
        assert_eq!(health("").unwrap().status, 200);
    }
}

#[test]
fn overlong_names_are_400_naming_the_part() {
    let up = FakeUpstream::start();
    let d = Daemon::builder().config(&registry_config(&up, "")).start();
    let addr = d.http.unwrap();
    let a300 = "a".repeat(300);
    let a10k = "a".repeat(10_000);
    let registry_cases = [
        (
            format!("/v2/library/{a300}/manifests/latest"),
            "NAME_INVALID",
            "model",
        ),
        (
            format!("/v2/{a300}/m/manifests/latest"),
            "NAME_INVALID",
            "namespace",
        ),
        (
            format!("/v2/library/m/manifests/{a300}"),
            "TAG_INVALID",
            "tag",
        ),
        (
            format!("/v2/library/m/manifests/{a10k}"),
            "TAG_INVALID",
            "tag",
        ),
        (
            format!("/v2/library/{a10k}/manifests/latest"),
            "NAME_INVALID",
            "model",
        ),
        (
            format!("/v2/{}/m/manifests/latest", ["a"; 2000].join("/")),
            "NAME_INVALID",
            "repository",
        ),
        (
            format!("/v2/library/m/blobs/sha256:{a300}"),
            "DIGEST_INVALID",
            "digest",
        ),
        (format!("/blobs/sha256:{a10k}"), "DIGEST_INVALID", "digest"),
    ];
    for (host, (path, code, mentions)) in [REG, &addr.to_string()]
        .into_iter()
        .flat_map(|h| registry_cases.iter().map(move |c| (h, c)))
    {
        let r = get(addr, host, path).unwrap();
        assert_eq!(r.status, 400, "{host} {}", &path[..60]);
        assert!(r
            .head
            .to_ascii_lowercase()
            .contains("content-type: application/json"));
        let j: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(j["errors"][0]["code"], *code, "{j}");
        let msg = j["errors"][0]["message"].as_str().unwrap();
        assert!(msg.contains(mentions), "{code}: {msg}");
        // The error names the part; it does not echo back 10 KB.
        assert!(r.body.len() < 2048, "{} bytes of error", r.body.len());
    }
    let distribution_cases = [
        (format!("/models/{a10k}"), "longer than"),
        (format!("/manifests/{a10k}:latest"), "longer than"),
        (format!("/models/qwen2.5:{a300}"), "tag"),
        (format!("/models/library/{a300}:latest"), "model"),
        (format!("/models/{a300}/m:latest"), "namespace"),
    ];
    for (path, mentions) in &distribution_cases {
        let r = get(addr, &addr.to_string(), path).unwrap();
        assert_eq!(r.status, 400, "{}", &path[..60]);
        assert!(r.text().contains(mentions), "{}: {}", &path[..60], r.text());
        assert!(r.body.len() < 2048, "{} bytes of error", r.body.len());
    }
    assert_eq!(up.manifest_requests(), 0);
}

/// A DNS query for raw wire-format `name` (labels with their length bytes, root included).
fn dns_query(id: u16, name_wire: &[u8], qtype: u16, edns: Option<u16>) -> Vec<u8> {
    let mut m = id.to_be_bytes().to_vec();
    m.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, u8::from(edns.is_some())]);
    m.extend_from_slice(name_wire);
    m.extend_from_slice(&qtype.to_be_bytes());
    m.extend_from_slice(&1u16.to_be_bytes());
    if let Some(size) = edns {
        // OPT: root owner, type 41, class = payload size, DO set, no options.
        m.extend_from_slice(&[0, 0, 41]);
        m.extend_from_slice(&size.to_be_bytes());
        m.extend_from_slice(&[0, 0, 0x80, 0, 0, 0]);
    }
    m
}

fn wire_name(name: &str) -> Vec<u8> {
    let mut w = Vec::new();
    for label in name.trim_end_matches('.').split('.') {
        w.push(label.len() as u8);
        w.extend_from_slice(label.as_bytes());
    }
    w.push(0);
    w
}

fn rcode(reply: &[u8]) -> u8 {
    reply[3] & 0x0f
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Sends one DNS message over a new TCP connection (RFC 1035 4.2.2 framing) and returns the
/// reply, or `None` when the server closes the connection without one.
fn tcp_exchange(dns: SocketAddr, q: &[u8]) -> Option<Vec<u8>> {
    let mut t = TcpStream::connect(dns).unwrap();
    t.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut framed = (q.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(q);
    t.write_all(&framed).unwrap();
    let mut len = [0u8; 2];
    t.read_exact(&mut len).ok()?;
    let mut reply = vec![0u8; u16::from_be_bytes(len) as usize];
    t.read_exact(&mut reply).unwrap();
    Some(reply)
}

#[test]
fn overlong_dns_names_are_formerr_or_dropped() {
    let d = Daemon::builder()
        .config("[dns]\nadvertise = [\"192.0.2.10\"]\n[upstream]\nresolvers = []\n")
        .start();
    let dns = d.dns.unwrap();
    let label63 = "a".repeat(63);
    let mut bad: Vec<Vec<u8>> = Vec::new();
    // 5 × 63-byte labels: a 321-byte name, over RFC 1035's 255.
    bad.push(wire_name(&[label63.as_str(); 5].join(".")));
    // 130 one-byte labels: 261 bytes.
    bad.push(wire_name(&["a"; 130].join(".")));
    // A 64-byte label: its length byte has the reserved 01 high bits.
    bad.push(wire_name(&format!("{}.registry.ollama.ai", "a".repeat(64))));
    // A label longer than what follows (the message ends inside it).
    bad.push(vec![63, b'a', b'b', b'c']);
    // A name with no terminating root label before the end of the message.
    bad.push(vec![3, b'a', b'b', b'c', 3, b'd', b'e', b'f']);
    // 255 bytes exactly of labels plus the intercepted suffix: one over.
    bad.push(wire_name(&format!(
        "{}.{}.{}.{}.registry.ollama.ai",
        "a".repeat(60),
        "b".repeat(60),
        "c".repeat(60),
        "d".repeat(60)
    )));
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    for (i, name) in bad.iter().enumerate() {
        for edns in [None, Some(65535)] {
            let id = 0x4000 + i as u16;
            let q = dns_query(id, name, 255, edns);
            // UDP: FORMERR for this very query, or nothing.
            s.send_to(&q, dns).unwrap();
            let mut buf = [0u8; 4096];
            if let Ok(n) = s.recv(&mut buf) {
                assert_eq!(u16_at(&buf, 0), id);
                assert_eq!(rcode(&buf[..n]), 1, "query {i}: rcode {}", rcode(&buf[..n]));
                assert_eq!(u16_at(&buf, 6), 0, "no answers");
            }
            // TCP: the same, framed.
            if let Some(reply) = tcp_exchange(dns, &q) {
                assert_eq!(rcode(&reply), 1, "tcp query {i}");
            }
        }
    }
    // A maximal TCP frame: a query whose name runs through 64 KiB of labels.
    let mut q = dns_query(7, &[], 1, None);
    q.truncate(12);
    while q.len() < 65535 - 64 {
        q.push(63);
        q.extend_from_slice(&[b'z'; 63]);
    }
    q.resize(65535, 0);
    if let Some(reply) = tcp_exchange(dns, &q) {
        assert_eq!(rcode(&reply), 1);
    }
    // Still answering, over both transports.
    let ok = dns_query(9, &wire_name("registry.ollama.ai"), 1, None);
    s.send_to(&ok, dns).unwrap();
    let mut buf = [0u8; 512];
    let n = s.recv(&mut buf).unwrap();
    assert_eq!((rcode(&buf[..n]), u16_at(&buf, 6)), (0, 1));
    let mut t = TcpStream::connect(dns).unwrap();
    let mut framed = (ok.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&ok);
    t.write_all(&framed).unwrap();
    let mut len = [0u8; 2];
    t.read_exact(&mut len).unwrap();
    let mut reply = vec![0u8; u16::from_be_bytes(len) as usize];
    t.read_exact(&mut reply).unwrap();
    assert_eq!((rcode(&reply), u16_at(&reply, 6)), (0, 1));
}

// ---------------------------------------------------------------------------------------------
// 3. Slowloris

/// What a slow client does.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Slow {
    /// Sends an endless request head, one byte a second.
    Drip,
    /// Connects and sends nothing.
    Silent,
    /// The first bytes of the HTTP/2 preface (RFC 9113 3.4), then nothing: hyper-util is still
    /// deciding between HTTP/1 and HTTP/2.
    H2PrefaceStart,
    /// The whole HTTP/2 preface and an empty SETTINGS frame, then no request ever.
    H2Idle,
    /// A TLS record header, then one byte a second: a ClientHello that never completes.
    TlsDrip,
    /// Connects to the TLS port and sends nothing.
    TlsSilent,
}

struct SlowClient {
    kind: Slow,
    s: TcpStream,
    sent: usize,
    closed: Option<Duration>,
}

impl SlowClient {
    fn next_byte(&self) -> u8 {
        match self.kind {
            Slow::Drip => {
                const HEAD: &[u8] = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ";
                HEAD.get(self.sent).copied().unwrap_or(b'a')
            }
            // Handshake record, TLS 1.0 record version, 512 bytes of ClientHello to come.
            _ => [0x16, 0x03, 0x01, 0x02, 0x00, 0x01]
                .get(self.sent)
                .copied()
                .unwrap_or(0),
        }
    }

    /// Whether the server has closed (or reset) the connection.
    fn is_closed(&mut self) -> bool {
        let mut buf = [0u8; 1024];
        loop {
            match self.s.read(&mut buf) {
                Ok(0) => return true,
                // An answer (an error page, a TLS alert): keep reading until the close.
                Ok(_) => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
                Err(_) => return true,
            }
        }
    }
}

#[test]
fn slowloris_clients_are_cut_off_and_do_not_starve_others() {
    let d = Daemon::builder()
        .activate(Activate {
            https: true,
            ..Default::default()
        })
        .start();
    let (http, https) = (d.http.unwrap(), d.https.unwrap());
    let start = Instant::now();
    let mut clients: Vec<SlowClient> = Vec::new();
    for (kind, count, addr) in [
        (Slow::Drip, 200, http),
        (Slow::Silent, 20, http),
        (Slow::H2PrefaceStart, 10, http),
        (Slow::H2Idle, 10, http),
        (Slow::TlsDrip, 10, https),
        (Slow::TlsSilent, 10, https),
    ] {
        for _ in 0..count {
            let mut s = TcpStream::connect(addr).unwrap();
            const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
            match kind {
                Slow::H2PrefaceStart => s.write_all(&PREFACE[..10]).unwrap(),
                Slow::H2Idle => {
                    s.write_all(PREFACE).unwrap();
                    s.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).unwrap();
                }
                _ => {}
            }
            s.set_nonblocking(true).unwrap();
            clients.push(SlowClient {
                kind,
                s,
                sent: 0,
                closed: None,
            });
        }
    }
    // A normal client, served throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let normal = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut worst = Duration::ZERO;
            let mut served = 0;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let r = get(http, "x", "/health").expect("the normal client is answered");
                assert_eq!(r.status, 200);
                worst = worst.max(t.elapsed());
                served += 1;
                std::thread::sleep(Duration::from_millis(250));
            }
            (served, worst)
        })
    };
    while start.elapsed() < Duration::from_secs(45) && clients.iter().any(|c| c.closed.is_none()) {
        for c in clients.iter_mut().filter(|c| c.closed.is_none()) {
            let closed = c.is_closed()
                || (matches!(c.kind, Slow::Drip | Slow::TlsDrip)
                    && match c.s.write(&[c.next_byte()]) {
                        Ok(_) => {
                            c.sent += 1;
                            false
                        }
                        Err(e) => e.kind() != ErrorKind::WouldBlock,
                    });
            if closed {
                c.closed = Some(start.elapsed());
            }
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    stop.store(true, Ordering::Relaxed);
    let (served, worst) = normal.join().unwrap();
    let mut by_kind: HashMap<String, Vec<Option<u64>>> = HashMap::new();
    for c in &clients {
        by_kind
            .entry(format!("{:?}", c.kind))
            .or_default()
            .push(c.closed.map(|t| t.as_secs()));
    }
    let within = |kind: Slow, lo: u64, hi: u64| {
        let times = &by_kind[&format!("{kind:?}")];
        assert!(
            times
                .iter()
                .all(|t| t.is_some_and(|t| (lo..=hi).contains(&t))),
            "{kind:?} clients closed at (s) {times:?}, want {lo}..={hi}"
        );
    };
    // hyper's header read timeout, and the first-request deadline for clients that never
    // send a byte (`http::HEADER_READ_TIMEOUT`, 30 s).
    within(Slow::Drip, 28, 36);
    within(Slow::Silent, 28, 36);
    within(Slow::H2PrefaceStart, 28, 36);
    within(Slow::H2Idle, 28, 36);
    // `tls::HANDSHAKE_TIMEOUT`, 10 s.
    within(Slow::TlsDrip, 8, 15);
    within(Slow::TlsSilent, 8, 15);
    assert!(served >= 60, "the normal client got {served} answers");
    assert!(
        worst < Duration::from_secs(3),
        "slowest normal answer {worst:?}"
    );
    let stats = d.ctl_json(&["stats"]);
    assert!(stats.to_string().contains("handshake_timeouts"), "{stats}");
}

// ---------------------------------------------------------------------------------------------
// 4. DNS amplification from outside `[dns] allow`

/// A stand-in upstream resolver on loopback: answers every A query with 192.0.2.1 and counts the
/// names it was asked for.
struct CountingResolver {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
}

impl CountingResolver {
    fn start() -> CountingResolver {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = s.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok((n, from)) = s.recv_from(&mut buf) {
                let q = &buf[..n];
                let mut at = 12;
                let mut name = Vec::new();
                while at < n && q[at] != 0 && q[at] < 64 {
                    let l = q[at] as usize;
                    name.push(String::from_utf8_lossy(&q[at + 1..(at + 1 + l).min(n)]).to_string());
                    at += 1 + l;
                }
                log.lock()
                    .unwrap()
                    .push(name.join(".").to_ascii_lowercase());
                if at + 5 > n {
                    continue;
                }
                let end = at + 5;
                let mut r = q[..end].to_vec();
                r[2] |= 0x80;
                r[3] = 0x80;
                r[6..12].copy_from_slice(&[0, 1, 0, 0, 0, 0]);
                r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 1]);
                let _ = s.send_to(&r, from);
            }
        });
        CountingResolver { addr, seen }
    }

    fn count(&self, pred: impl Fn(&str) -> bool) -> usize {
        self.seen.lock().unwrap().iter().filter(|n| pred(n)).count()
    }
}

#[test]
fn dns_amplification_from_outside_allow_is_refused_small_and_never_forwarded() {
    if !netns::available() {
        return;
    }
    let ns = netns::NetNs::new(&[]);
    let (root_ip, attacker_ip) = ns.veth();
    let resolver = CountingResolver::start();
    // The daemon binds the root side of the veth itself; its port is picked here.
    let port = loop {
        let u = UdpSocket::bind(format!("{root_ip}:0")).unwrap();
        let p = u.local_addr().unwrap().port();
        if std::net::TcpListener::bind(format!("{root_ip}:{p}")).is_ok() {
            break p;
        }
    };
    let dns: SocketAddr = format!("{root_ip}:{port}").parse().unwrap();
    let d = Daemon::builder()
        .activate(Activate::none())
        .config(&format!(
            "[dns]\nlisten = [\"{dns}\"]\nallow = [\"{root_ip}/32\"]\nrate_limit = 200\nadvertise = [\"192.0.2.10\"]\n\
             [upstream]\nresolvers = [\"{}\"]\n",
            resolver.addr
        ))
        .start();

    // The allowed client (the root side's own address) asks for forwarded names all through
    // the flood.
    let flooding = Arc::new(AtomicBool::new(true));
    let allowed = {
        let flooding = flooding.clone();
        let root_ip = root_ip.clone();
        std::thread::spawn(move || {
            let s = UdpSocket::bind(format!("{root_ip}:0")).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut answered = 0;
            let mut i = 0u16;
            while flooding.load(Ordering::Relaxed) || i < 20 {
                let q = dns_query(i, &wire_name(&format!("ok-{i}.fwd.test")), 1, None);
                s.send_to(&q, dns).unwrap();
                let mut buf = [0u8; 512];
                let n = s.recv(&mut buf).expect("the allowed client is answered");
                assert_eq!(u16_at(&buf, 0), i);
                assert_eq!(
                    (rcode(&buf[..n]), u16_at(&buf, 6)),
                    (0, 1),
                    "allowed: {:?}",
                    &buf[..n]
                );
                answered += 1;
                i += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            answered
        })
    };

    // The attacker, in its own namespace: ANY for the intercepted and a forwarded name, a TXT
    // and an A for names only upstream knows, with and without big EDNS buffers, as fast as
    // it can.
    let queries: Vec<Vec<u8>> = (0..3000u16)
        .map(|i| {
            let (name, qtype) = match i % 5 {
                0 => ("registry.ollama.ai".to_string(), 255),
                1 => (format!("atk-{i}.fwd.test"), 255),
                2 => (format!("atk-{i}.fwd.test"), 16),
                3 => (format!("atk-{i}.example"), 1),
                _ => ("registry.ollama.ai".to_string(), 1),
            };
            let edns = [None, Some(4096), Some(65535)][i as usize % 3];
            dns_query(i, &wire_name(&name), qtype, edns)
        })
        .collect();
    let (replies, tcp_replies) = {
        let ns_name = ns.name.clone();
        let queries = queries.clone();
        let attacker_ip = attacker_ip.clone();
        std::thread::spawn(move || {
            let f = std::fs::File::open(format!("/run/netns/{ns_name}")).unwrap();
            nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let s = UdpSocket::bind(format!("{attacker_ip}:0")).unwrap();
            let done = Arc::new(AtomicBool::new(false));
            let receiver = {
                let (r, done) = (s.try_clone().unwrap(), done.clone());
                r.set_read_timeout(Some(Duration::from_millis(500)))
                    .unwrap();
                std::thread::spawn(move || {
                    let mut replies = Vec::new();
                    let mut buf = [0u8; 65536];
                    loop {
                        match r.recv(&mut buf) {
                            Ok(n) => replies.push(buf[..n].to_vec()),
                            Err(_) if done.load(Ordering::Relaxed) => return replies,
                            Err(_) => {}
                        }
                    }
                })
            };
            for (i, q) in queries.iter().enumerate() {
                s.send_to(q, dns).unwrap();
                // Bursts of 100, as fast as the socket takes them.
                if i % 100 == 99 {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            done.store(true, Ordering::Relaxed);
            let replies = receiver.join().unwrap();
            // Over TCP, too (one connection, several queries).
            let mut tcp_replies = Vec::new();
            let mut t = TcpStream::connect(dns).unwrap();
            t.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            for q in queries.iter().take(10) {
                let mut framed = (q.len() as u16).to_be_bytes().to_vec();
                framed.extend_from_slice(q);
                t.write_all(&framed).unwrap();
                let mut len = [0u8; 2];
                t.read_exact(&mut len).unwrap();
                let mut r = vec![0u8; u16::from_be_bytes(len) as usize];
                t.read_exact(&mut r).unwrap();
                tcp_replies.push(r);
            }
            (replies, tcp_replies)
        })
        .join()
        .unwrap()
    };
    flooding.store(false, Ordering::Relaxed);
    let answered = allowed.join().unwrap();

    let sent_bytes: usize = queries.iter().map(Vec::len).sum();
    let got_bytes: usize = replies.iter().map(Vec::len).sum();
    assert!(
        !replies.is_empty(),
        "the attacker is told REFUSED (until rate-limited)"
    );
    assert!(replies.len() <= queries.len());
    for r in replies.iter().chain(&tcp_replies) {
        let id = u16_at(r, 0) as usize;
        assert_eq!(rcode(r), 5, "REFUSED, got {r:?}");
        assert_eq!(
            (u16_at(r, 6), u16_at(r, 8), u16_at(r, 10)),
            (0, 0, 0),
            "no answer, authority or additional records: {r:?}"
        );
        assert!(
            r.len() <= queries[id].len(),
            "reply of {} bytes to a query of {}",
            r.len(),
            queries[id].len()
        );
    }
    assert!(
        got_bytes <= sent_bytes,
        "amplification {got_bytes}/{sent_bytes}"
    );
    assert_eq!(
        resolver.count(|n| n.starts_with("atk-")),
        0,
        "a refused query was forwarded"
    );
    assert!(answered >= 20);
    assert_eq!(resolver.count(|n| n.starts_with("ok-")), answered);
    let stats = d.ctl_json(&["stats"]);
    let (refused, limited) = (
        stats["dns"]["refused"].as_u64().unwrap(),
        stats["dns"]["rate_limited"].as_u64().unwrap(),
    );
    assert!(refused as usize >= replies.len(), "{stats}");
    assert!(refused + limited >= queries.len() as u64, "{stats}");
    eprintln!(
        "attacker: {} queries ({sent_bytes} B) → {} REFUSED ({got_bytes} B), {limited} rate-limited; allowed client: {answered} answered",
        queries.len(),
        replies.len()
    );
}

// ---------------------------------------------------------------------------------------------
// 5. Control socket

fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

fn read_reply(s: &mut std::os::unix::net::UnixStream) -> serde_json::Value {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).unwrap();
    serde_json::from_slice(&body).unwrap()
}

#[test]
fn control_socket_huge_and_half_frames() {
    use std::os::unix::net::UnixStream;
    let d = Daemon::start();
    let before = rss_kib(d.pid());
    // A 4 GiB length prefix and nothing else: refused on the prefix alone.
    for prefix in [u32::MAX, 0x8000_0000, (1 << 20) + 1] {
        let mut s = UnixStream::connect(d.control_path()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(&prefix.to_be_bytes()).unwrap();
        let r = read_reply(&mut s);
        assert_eq!(r["kind"], "frame_too_large", "{r}");
    }
    assert!(
        rss_kib(d.pid()) < before + 16 * 1024,
        "RSS {before} KiB → {} KiB",
        rss_kib(d.pid())
    );
    // Half a frame, then a hang-up; and 50 half frames left hanging.
    for _ in 0..20 {
        let mut s = UnixStream::connect(d.control_path()).unwrap();
        s.write_all(&100u32.to_be_bytes()).unwrap();
        s.write_all(br#"{"request":"#).unwrap();
    }
    let hanging: Vec<UnixStream> = (0..50)
        .map(|_| {
            let mut s = UnixStream::connect(d.control_path()).unwrap();
            s.write_all(&1000u32.to_be_bytes()).unwrap();
            s.write_all(b"{\"request\":\"sta").unwrap();
            s
        })
        .collect();
    let t = Instant::now();
    assert!(d.ctl(&["status"]).status.success());
    assert!(d.ctl(&["stats"]).status.success());
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    // A whole frame on a fresh connection is still answered normally.
    let mut s = UnixStream::connect(d.control_path()).unwrap();
    let body = br#"{"request":"status"}"#;
    s.write_all(&(body.len() as u32).to_be_bytes()).unwrap();
    s.write_all(body).unwrap();
    assert_eq!(read_reply(&mut s)["response"], "status");
    drop(hanging);
}

#[test]
fn unauthorised_uid_cannot_prune() {
    if !crate::util::require_program("setpriv") {
        return;
    }
    let tmp = prepared_dir(|c| {
        write_model(c, "qwen2.5:1.5b", &[1_000]);
    });
    let d = Daemon::builder().dir(tmp).start();
    use std::os::unix::fs::PermissionsExt;
    // Open the socket's mode so that the daemon's own credential check is what refuses.
    std::fs::set_permissions(d.control_path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::set_permissions(&d.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let manifest = d
        .cache_dir
        .join("manifests/registry.ollama.ai/library/qwen2.5/1.5b");
    for args in [
        &["prune", "--model", "qwen2.5:1.5b", "--include-local"][..],
        &["prune", "--older-than", "0s", "--include-local"][..],
        &["reload"][..],
    ] {
        let out = std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(crate::util::lancachectl_bin())
            .args(args)
            .env("LANCACHE_SOCKET", d.control_path())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains("may not control"), "{err}");
        assert!(manifest.exists(), "{args:?} removed the model");
    }
    assert_eq!(d.ctl_json(&["stats"])["control"]["refused"], 3);
}

// ---------------------------------------------------------------------------------------------
// 6. Symlinks planted in the cache

/// Everything under `dir`, with contents, to prove a tree untouched.
fn tree(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                stack.push(p);
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap_or_default()));
            }
        }
    }
    out.sort();
    out
}

/// What differs between two [`tree`]s, by path.
fn changes(before: &[(PathBuf, Vec<u8>)], after: &[(PathBuf, Vec<u8>)]) -> Vec<String> {
    let (b, a): (HashMap<_, _>, HashMap<_, _>) = (
        before.iter().cloned().collect(),
        after.iter().cloned().collect(),
    );
    let mut out: Vec<String> = b
        .iter()
        .filter(|(p, c)| a.get(*p) != Some(*c))
        .map(|(p, _)| format!("changed or removed: {}", p.display()))
        .chain(
            a.keys()
                .filter(|p| !b.contains_key(*p))
                .map(|p| format!("added: {}", p.display())),
        )
        .collect();
    out.sort();
    out
}

fn symlink(target: &Path, link: &Path) {
    std::fs::create_dir_all(link.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(target, link).unwrap();
}

/// A cache with links out of it at every level, and the tree they point into.
struct Planted {
    tmp: tempfile::TempDir,
    outside: PathBuf,
    evil: TestModel,
    leaky: TestModel,
}

/// Replaces the running daemon's `.lancached/partial` with a link out of the cache (a daemon
/// refuses to start with one: `daemon_refuses_a_symlinked_state_dir`).
fn link_partial(d: &Daemon, outside: &Path) {
    let partial = d.cache_dir.join(".lancached/partial");
    std::fs::remove_dir_all(&partial).unwrap();
    symlink(&outside.join("partial"), &partial);
}

fn plant() -> Planted {
    let mut evil = None;
    let mut leaky = None;
    let tmp = prepared_dir(|c| {
        write_model(c, "qwen2.5:1.5b", &[1_000]);
        let outside = c.parent().unwrap().join("outside");
        evil = Some(write_model(&outside, "evil:latest", &[10]));
        let lib = outside.join("manifests/registry.ollama.ai/library");
        let reg = c.join("manifests/registry.ollama.ai");
        // A namespace directory, a host directory and a model directory leading out.
        symlink(&lib, &reg.join("linked"));
        symlink(
            &outside.join("manifests/registry.ollama.ai"),
            &c.join("manifests/hf.co"),
        );
        std::fs::create_dir_all(outside.join("secretdir")).unwrap();
        std::fs::write(outside.join("secretdir/latest"), CANARY).unwrap();
        symlink(&outside.join("secretdir"), &reg.join("library/canary"));
        // A manifest file leading out.
        symlink(
            &outside.join("secretdir/latest"),
            &reg.join("library/filelink/latest"),
        );
        // A blob that is a link to a file outside with exactly the right bytes.
        let m = write_model(c, "leaky:1b", &[11]);
        let blob = TestModel::blob_path(c, &m.blobs[1].0);
        std::fs::rename(&blob, outside.join("leaky-blob")).unwrap();
        symlink(&outside.join("leaky-blob"), &blob);
        leaky = Some(m);
        // What a link from the fills-in-progress directory would lead to: an old "fill".
        std::fs::create_dir_all(outside.join("partial")).unwrap();
        let stale = outside.join(format!("partial/sha256-{}.data", "1".repeat(64)));
        std::fs::write(&stale, CANARY).unwrap();
        let old = std::time::SystemTime::now() - Duration::from_secs(3 * 86400);
        std::fs::File::options()
            .write(true)
            .open(&stale)
            .unwrap()
            .set_modified(old)
            .unwrap();
    });
    let outside = tmp.path().join("outside");
    Planted {
        tmp,
        outside,
        evil: evil.unwrap(),
        leaky: leaky.unwrap(),
    }
}

#[test]
fn planted_symlinks_are_not_followed_out_of_the_cache() {
    let up = FakeUpstream::start();
    let fresh = up.add_model("linked/fresh", "latest", &[&blob_bytes(100, 3)[..]]);
    let p = plant();
    let outside = p.outside.clone();
    let before = tree(&outside);
    let d = Daemon::builder()
        .dir(p.tmp)
        .config(&registry_config(&up, ""))
        .start();
    link_partial(&d, &outside);
    let addr = d.http.unwrap();
    let data = addr.to_string();
    let leaks = |r: &Raw| r.body == p.evil.manifest || r.text().contains(CANARY);

    // Registry routes: a manifest reached through a link is neither served as cached...
    for (host, path) in [
        (REG, "/v2/linked/evil/manifests/latest"),
        ("hf.co", "/v2/library/evil/manifests/latest"),
        (REG, "/v2/library/canary/manifests/latest"),
        (REG, "/v2/library/filelink/manifests/latest"),
        (data.as_str(), "/v2/linked/evil/manifests/latest"),
    ] {
        let r = get(addr, host, path).unwrap();
        assert!(!leaks(&r), "{host}{path}: served from outside the cache");
        assert_eq!(r.status, 404, "{host}{path}: {}", r.text());
    }
    // ... nor written through: upstream's manifest is served, and lands nowhere outside.
    let r = get(addr, REG, "/v2/linked/fresh/manifests/latest").unwrap();
    assert_eq!((r.status, &r.body), (200, &fresh));
    // The data plane: a blob that is a link is not a cached blob.
    let blob = format!("/blobs/{}", p.leaky.blobs[1].0);
    let r = get(addr, &data, &blob).unwrap();
    assert_ne!(r.status, 200, "a symlinked blob was served");
    let r = get(
        addr,
        &data,
        &format!("/v2/library/leaky/blobs/{}", p.leaky.blobs[1].0),
    )
    .unwrap();
    assert_ne!(r.status, 200, "a symlinked blob was served via /v2/");
    // Distribution endpoints and listings.
    for path in [
        "/manifests/linked/evil:latest",
        "/models/linked/evil:latest",
        "/manifests/hf.co/library/evil:latest",
        "/models/hf.co/library/evil:latest",
        "/manifests/canary:latest",
        "/models/filelink:latest",
    ] {
        let r = get(addr, &data, path).unwrap();
        assert!(!leaks(&r), "{path}");
        assert_eq!(r.status, 404, "{path}");
    }
    let r = get(addr, &data, "/models/leaky:1b").unwrap();
    assert_eq!(r.status, 409, "a model whose blob is a link is incomplete");
    let list = get(addr, &data, "/api/models").unwrap().text();
    assert!(list.contains("qwen2.5"), "{list}");
    for name in ["evil", "canary", "filelink", "hf.co", "fresh\""] {
        assert!(!list.contains(name), "/api/models lists {name}: {list}");
    }
    let models = d.ctl_json(&["models"]).to_string();
    assert!(models.contains("qwen2.5"), "{models}");
    for name in ["evil", "canary", "filelink", "hf.co"] {
        assert!(
            !models.contains(name),
            "lancachectl models lists {name}: {models}"
        );
    }
    // Prune, by name and by age, everything (local models included, stale fills included).
    let out = d.ctl(&["prune", "--model", "linked/evil:latest", "--include-local"]);
    assert!(!out.status.success(), "pruned a model outside the cache");
    let r = d.ctl_json(&["prune", "--max-size", "0", "--include-local"]);
    assert!(r.to_string().contains("qwen2.5"), "{r}");
    assert_eq!(r["partial_fills_removed"], 0, "{r}");
    assert!(!d
        .cache_dir
        .join("manifests/registry.ollama.ai/library/qwen2.5/1.5b")
        .exists());
    // The link to the outside blob went with its model; the file it pointed to did not.
    assert!(std::fs::symlink_metadata(
        d.cache_dir
            .join("blobs")
            .join(p.leaky.blobs[1].0.file_name())
    )
    .is_err());
    let changed = changes(&before, &tree(&outside));
    assert!(changed.is_empty(), "outside the cache: {changed:#?}");
}

#[test]
fn eviction_does_not_follow_symlinks() {
    let p = plant();
    let outside = p.outside.clone();
    let before = tree(&outside);
    let d = Daemon::builder()
        .dir(p.tmp)
        .config("[upstream]\nresolvers = []\n")
        .start();
    link_partial(&d, &outside);
    // Lower the limit under everything: the reload runs an eviction pass at once.
    d.write_config("[cache]\nmax_size = \"1KiB\"\nevict_local = true\n");
    assert_eq!(d.ctl_json(&["reload"])["response"], "reloaded");
    let qwen = d
        .cache_dir
        .join("manifests/registry.ollama.ai/library/qwen2.5/1.5b");
    let t = Instant::now();
    while qwen.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "eviction did not run"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Give the same pass time to finish with the rest.
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let changed = changes(&before, &tree(&outside));
    assert!(
        changed.is_empty(),
        "eviction, outside the cache: {changed:#?}"
    );
}

#[test]
fn daemon_refuses_a_symlinked_state_dir() {
    for link in [".lancached", ".lancached/partial"] {
        let tmp = prepared_dir(|c| {
            let outside = c.parent().unwrap().join("outside");
            std::fs::create_dir_all(outside.join("partial")).unwrap();
            symlink(&outside, &c.join(link));
        });
        let outside = tmp.path().join("outside");
        let mut d = Daemon::builder().dir(tmp).spawn();
        let status = d
            .wait_exit(Duration::from_secs(10))
            .expect("lancached exits");
        assert!(!status.success());
        let want = format!("{link} is a symlink");
        let t = Instant::now();
        while !d.stderr().contains(&want) && t.elapsed() < Duration::from_secs(3) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let err = d.stderr();
        assert!(err.contains(&want), "{link}: {err}");
        // Nothing was created through the link.
        let inside = tree(&outside);
        assert!(inside.is_empty(), "{inside:?}");
    }
}
