//! hf.co out of the box (issue 13, item 5):
//!
//! - With the built-in registries, DNS answers `hf.co` with the cache and, with the Hub
//!   front off (`[huggingface] enabled = false`), forwards `huggingface.co` (permitted by
//!   the CA, not intercepted).
//! - On `Host: hf.co`, every path but the registry API (`/v2/...`) and `/blobs/sha256:...` is
//!   relayed upstream unchanged: method, path and query byte for byte, end-to-end headers
//!   (`Authorization`, `Cookie`, `User-Agent`) kept, hop-by-hop ones dropped, the loop guard
//!   added. Request bodies (sized, chunked, and curl's `Expect: 100-continue`) and answers
//!   arrive intact; a redirect comes back as it is (not followed); `Set-Cookie` comes back.
//!   The answer streams (its first bytes arrive before upstream has sent the rest). Upstream
//!   down is a 502; a base URL that leads back to the cache is a 508 (the loop guard). The
//!   cache's own endpoints on its own name and other registry hosts are unaffected.
//! - A fill on hf.co follows hf.co → "huggingface.co" → CDN (307 then 302, three loopback
//!   hosts) upstream-side, and costs upstream exactly the model's bytes; with the hosts named
//!   `hf.co` and `huggingface.co`, the names are resolved through `[upstream] resolvers`.
//! - Upper-case names (`bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M`) pull through a direct
//!   registry request with the case kept upstream and on disk, and are listed by `/api/models`
//!   and `lancachectl models`; the `[upstream.registries]` key here has a trailing dot
//!   (`"hf.co."`), which matches.
//! - A CA made before hf.co and huggingface.co were in the constraints is reported at start (a
//!   WARN naming them and `lancachectl ca --rotate`, and `stats`' `tls.missing_constraints`);
//!   `lancachectl ca --rotate` makes a CA that permits them, and HTTPS on hf.co then verifies;
//!   the relay works over HTTPS with HTTP/2 too (the authority instead of `Host`).
//! - With the real ollama 0.5.4 (when installed and network namespaces are available),
//!   `ollama pull --insecure hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M` through the
//!   cache succeeds, `ollama list` shows it, and the client and the cache both keep the case on
//!   disk (`manifests/hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF/Q4_K_M`). Over HTTPS (no
//!   `--insecure`, the CA in `SSL_CERT_FILE`), a CA from an earlier release makes the real
//!   client refuse hf.co's certificate; after `lancachectl ca --rotate` the pull succeeds.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::util::daemon::Activate;
use crate::util::echo::{Echo, SLOW_PAUSE};
use crate::util::hop::Hop;
use crate::util::upstream::{blob_bytes, digest, raw_get, raw_request, FakeUpstream};
use crate::util::{require_program, Daemon};

const REPO: &str = "bartowski/Llama-3.2-1B-Instruct-GGUF";
const QUANT: &str = "Q4_K_M";

/// A daemon whose registries are `registry.ollama.ai` and `hf.co` (written as `hf_key`).
fn daemon(ollama: &str, hf_key: &str, hf: &str, extra: &str) -> Daemon {
    Daemon::builder()
        .config(&format!(
            "[upstream]\nresolvers = []\n[upstream.registries]\n\"registry.ollama.ai\" = \"{ollama}\"\n\"{hf_key}\" = \"{hf}\"\n[cache]\nslice_size = \"1MiB\"\n{extra}"
        ))
        .start()
}

/// One HTTP/1.1 exchange from raw request bytes; the answer is read to the close.
fn exchange(addr: SocketAddr, raw: &[u8]) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    c.write_all(raw).unwrap();
    let mut all = Vec::new();
    c.read_to_end(&mut all).unwrap();
    let split = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete head");
    let head = String::from_utf8_lossy(&all[..split]).to_string();
    let mut lines = head.lines();
    let status = lines.next().unwrap().split_whitespace().nth(1).unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status.parse().unwrap(), headers, all[split + 4..].to_vec())
}

fn header<'a>(h: &'a [(String, String)], name: &str) -> Option<&'a str> {
    h.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

#[test]
fn hf_co_is_intercepted_by_default_and_huggingface_co_is_not() {
    if !require_program("dig") {
        return;
    }
    // No `[upstream.registries]`: the built-in ones. The Hub front (which intercepts
    // huggingface.co, tests/hub_transparent.rs) is off here.
    let d = Daemon::builder()
        .config("[upstream]\nresolvers = []\n[dns]\nadvertise = [\"192.0.2.10\"]\n[huggingface]\nenabled = false\n")
        .start();
    let dns = d.dns.unwrap();
    let dig = |name: &str| {
        let out = std::process::Command::new("dig")
            .arg(format!("@{}", dns.ip()))
            .args([
                "-p",
                &dns.port().to_string(),
                "+tries=1",
                "+time=3",
                "+short",
                name,
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(dig("hf.co"), "192.0.2.10");
    assert_eq!(dig("registry.ollama.ai"), "192.0.2.10");
    assert_ne!(dig("huggingface.co"), "192.0.2.10", "not intercepted yet");
}

#[test]
fn relay_passes_hf_co_paths_upstream_unchanged() {
    let up = FakeUpstream::start();
    let echo = Echo::start();
    let d = daemon(&up.url(), "hf.co", &echo.url(), "");
    let http = d.http.unwrap();

    // A short link: the path, query and end-to-end headers go up as sent; the redirect (a link
    // for the browser, to another host) comes back as it is.
    let (status, h, _) = exchange(
        http,
        b"GET /redirect/bartowski/Llama-3.2-1B-Instruct-GGUF?show=files&x=%2F HTTP/1.1\r\n\
          Host: hf.co\r\nUser-Agent: Mozilla/5.0 test\r\nAuthorization: Bearer hf_secret\r\n\
          Cookie: token=abc\r\nAccept-Encoding: gzip, br\r\nConnection: close, X-Per-Hop\r\n\
          X-Per-Hop: 1\r\nKeep-Alive: timeout=5\r\nProxy-Authorization: Basic eA==\r\n\r\n",
    );
    assert_eq!(status, 307);
    assert_eq!(
        header(&h, "location"),
        Some("https://huggingface.co/bartowski/Llama-3.2-1B-Instruct-GGUF")
    );
    let seen = echo.last();
    assert_eq!(seen.method, "GET");
    assert_eq!(
        seen.target,
        "/redirect/bartowski/Llama-3.2-1B-Instruct-GGUF?show=files&x=%2F"
    );
    assert_eq!(seen.header("user-agent"), Some("Mozilla/5.0 test"));
    assert_eq!(seen.header("authorization"), Some("Bearer hf_secret"));
    assert_eq!(seen.header("cookie"), Some("token=abc"));
    assert_eq!(seen.header("accept-encoding"), Some("gzip, br"));
    assert_eq!(seen.header("host"), Some(echo.addr.to_string().as_str()));
    // The hop list: this cache's instance id (16 hex digits), the request came from no cache.
    let hop = seen.header("x-lancached-hop").unwrap_or_default();
    assert!(
        hop.len() == 16 && hop.bytes().all(|b| b.is_ascii_hexdigit()),
        "{hop:?}"
    );
    for gone in ["x-per-hop", "keep-alive", "proxy-authorization"] {
        assert_eq!(seen.header(gone), None, "{gone} is hop-by-hop");
    }

    // A sized upload and its answer (with the cookie upstream sets).
    let payload = blob_bytes(3 << 20, 11);
    let mut req = format!(
        "POST /api/repos/create?x=1 HTTP/1.1\r\nHost: hf.co\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        payload.len()
    )
    .into_bytes();
    req.extend_from_slice(&payload);
    let (status, h, body) = exchange(http, &req);
    assert_eq!(status, 200);
    assert_eq!(digest(&body), digest(&payload), "echoed intact");
    assert_eq!(header(&h, "set-cookie"), Some("session=abc; Secure"));
    assert_eq!(header(&h, "x-echo-method"), Some("POST"));
    assert_eq!(
        header(&h, "keep-alive"),
        None,
        "hop-by-hop on the way back too"
    );
    assert_eq!(digest(&echo.last().body), digest(&payload));

    // curl sends `Expect: 100-continue` for a large upload: answered here, not passed on.
    if require_program("curl") {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), &payload).unwrap();
        let out = std::process::Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "20",
                "-H",
                "Host: hf.co",
                "--data-binary",
            ])
            .arg(format!("@{}", file.path().display()))
            .arg(format!("http://{http}/api/upload"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(digest(&out.stdout), digest(&payload));
        let seen = echo.last();
        assert_eq!(seen.header("expect"), None);
        assert_eq!(digest(&seen.body), digest(&payload));
    }

    // A chunked upload (git push, uploads of unknown length), sent in pieces.
    let mut c = TcpStream::connect(http).unwrap();
    c.write_all(b"PUT /upload/x HTTP/1.1\r\nHost: hf.co\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
        .unwrap();
    let pieces: Vec<Vec<u8>> = (0..4).map(|i| blob_bytes(300_000, 20 + i)).collect();
    for p in &pieces {
        c.write_all(format!("{:x}\r\n", p.len()).as_bytes())
            .unwrap();
        c.write_all(p).unwrap();
        c.write_all(b"\r\n").unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
    c.write_all(b"0\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    c.read_to_end(&mut answer).unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{:?}", &answer[..40]);
    let seen = echo.last();
    assert_eq!(
        (seen.method.as_str(), seen.target.as_str()),
        ("PUT", "/upload/x")
    );
    assert_eq!(seen.body, pieces.concat());

    // A large download.
    let big = raw_get(http, "hf.co", "/big/8388608", &[]);
    assert_eq!(big.status, 200);
    assert!(big.complete);
    assert_eq!(digest(&big.body), digest(&blob_bytes(8 << 20, 7)));

    // HEAD is relayed as HEAD.
    let head = raw_request(http, "HEAD", "hf.co", "/bartowski/x", &[]);
    assert_eq!(head.status, 200);
    assert_eq!(echo.last().method, "HEAD");

    // The cache's own paths on hf.co are Hugging Face's, but not on the cache's own name.
    let n = echo.seen().len();
    let health = raw_get(http, "hf.co", "/health", &[]);
    assert_eq!(echo.seen().len(), n + 1, "hf.co/health is relayed");
    assert_eq!(echo.last().target, "/health");
    assert!(!String::from_utf8_lossy(&health.body).contains("subsystems"));
    let own = raw_get(http, &http.to_string(), "/health", &[]);
    assert!(String::from_utf8_lossy(&own.body).contains("subsystems"));
    let on_ollama = raw_get(http, "registry.ollama.ai", "/some/page", &[]);
    assert_eq!(on_ollama.status, 404, "registry.ollama.ai is not relayed");
    // The registry API on hf.co stays with the cache.
    let v2 = raw_get(http, "hf.co", "/v2/", &[]);
    assert_eq!(v2.status, 200);
    assert_eq!(echo.seen().len(), n + 1, "nothing more relayed");

    // A base URL that leads back to the cache (a DNS loop) is refused, not relayed forever.
    d.write_config(&format!(
        "[upstream.registries]\n\"hf.co\" = \"http://{http}\"\n"
    ));
    assert_eq!(d.ctl_json(&["reload"])["response"], "reloaded");
    let looped = raw_get(http, "hf.co", "/bartowski", &[]);
    assert_eq!(
        looped.status,
        508,
        "{}",
        String::from_utf8_lossy(&looped.body)
    );
    d.write_config(&format!(
        "[upstream.registries]\n\"hf.co\" = \"{}\"\n",
        echo.url()
    ));
    assert_eq!(d.ctl_json(&["reload"])["response"], "reloaded");

    // Upstream gone: a 502 that says why.
    let addr = echo.addr;
    drop(echo);
    let down = exchange(
        http,
        b"GET /bartowski HTTP/1.1\r\nHost: hf.co\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(down.0, 502, "{}", String::from_utf8_lossy(&down.2));
    assert!(String::from_utf8_lossy(&down.2).contains(&addr.to_string()));
}

#[test]
fn relay_streams_the_answer_as_it_arrives() {
    let up = FakeUpstream::start();
    let echo = Echo::start();
    let d = daemon(&up.url(), "hf.co", &echo.url(), "");
    let mut c = TcpStream::connect(d.http.unwrap()).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let t = Instant::now();
    c.write_all(b"GET /slow HTTP/1.1\r\nHost: hf.co\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.ends_with(b"first-") {
        let n = c.read(&mut buf).unwrap();
        assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let first = t.elapsed();
    c.read_to_end(&mut got).unwrap();
    let all = t.elapsed();
    assert!(got.ends_with(b"first-second"));
    assert!(
        first < SLOW_PAUSE / 2,
        "the first bytes waited {first:?}: the relay buffered the answer"
    );
    assert!(all >= SLOW_PAUSE, "{all:?}");
}

/// Fetches a blob through the registry API on `host`, the way the client would: a 200 is the
/// blob; a redirect (today's answer) is followed once, to the cache itself.
fn registry_blob(d: &Daemon, host: &str, repo: &str, digest: &str) -> Vec<u8> {
    let http = d.http.unwrap();
    let r = raw_get(http, host, &format!("/v2/{repo}/blobs/{digest}"), &[]);
    match r.status {
        200 => r.body,
        307 => {
            let loc = &r.headers["location"];
            let path = &loc[loc.find("/blobs/").expect("a data-plane location")..];
            let r = raw_get(http, &http.to_string(), path, &[]);
            assert_eq!(r.status, 200);
            r.body
        }
        s => panic!("blob {digest} on {host}: {s}"),
    }
}

/// Layer digests of a manifest (config first).
fn blobs_of(manifest: &[u8]) -> Vec<String> {
    let m: serde_json::Value = serde_json::from_slice(manifest).unwrap();
    std::iter::once(&m["config"])
        .chain(m["layers"].as_array().unwrap())
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn fills_follow_hf_co_to_huggingface_co_to_the_cdn() {
    // hf.co on 127.0.0.1 (the fake registry), "huggingface.co" on 127.0.0.3 (the hop), the CDN
    // on 127.0.0.2 (the fake's).
    walk_the_chain("127.0.0.3", |_, _| None);
}

#[test]
fn the_chain_s_names_resolve_through_upstream_resolvers() {
    // The same chain named `hf.co` and `huggingface.co`, which only the configured resolver
    // (a responder of the test's own, answering 127.0.0.1) knows here: the system resolver is
    // never asked, so the names cannot reach the real hosts.
    let (dns, queries) = crate::util::tls_upstream::dns_responder();
    walk_the_chain("127.0.0.1", move |up, hop| {
        Some((
            format!("resolvers = [\"{dns}\"]"),
            format!("http://hf.co:{}", up.port()),
            format!("http://huggingface.co:{}", hop.port()),
        ))
    });
    assert!(queries.load(std::sync::atomic::Ordering::SeqCst) >= 2);
}

/// Pulls a model from a fake hf.co whose blob redirects go through a middle hop on `hop_ip`
/// (302, as huggingface.co answers) to the CDN. `named` may give the `[upstream]` resolvers line,
/// the registry's base URL and the hop's base URL, from the fake's and the hop's addresses.
fn walk_the_chain(
    hop_ip: &str,
    named: impl FnOnce(SocketAddr, SocketAddr) -> Option<(String, String, String)>,
) {
    let up = std::sync::Arc::new(FakeUpstream::start());
    let cdn = up.clone();
    let hop = Hop::start(hop_ip, 302, move |target| {
        let (path, query) = target.split_once('?')?;
        query.starts_with("__sign=").then_some(())?;
        let digest = path.rsplit('/').next()?;
        Some(cdn.cdn_url(digest))
    });
    let (resolvers, base, via) =
        named(up.registry, hop.addr).unwrap_or(("resolvers = []".into(), up.url(), hop.url()));
    up.redirect_blobs_via(&via);
    let layers = [blob_bytes(3 << 20, 1), blob_bytes(700_000, 2)];
    let manifest = up.add_model(REPO, QUANT, &[&layers[0], &layers[1]]);
    let d = Daemon::builder()
        .config(&format!(
            "[upstream]\n{resolvers}\n[upstream.registries]\n\"registry.ollama.ai\" = \"http://127.0.0.1:9\"\n\"hf.co\" = \"{base}\"\n[cache]\nslice_size = \"1MiB\"\n"
        ))
        .start();
    let http = d.http.unwrap();

    let m = raw_get(http, "hf.co", &format!("/v2/{REPO}/manifests/{QUANT}"), &[]);
    assert_eq!(m.status, 200, "{}", String::from_utf8_lossy(&m.body));
    assert_eq!(m.body, manifest);
    for digest in blobs_of(&manifest) {
        let bytes = registry_blob(&d, "hf.co", REPO, &digest);
        assert_eq!(crate::util::upstream::digest(&bytes), digest);
    }
    assert!(hop.requests() > 0, "the middle hop was walked");
    assert_eq!(
        up.cdn_bytes(),
        up.blob_total(),
        "upstream sent each blob once"
    );
}

#[test]
fn upper_case_names_pull_and_list() {
    let up = FakeUpstream::start();
    let layer = blob_bytes(1 << 20, 5);
    let manifest = up.add_model(REPO, QUANT, &[&layer]);
    // The key is written with a trailing dot: it must still match `Host: hf.co`.
    let d = daemon("http://127.0.0.1:9", "hf.co.", &up.url(), "");
    let http = d.http.unwrap();
    // The fake's manifests are keyed case-sensitively: a 200 means the case reached upstream.
    let m = raw_get(http, "hf.co", &format!("/v2/{REPO}/manifests/{QUANT}"), &[]);
    assert_eq!(m.status, 200, "{}", String::from_utf8_lossy(&m.body));
    assert_eq!(m.body, manifest);
    for digest in blobs_of(&manifest) {
        assert_eq!(
            digest_of(&registry_blob(&d, "hf.co", REPO, &digest)),
            digest
        );
    }
    let on_disk = d
        .cache_dir
        .join("manifests/hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF/Q4_K_M");
    assert_eq!(std::fs::read(&on_disk).unwrap(), manifest);
    // Served from the cache now, upstream untouched.
    let asked = up.manifest_requests();
    let again = raw_get(http, "hf.co", &format!("/v2/{REPO}/manifests/{QUANT}"), &[]);
    assert_eq!(again.body, manifest);
    assert_eq!(up.manifest_requests(), asked);

    let name = format!("hf.co/{REPO}:{QUANT}");
    // The last blob is published (renamed into `blobs/`) just after its last byte is served.
    let t = Instant::now();
    loop {
        let (_, _, list) = crate::util::models::raw_get(http, "/api/models", "");
        let list: serde_json::Value = serde_json::from_slice(&list).unwrap();
        let entry = list
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["short_name"] == name.as_str())
            .cloned()
            .unwrap_or_else(|| panic!("{name} missing from {list}"));
        if entry["complete"] == true {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "never complete: {entry}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The distribution side finds it by the same name.
    let by_name = raw_get(http, &http.to_string(), &format!("/manifests/{name}"), &[]);
    assert_eq!(by_name.status, 200);
    assert_eq!(by_name.body, manifest);
    let models = d.ctl_json(&["models"]);
    assert!(
        models["models"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["short_name"] == name.as_str()),
        "{models}"
    );
    // The table fits 80 columns, so a long name is cut, but never its case.
    let table = d.ctl(&["models"]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("hf.co/bartowski/Llama-3.2-1B-Instr"),
        "{table}"
    );
}

fn digest_of(bytes: &[u8]) -> String {
    digest(bytes)
}

#[test]
fn old_ca_is_reported_and_rotation_fixes_it() {
    if !require_program("curl") {
        return;
    }
    use lancached::tls::ca::Ca;
    use lancached::tls::names::NameSet;
    // A CA as an earlier release made it: constrained to registry.ollama.ai only.
    let tmp = tempfile::tempdir().unwrap();
    let old = NameSet {
        dns: ["registry.ollama.ai".to_string()].into(),
        ..Default::default()
    };
    let old_ca = Ca::generate(&tmp.path().join("ca"), &old, true).unwrap();
    let up = FakeUpstream::start();
    let echo = Echo::start();
    let d = Daemon::builder()
        .dir(tmp)
        .activate(Activate {
            https: true,
            ..Default::default()
        })
        .config(&format!(
            "[upstream]\nresolvers = []\n[upstream.registries]\n\"registry.ollama.ai\" = \"{}\"\n\"hf.co\" = \"{}\"\n",
            up.url(),
            echo.url()
        ))
        .start();
    let stderr = d.stderr();
    assert!(
        stderr.contains("WARN")
            && stderr.contains("hf.co, huggingface.co")
            && stderr.contains("lancachectl ca --rotate"),
        "{stderr}"
    );
    let tls = &d.ctl_json(&["stats"])["tls"];
    assert_eq!(tls["ca_fingerprint_sha256"], old_ca.fingerprint.as_str());
    assert_eq!(
        tls["missing_constraints"],
        serde_json::json!(["hf.co", "huggingface.co"])
    );
    // huggingface.co too: the Hub front (on by default) holds a leaf for it.
    assert_eq!(
        tls["uncovered"],
        serde_json::json!(["hf.co", "huggingface.co"])
    );
    let human = String::from_utf8_lossy(&d.ctl(&["stats"]).stdout).to_string();
    assert!(human.contains("ca --rotate"), "{human}");
    let port = d.https.unwrap().port();
    let curl_path = |name: &str, path: &str, extra: &[&str]| {
        std::process::Command::new("curl")
            .args(["-sS", "--max-time", "10", "--resolve"])
            .arg(format!("{name}:{port}:127.0.0.1"))
            .arg("--cacert")
            .arg(d.dir.join("ca/ca.crt"))
            .args(extra)
            .arg(format!("https://{name}:{port}{path}"))
            .output()
            .unwrap()
    };
    let curl = |name: &str| curl_path(name, "/v2/", &[]);
    assert_eq!(
        curl("hf.co").status.code(),
        Some(60),
        "refused before rotation"
    );

    d.ctl_json(&["ca", "--rotate"]);
    let tls = &d.ctl_json(&["stats"])["tls"];
    assert_eq!(tls["missing_constraints"], serde_json::json!([]));
    assert_eq!(tls["uncovered"], serde_json::json!([]));
    for name in ["hf.co", "registry.ollama.ai"] {
        let out = curl(name);
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Over HTTPS and HTTP/2 (no Host header, only the authority) the relay works the same.
    let out = curl_path(
        "hf.co",
        "/bartowski/Llama-3.2-1B-Instruct-GGUF?via=h2",
        &["--http2", "-H", "Authorization: Bearer hf_x"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen = echo.last();
    assert_eq!(seen.target, "/bartowski/Llama-3.2-1B-Instruct-GGUF?via=h2");
    assert_eq!(seen.header("authorization"), Some("Bearer hf_x"));
    assert_eq!(seen.header("te"), None);
    // The new CA permits what the Hugging Face issue will serve, leaves or not.
    let pem = std::fs::read_to_string(d.dir.join("ca/ca.crt")).unwrap();
    let fresh = NameSet {
        dns: ["registry.ollama.ai".to_string(), "hf.co".to_string()].into(),
        reserved: ["hf.co".to_string(), "huggingface.co".to_string()].into(),
        ..Default::default()
    };
    let leaves = lancached::tls::leaves::Leaves::issue(
        std::sync::Arc::new(Ca::load(&d.dir.join("ca")).unwrap()),
        fresh,
    )
    .unwrap();
    assert!(leaves.missing_constraints.is_empty(), "{pem}");
}

#[test]
fn real_ollama_pulls_an_upper_case_hf_co_name() {
    if !require_program("ip") || !crate::util::require_ollama() {
        return;
    }
    let ns = crate::util::netns::NetNs::new(&[("127.0.0.1", "hf.co")]);
    ns.set_resolver("127.0.0.1");
    std::thread::spawn(move || {
        ns.enter();
        let up = FakeUpstream::start();
        let manifest = up.add_model(REPO, QUANT, &[&blob_bytes(2 << 20, 9)]);
        let d = Daemon::builder()
            .activate(Activate::none())
            .config(&format!(
                "[upstream]\nresolvers = []\n[upstream.registries]\n\"registry.ollama.ai\" = \"http://127.0.0.1:9\"\n\"hf.co\" = \"{}\"\n[http]\nlisten = [\"127.0.0.1:80\"]\n",
                up.url()
            ))
            .start();
        let home = tempfile::tempdir().unwrap();
        let models = home.path().join("models");
        std::fs::create_dir_all(&models).unwrap();
        let o = crate::util::ollama::Ollama::serve(&models, 11434, Some(&ns), &[]);
        let name = format!("hf.co/{REPO}:{QUANT}");
        o.pull_ok(&["--insecure", &name], &d);
        let list = o.list();
        let id = &digest(&manifest)[7..19];
        assert!(list.iter().any(|(_, i)| i == id), "{list:?}");
        // What the real client did with the case, next to what the cache did.
        let written: Vec<String> = walk(&models.join("manifests"));
        let cached: Vec<String> = walk(&d.cache_dir.join("manifests"));
        // 0.5.4 keeps the case on disk; so does the cache (both are Ollama models directories).
        assert_eq!(written, ["hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF/Q4_K_M"]);
        assert_eq!(cached, written);
        assert!(list.iter().any(|(n, _)| *n == name), "{list:?}");
    })
    .join()
    .unwrap();
}

/// Files below `dir`, as relative paths.
fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().unwrap().is_dir() {
                todo.push(e.path());
            } else {
                let rel = e.path().strip_prefix(dir).unwrap().display().to_string();
                out.push(rel);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn real_ollama_over_https_needs_the_rotated_ca_for_hf_co() {
    if !require_program("ip") || !crate::util::require_ollama() {
        return;
    }
    use lancached::tls::ca::Ca;
    use lancached::tls::names::NameSet;
    let ns = crate::util::netns::NetNs::new(&[("127.0.0.1", "hf.co")]);
    ns.set_resolver("127.0.0.1");
    std::thread::spawn(move || {
        ns.enter();
        // The CA an earlier release made: registry.ollama.ai only.
        let tmp = tempfile::tempdir().unwrap();
        let old = NameSet {
            dns: ["registry.ollama.ai".to_string()].into(),
            ..Default::default()
        };
        Ca::generate(&tmp.path().join("ca"), &old, true).unwrap();
        let up = FakeUpstream::start();
        let manifest = up.add_model(REPO, QUANT, &[&blob_bytes(1 << 20, 13)]);
        let d = Daemon::builder()
            .dir(tmp)
            .activate(Activate::none())
            .config(&format!(
                "[upstream]\nresolvers = []\n[upstream.registries]\n\"registry.ollama.ai\" = \"http://127.0.0.1:9\"\n\"hf.co\" = \"{}\"\n[http]\nlisten = [\"127.0.0.1:80\"]\n[tls]\nlisten = [\"127.0.0.1:443\"]\n",
                up.url()
            ))
            .start();
        let work = tempfile::tempdir().unwrap();
        // Go reads its roots once per process: each CA gets a fresh `ollama serve`.
        let client = |name: &str| {
            let bundle = work.path().join(format!("{name}.pem"));
            let mut pem = std::fs::read("/etc/ssl/certs/ca-certificates.crt").unwrap_or_default();
            pem.extend(std::fs::read(d.dir.join("ca/ca.crt")).unwrap());
            std::fs::write(&bundle, pem).unwrap();
            let models = work.path().join(name);
            std::fs::create_dir_all(&models).unwrap();
            crate::util::ollama::Ollama::serve(
                &models,
                11434,
                Some(&ns),
                &[("SSL_CERT_FILE", bundle.to_str().unwrap())],
            )
        };
        let name = format!("hf.co/{REPO}:{QUANT}");
        let text = |o: &std::process::Output| {
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            )
        };

        // The old CA: Go refuses hf.co's leaf (outside the CA's name constraints).
        let before = client("before");
        let out = before.cli(&["pull", &name]);
        assert!(!out.status.success(), "{}", text(&out));
        assert!(
            text(&out).contains("not authorized to sign for this name")
                || text(&out).contains("not permitted"),
            "{}",
            text(&out)
        );
        drop(before);

        // After `lancachectl ca --rotate` (and the client trusting the new CA), it pulls.
        d.ctl_json(&["ca", "--rotate"]);
        let after = client("after");
        after.pull_ok(&[&name], &d);
        let id = &digest(&manifest)[7..19];
        assert!(after.list().iter().any(|(n, i)| *n == name && i == id));
    })
    .join()
    .unwrap();
}
