//! Issue 13's matrix: every current Ollama client pulls through the real daemon. Each
//! combination runs with the strict 0.34.2 test client (`util::strict_ollama`, no namespace: its
//! resolve map points the names at the daemon) and with the real 0.5.4 (in a network namespace
//! whose `/etc/hosts` points them at the daemon):
//!
//! - (a) HTTPS with the cache's CA (`ca.crt` / SSL_CERT_FILE), no `--insecure`; the strict
//!   client speaks h2 by ALPN as Go does, and HTTP/1.1 in one more case;
//! - (b) HTTP with `--insecure`, and the strict client waived no host or address check;
//! - (c) hf.co names (`hf.co/bartowski/llama-3.2-1b-instruct-gguf:q4_k_m`), both ways, and an
//!   upper-case one (`hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M`, strict client only);
//! - (d) the cache named explicitly: `127.0.0.1:PORT/library/…` with `--insecure`, and
//!   `cache.lan/library/…` (a name resolving to the cache, in `[dns] intercept` so its leaf and
//!   the CA's constraints cover it) both ways.
//!
//! In every combination: the models directory holds the upstream blobs and manifest byte for
//! byte at Ollama's paths, nothing is waived, and two clients pulling the cold model at once
//! cost upstream exactly 1.00× its bytes (`FakeUpstream` counts CDN bytes per blob). One of the
//! two strict clients uses ollama's part size (one part for these blobs), the other 16 parts.
//!
//! Ollama's own part size (clamp(size/16, 100 MB, 1000 MB)) on a 210 MB blob: 3 parts over h2.
//!
//! Tensor models: the x/transfer client (`util::transfer_client`) pulls a model of named
//! `image.tensor` and `image.json` layers over HTTPS and over insecure HTTP, two at once:
//! byte-exact, nothing waived, upstream 1.00×, LAN bytes ≤ 2.0× each blob (printed per blob).

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::strict_client::{assert_pulled, tensor_model};
use crate::util::daemon::Activate;
use crate::util::netns::NetNs;
use crate::util::ollama::Ollama;
use crate::util::standin::config_blob;
use crate::util::strict_http::Net;
use crate::util::strict_ollama::{PullReport, StrictOllama};
use crate::util::transfer_client::TransferClient;
use crate::util::upstream::{blob_bytes, digest, FakeUpstream};
use crate::util::Daemon;

const HF_REPO: &str = "bartowski/llama-3.2-1b-instruct-gguf";
const HF_TAG: &str = "q4_k_m";

/// The cache with both listeners, registry.ollama.ai (first: the registry for names it does
/// not know, such as its own) and hf.co both served by `up`, cache.lan intercepted.
fn daemon_for(up: &FakeUpstream) -> Daemon {
    Daemon::builder()
        .activate(Activate {
            https: true,
            ..Default::default()
        })
        .config(&config(up))
        .start()
}

fn config(up: &FakeUpstream) -> String {
    format!(
        "[upstream]\nresolvers = []\n[upstream.registries]\n\"registry.ollama.ai\" = \"{u}\"\n\
         \"hf.co\" = \"{u}\"\n[dns]\nintercept = [\"cache.lan\"]\n",
        u = up.url()
    )
}

fn ca_pem(d: &Daemon) -> Vec<u8> {
    std::fs::read(d.dir.join("ca/ca.crt")).unwrap()
}

#[derive(Clone, Copy, PartialEq)]
enum Proto {
    /// Verified TLS, h2 offered by ALPN (Go's default).
    Https,
    /// Verified TLS, HTTP/1.1 only.
    Https1,
    /// `--insecure`: plain HTTP.
    Insecure,
}

/// A model of one 2 MiB layer (seeded per case so every case fills cold) under `repo:tag`.
fn offer(up: &FakeUpstream, repo: &str, tag: &str, seed: u64) -> (Vec<u8>, Vec<Vec<u8>>) {
    let layer = blob_bytes(2 << 20, seed);
    let m = up.add_model(repo, tag, &[&layer]);
    // FakeUpstream's config blob is the stand-in's.
    (m, vec![layer, config_blob()])
}

/// Two strict clients pull `host`'s `repo:tag` at once through a fresh daemon; both must get
/// the upstream bytes with nothing waived, for one upstream copy.
fn strict_case(proto: Proto, host: &str, repo: &str, tag: &str, seed: u64) {
    let up = FakeUpstream::start();
    let (manifest, blobs) = offer(&up, repo, tag, seed);
    let d = daemon_for(&up);
    let (addr, port) = match proto {
        Proto::Insecure => (d.http.unwrap(), 80),
        _ => (d.https.unwrap(), 443),
    };
    let mut net = Net::new().with_roots(&ca_pem(&d));
    net.http2 = proto != Proto::Https1;
    let name = if host == "127.0.0.1" {
        format!("127.0.0.1:{}/{repo}:{tag}", addr.port())
    } else {
        net = net.resolve(&format!("{host}:{port}"), addr);
        format!("{host}/{repo}:{tag}")
    };
    let dirs = tempfile::tempdir().unwrap();
    let client = |i: usize| {
        let models = dirs.path().join(format!("c{i}"));
        let c = StrictOllama::new(net.clone(), &models).insecure(proto == Proto::Insecure);
        let c = if i == 1 { c.part_size(1, u64::MAX) } else { c };
        (models, c)
    };
    let (a, b) = (client(0), client(1));
    let (ra, rb) = std::thread::scope(|s| {
        let ta = s.spawn(|| a.1.pull(&name));
        let tb = s.spawn(|| b.1.pull(&name));
        (ta.join().unwrap(), tb.join().unwrap())
    });
    let mpath = {
        let n = crate::util::strict_ollama::ModelName::parse(&name, false).unwrap();
        format!("{}/{}/{}/{}", n.host, n.namespace, n.model, n.tag)
    };
    let refs: Vec<&[u8]> = blobs.iter().map(|b| &b[..]).collect();
    for (models, r) in [(&a.0, &ra), (&b.0, &rb)] {
        check(r, &name, &d);
        assert_pulled(models, &mpath, &manifest, &refs);
    }
    assert_eq!(rb.blobs[&digest(&blobs[0])].parts, 16, "{rb:#?}");
    if proto == Proto::Https {
        assert!(
            ra.requests.iter().all(|l| l.ends_with("(HTTP/2.0)")),
            "{ra:#?}"
        );
    }
    for b in &blobs {
        assert_eq!(
            up.cdn_bytes_of(&digest(b)),
            b.len() as u64,
            "one upstream copy"
        );
    }
    assert_eq!(up.cdn_bytes(), up.blob_total(), "upstream cost 1.00x");
    eprintln!(
        "{name}: ok, {} requests, {} redirects followed",
        ra.requests.len(),
        ra.redirects.len()
    );
}

fn check(r: &PullReport, name: &str, d: &Daemon) {
    if r.error.is_some() || !r.waived.is_empty() {
        panic!(
            "strict pull of {name}: error {:?}, waived {:#?}\nrequests {:#?}\ndaemon:\n{}",
            r.error,
            r.waived,
            r.requests,
            tail(&d.stderr())
        );
    }
}

fn tail(s: &str) -> &str {
    &s[s.len().saturating_sub(4000)..]
}

#[test]
fn strict_https_registry_ollama_ai() {
    strict_case(
        Proto::Https,
        "registry.ollama.ai",
        "library/tiny",
        "latest",
        101,
    );
}

#[test]
fn strict_https_http1_registry_ollama_ai() {
    strict_case(
        Proto::Https1,
        "registry.ollama.ai",
        "library/tiny",
        "latest",
        102,
    );
}

#[test]
fn strict_insecure_http_registry_ollama_ai() {
    strict_case(
        Proto::Insecure,
        "registry.ollama.ai",
        "library/tiny",
        "latest",
        103,
    );
}

#[test]
fn strict_https_hf_co() {
    strict_case(Proto::Https, "hf.co", HF_REPO, HF_TAG, 104);
}

#[test]
fn strict_insecure_http_hf_co() {
    strict_case(Proto::Insecure, "hf.co", HF_REPO, HF_TAG, 105);
}

/// Upper-case Hugging Face names (issue 13 item 5), as users type them from the model page.
#[test]
fn strict_https_hf_co_upper_case() {
    strict_case(
        Proto::Https,
        "hf.co",
        "bartowski/Llama-3.2-1B-Instruct-GGUF",
        "Q4_K_M",
        106,
    );
}

#[test]
fn strict_insecure_cache_by_address() {
    strict_case(Proto::Insecure, "127.0.0.1", "library/tiny", "latest", 107);
}

#[test]
fn strict_https_cache_by_name() {
    strict_case(Proto::Https, "cache.lan", "library/tiny", "latest", 108);
}

#[test]
fn strict_insecure_cache_by_name() {
    strict_case(Proto::Insecure, "cache.lan", "library/tiny", "latest", 109);
}

/// Ollama's own part size on a blob big enough for several parts (clamp(size/16, 100 MB,
/// 1000 MB): 100 MB, 100 MB and the rest), over h2 with the CA.
#[test]
fn strict_https_default_parts_of_a_large_blob() {
    let up = FakeUpstream::start();
    let layer = blob_bytes(210_000_000, 120);
    let tmp = tempfile::tempdir().unwrap();
    let d = digest(&layer);
    let manifest = up.add_model_with_digests("library/big", "latest", vec![(layer, d.clone())]);
    let daemon = daemon_for(&up);
    let net = Net::new()
        .with_roots(&ca_pem(&daemon))
        .resolve("registry.ollama.ai:443", daemon.https.unwrap());
    let models = tmp.path().join("models");
    let t = std::time::Instant::now();
    let r = StrictOllama::new(net, &models).pull("registry.ollama.ai/library/big");
    check(&r, "registry.ollama.ai/library/big", &daemon);
    assert_eq!(r.blobs[&d].parts, 3, "{r:#?}");
    assert_eq!(r.blobs[&d].received, 210_000_000);
    let m = models.join("manifests/registry.ollama.ai/library/big/latest");
    assert_eq!(std::fs::read(m).unwrap(), manifest);
    let got = std::fs::read(crate::util::strict_ollama::blob_path(&models, &d)).unwrap();
    assert_eq!(digest(&got), d, "the published blob is the upstream one");
    assert_eq!(up.cdn_bytes(), up.blob_total());
    eprintln!("210 MB in 3 parts over h2 in {:?}", t.elapsed());
}

fn tensor_case(insecure: bool) {
    let up = FakeUpstream::start();
    let (manifest, blobs) = tensor_model(|b| up.add_blob(b));
    up.set_manifest("library/tensor", "latest", manifest.clone());
    let d = daemon_for(&up);
    let net = Net::new()
        .with_roots(&ca_pem(&d))
        .resolve("registry.ollama.ai:443", d.https.unwrap())
        .resolve("registry.ollama.ai:80", d.http.unwrap());
    let dirs = tempfile::tempdir().unwrap();
    let models: Vec<PathBuf> = (0..2).map(|i| dirs.path().join(format!("c{i}"))).collect();
    let name = "registry.ollama.ai/library/tensor";
    let reports: Vec<_> = std::thread::scope(|s| {
        let ts: Vec<_> = models
            .iter()
            .map(|m| {
                let c = TransferClient::new(net.clone(), m).insecure(insecure);
                s.spawn(move || c.pull(name))
            })
            .collect();
        ts.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let refs: Vec<&[u8]> = blobs.iter().map(|b| &b[..]).collect();
    for (m, r) in models.iter().zip(&reports) {
        if r.error.is_some() || !r.waived.is_empty() {
            panic!(
                "tensor pull (insecure {insecure}): error {:?}, waived {:#?}\n{r:#?}\ndaemon:\n{}",
                r.error,
                r.waived,
                tail(&d.stderr())
            );
        }
        assert_pulled(
            m,
            "registry.ollama.ai/library/tensor/latest",
            &manifest,
            &refs,
        );
        for (dg, b) in &r.blobs {
            eprintln!(
                "tensor {} {dg}: {} bytes, LAN {} bytes = {:.2}x (resolve {}, transfer {})",
                if insecure { "http" } else { "https" },
                b.size,
                b.lan_bytes,
                b.ratio(),
                b.resolve_status,
                b.transfer_url
            );
            assert!(
                b.ratio() <= 2.0,
                "{dg}: LAN bytes {:.2}x the blob",
                b.ratio()
            );
        }
    }
    assert_eq!(up.cdn_bytes(), up.blob_total(), "upstream cost 1.00x");
}

#[test]
fn transfer_client_https_tensor_model() {
    tensor_case(false);
}

#[test]
fn transfer_client_insecure_http_tensor_model() {
    tensor_case(true);
}

// The real 0.5.4, in a namespace of its own where the names are the cache (127.0.0.1) and the
// cache listens on the default ports.

const REAL_NAMES: [(&str, &str); 3] = [
    ("127.0.0.1", "registry.ollama.ai"),
    ("127.0.0.1", "hf.co"),
    ("127.0.0.1", "cache.lan"),
];

fn in_namespace(f: impl FnOnce(&NetNs) + Send + 'static) {
    let ns = NetNs::new(&REAL_NAMES);
    ns.set_resolver("127.0.0.1");
    std::thread::spawn(move || {
        ns.enter();
        f(&ns);
    })
    .join()
    .unwrap();
}

/// The real client's half of the matrix for one protocol: two clients pull the first model at
/// once, then one pulls each remaining name; every failure is collected and shown at once.
fn real_matrix(ns: &NetNs, insecure: bool) {
    let up = FakeUpstream::start();
    let d = Daemon::builder()
        .activate(Activate {
            https: true,
            ..Default::default()
        })
        .http_addr(SocketAddr::from(([127, 0, 0, 1], 80)))
        .https_addr(SocketAddr::from(([127, 0, 0, 1], 443)))
        .config(&config(&up))
        .start();
    let work = tempfile::tempdir().unwrap();
    let bundle = work.path().join("bundle.pem");
    let mut pem = std::fs::read("/etc/ssl/certs/ca-certificates.crt").unwrap_or_default();
    pem.extend(ca_pem(&d));
    std::fs::write(&bundle, pem).unwrap();
    let client = |n: &str, port: u16| {
        let models = work.path().join(n).join("models");
        std::fs::create_dir_all(&models).unwrap();
        Ollama::serve(
            &models,
            port,
            Some(ns),
            &[("SSL_CERT_FILE", bundle.to_str().unwrap())],
        )
    };
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| client("a", 11434));
        let b = s.spawn(|| client("b", 11435));
        (a.join().unwrap(), b.join().unwrap())
    });
    let flag: &[&str] = if insecure { &["--insecure"] } else { &[] };
    let with = |name: &str| {
        let mut v = flag.to_vec();
        v.push(name);
        v.into_iter().map(String::from).collect::<Vec<_>>()
    };

    // (a)/(b): two clients at once, one upstream copy.
    let (m1, b1) = offer(&up, "library/tiny", "latest", 201);
    let args = with("registry.ollama.ai/library/tiny");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ra, rb) = std::thread::scope(|s| {
        let ta = s.spawn(|| a.pull(&args));
        let tb = s.spawn(|| b.pull(&args));
        (ta.join().unwrap(), tb.join().unwrap())
    });
    let mut failures = Vec::new();
    for (who, r) in [("a", ra), ("b", rb)] {
        if let Err(e) = r {
            failures.push(format!("{who}: registry.ollama.ai/library/tiny: {e}"));
        }
    }
    if failures.is_empty() {
        for o in [&a, &b] {
            let refs: Vec<&[u8]> = b1.iter().map(|b| &b[..]).collect();
            assert_pulled(
                &o.models,
                "registry.ollama.ai/library/tiny/latest",
                &m1,
                &refs,
            );
        }
        for x in &b1 {
            assert_eq!(
                up.cdn_bytes_of(&digest(x)),
                x.len() as u64,
                "one upstream copy"
            );
        }
    }

    // (c) hf.co and (d) the cache by name (and by address, insecure only: no IP leaf).
    let mut cases = vec![
        (
            format!("hf.co/{HF_REPO}:{HF_TAG}"),
            HF_REPO,
            HF_TAG,
            format!("hf.co/{HF_REPO}/{HF_TAG}"),
        ),
        (
            "cache.lan/library/named".into(),
            "library/named",
            "latest",
            "cache.lan/library/named/latest".into(),
        ),
    ];
    if insecure {
        cases.push((
            "127.0.0.1/library/byaddr".into(),
            "library/byaddr",
            "latest",
            "127.0.0.1/library/byaddr/latest".into(),
        ));
    }
    for (i, (name, repo, tag, mpath)) in cases.iter().enumerate() {
        let (m, blobs) = offer(&up, repo, tag, 210 + i as u64);
        let args = with(name);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        match a.pull(&args) {
            Ok(()) => {
                let refs: Vec<&[u8]> = blobs.iter().map(|b| &b[..]).collect();
                assert_pulled(&a.models, mpath, &m, &refs);
            }
            Err(e) => failures.push(format!("a: {name}: {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "real 0.5.4 (insecure {insecure}) failed:\n{}\nserve log a:\n{}\ndaemon:\n{}",
        failures.join("\n"),
        tail(&a.log()),
        tail(&d.stderr())
    );
    eprintln!("real 0.5.4, insecure {insecure}: every combination pulled");
}

fn real_client_ready() -> bool {
    crate::util::netns::available() && crate::util::require_ollama()
}

#[test]
fn real_ollama_https_matrix() {
    if real_client_ready() {
        in_namespace(|ns| real_matrix(ns, false));
    }
}

#[test]
fn real_ollama_insecure_matrix() {
    if real_client_ready() {
        in_namespace(|ns| real_matrix(ns, true));
    }
}
