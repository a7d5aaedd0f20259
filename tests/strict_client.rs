//! Self-tests of the test clients that stand in for Ollama 0.34.2 (`util::strict_ollama`, the
//! classic downloader; `util::transfer_client`, x/transfer), against upstream stand-ins and not
//! the daemon, so a failure of the matrix in `proxy_strict` is the cache's and not the client's:
//!
//! - the old way (`FakeUpstream`: blob `HEAD`/`GET` → 307 to a "CDN" on 127.0.0.2) over HTTPS
//!   fails with "blocked redirect to a different host" on the blob `HEAD`, before any CDN byte;
//! - the old way over HTTP with `--insecure` pulls byte-exact in 16 ranged parts, but records the
//!   host and address checks it waived; a part cut short starts again where it stopped;
//! - https → http is refused even with `--insecure` (a chain http → https → http), and for a
//!   same-host downgrade without it;
//! - a same-host hop is checked for its address: the same name on another port at another
//!   private address is refused without `--insecure` and waived (recorded) with it; the
//!   direct-URL GET follows such a hop, so a plain 200 at its end has no `Location` and fails;
//! - a server that ignores Range corrupts the blob: "digest mismatch", nothing published;
//! - 200 without `Location`: "http: no Location header in response"; 301/302/308 to another host:
//!   "unexpected status code N";
//! - the way that works (HEAD 200, GET 200 with a same-host `Location`) passes over verified TLS
//!   with nothing waived (17 parts: size/16 and the remainder);
//! - x/transfer: a 200 resolve is read and then fetched again (LAN bytes = 2.0× each blob) for a
//!   tensor model with named tensor/json layers; a cross-host 307 is checked by the policy
//!   (refused over HTTPS, waived over insecure HTTP); a dropped transfer resumes with
//!   `Range: bytes=N-`; a same-host 3xx is refused.

use std::net::SocketAddr;
use std::path::Path;

use crate::util::require_program;
use crate::util::standin::{config_blob, manifest_json, BlobAnswer, ManifestLayer, StandIn};
use crate::util::strict_http::Net;
use crate::util::strict_ollama::{blob_path, StrictOllama};
use crate::util::tls_upstream::TlsFront;
use crate::util::transfer_client::TransferClient;
use crate::util::upstream::{blob_bytes, FakeUpstream, Faults};

const TINY: &str = "registry.ollama.ai/library/tiny";

fn loopback(port: u16) -> SocketAddr {
    ([127, 0, 0, 1], port).into()
}

/// A client that trusts `front`'s test root and finds `host` at it.
fn https_net(front: &TlsFront, host: &str) -> Net {
    Net::new()
        .with_roots(&std::fs::read(front.ca_file()).unwrap())
        .resolve(&format!("{host}:443"), loopback(front.port))
}

/// Every blob and the manifest are in `models` byte for byte, at Ollama's paths.
pub fn assert_pulled(models: &Path, manifest_path: &str, manifest: &[u8], blobs: &[&[u8]]) {
    let m = models.join("manifests").join(manifest_path);
    assert_eq!(
        std::fs::read(&m).unwrap_or_else(|e| panic!("{}: {e}", m.display())),
        manifest,
        "manifest bytes"
    );
    for b in blobs {
        let d = crate::util::upstream::digest(b);
        let got = std::fs::read(blob_path(models, &d)).unwrap_or_else(|e| panic!("{d}: {e}"));
        assert!(got == *b, "blob {d} differs");
    }
}

fn no_blobs(models: &Path) -> bool {
    std::fs::read_dir(models.join("blobs"))
        .map(|d| d.count() == 0)
        .unwrap_or(true)
}

#[test]
fn strict_client_refuses_the_old_way_over_https() {
    if !require_program("nginx") || !require_program("openssl") {
        return;
    }
    let up = FakeUpstream::start();
    up.add_model("library/tiny", "latest", &[&blob_bytes(100_000, 1)]);
    let front = TlsFront::start("registry.ollama.ai", &up.url());
    let tmp = tempfile::tempdir().unwrap();
    let r = StrictOllama::new(https_net(&front, "registry.ollama.ai"), tmp.path()).pull(TINY);
    assert!(
        r.error()
            .starts_with(&format!("Head \"http://{}/cdn/", up.cdn))
            && r.error().ends_with("blocked redirect to a different host"),
        "{r:#?}"
    );
    assert_eq!(up.cdn_bytes(), 0);
    assert!(no_blobs(tmp.path()) && !tmp.path().join("manifests").exists());
}

#[test]
fn insecure_pull_of_the_old_way_passes_but_records_what_it_waived() {
    let up = FakeUpstream::start();
    let layer = blob_bytes(16 * 40_000, 2);
    let m = up.add_model("library/tiny", "latest", &[&layer]);
    let tmp = tempfile::tempdir().unwrap();
    let net = Net::new().resolve("registry.ollama.ai:80", up.registry);
    let r = StrictOllama::new(net, tmp.path())
        .insecure(true)
        .part_size(1, u64::MAX)
        .pull(TINY);
    r.expect_ok("insecure old way");
    assert_pulled(
        tmp.path(),
        "registry.ollama.ai/library/tiny/latest",
        &m,
        &[&layer],
    );
    let d = crate::util::upstream::digest(&layer);
    assert_eq!(r.blobs[&d].parts, 16, "{r:#?}");
    assert_eq!(r.blobs[&d].received, layer.len() as u64);
    assert_eq!(up.cdn_bytes(), up.blob_total(), "one copy of each blob");
    // The HEAD's redirect and the direct URL each waive the host and the address check.
    let hosts = r.waived.iter().filter(|w| w.starts_with("host: ")).count();
    let addrs = r
        .waived
        .iter()
        .filter(|w| w.starts_with("address: "))
        .count();
    assert!(hosts >= 2 && addrs >= 2, "{:#?}", r.waived);
    assert!(
        r.waived[0].contains("registry.ollama.ai → 127.0.0.2"),
        "{:#?}",
        r.waived
    );
}

#[test]
fn a_short_part_starts_again_where_it_stopped() {
    let up = FakeUpstream::start();
    let layer = blob_bytes(160_000, 8);
    let m = up.add_model("library/tiny", "latest", &[&layer]);
    let d = crate::util::upstream::digest(&layer);
    up.blob_faults(
        &d,
        Some(Faults {
            truncate_at: Some(25_000),
            limit: Some(1),
            ..Default::default()
        }),
    );
    let tmp = tempfile::tempdir().unwrap();
    let net = Net::new().resolve("registry.ollama.ai:80", up.registry);
    let r = StrictOllama::new(net, tmp.path())
        .insecure(true)
        .part_size(1, u64::MAX)
        .pull(TINY);
    r.expect_ok("one truncated part");
    assert_pulled(
        tmp.path(),
        "registry.ollama.ai/library/tiny/latest",
        &m,
        &[&layer],
    );
    assert!(
        r.requests
            .iter()
            .any(|l| l.starts_with("part 20000-29999: 5000 of 10000 bytes")),
        "{r:#?}"
    );
    assert_eq!(r.blobs[&d].received, layer.len() as u64);
}

#[test]
fn https_to_http_is_refused_even_when_insecure() {
    if !require_program("nginx") || !require_program("openssl") {
        return;
    }
    // The https hop: a stand-in behind TLS whose blobs 307 to plain http on the other host.
    let secure = StandIn::start(BlobAnswer::Redirect {
        status: 307,
        to: "http://{other}".into(),
    });
    secure.add_model("library/tiny", "latest", &[&blob_bytes(1000, 3)]);
    let front = TlsFront::start("registry.ollama.ai", &secure.url());
    // Insecure: http registry → https (allowed upgrade) → http: the scheme check fires.
    let plain = StandIn::start(BlobAnswer::Redirect {
        status: 307,
        to: format!(
            "https://registry.ollama.ai:{}/v2/library/tiny/blobs/{{digest}}",
            front.port
        ),
    });
    plain.add_model("library/tiny", "latest", &[&blob_bytes(1000, 3)]);
    let tmp = tempfile::tempdir().unwrap();
    let net = https_net(&front, "registry.ollama.ai")
        .resolve(
            &format!("registry.ollama.ai:{}", front.port),
            loopback(front.port),
        )
        .resolve("plain.test:80", plain.addr);
    let r = StrictOllama::new(net.clone(), tmp.path())
        .insecure(true)
        .pull("plain.test/library/tiny");
    assert!(
        r.error().ends_with("blocked redirect from https to http"),
        "{r:#?}"
    );
    assert!(
        !r.waived.is_empty(),
        "the host checks before it were waived"
    );

    // Strict, same host: only the downgrade is wrong, and it is refused.
    secure.set_answer(BlobAnswer::Redirect {
        status: 307,
        to: "http://registry.ollama.ai".into(),
    });
    let net = net.resolve("registry.ollama.ai:80", secure.addr);
    let r = StrictOllama::new(net, tmp.path()).pull(TINY);
    assert_eq!(
        r.error(),
        format!(
            "Head \"http://registry.ollama.ai/data/{}\": blocked redirect from https to http",
            crate::util::upstream::digest(&blob_bytes(1000, 3))
        ),
        "{r:#?}"
    );
}

#[test]
fn same_host_hops_are_checked_for_their_address() {
    let s = StandIn::start(BlobAnswer::Redirect {
        status: 307,
        to: "http://registry.ollama.ai:8080".into(),
    });
    s.add_model("library/tiny", "latest", &[&blob_bytes(1000, 7)]);
    // The same name, another port, and there another (private) address: DNS rebinding.
    let net = Net::new()
        .resolve("registry.ollama.ai:80", s.addr)
        .resolve("registry.ollama.ai:8080", s.other);
    let tmp = tempfile::tempdir().unwrap();
    let r =
        StrictOllama::new(net.clone(), tmp.path()).pull("http://registry.ollama.ai/library/tiny");
    assert!(
        r.error()
            .ends_with("blocked redirect to a private address 127.0.0.2"),
        "{r:#?}"
    );
    // Waived with --insecure; the direct-URL GET then follows the same-host hop to a plain 200
    // without Location, which the classic downloader can not use.
    let r = StrictOllama::new(net, tmp.path()).insecure(true).pull(TINY);
    assert_eq!(r.error(), "http: no Location header in response", "{r:#?}");
    assert!(!r.waived.is_empty());
    assert!(r
        .waived
        .iter()
        .all(|w| w.starts_with("address: registry.ollama.ai is 127.0.0.2")));
}

#[test]
fn a_server_that_ignores_range_corrupts_the_blob() {
    let s = StandIn::start(BlobAnswer::Direct);
    s.add_model("library/tiny", "latest", &[&blob_bytes(64_000, 4)]);
    s.ignore_range(true);
    let tmp = tempfile::tempdir().unwrap();
    let net = Net::new().resolve("registry.ollama.ai:80", s.addr);
    let r = StrictOllama::new(net, tmp.path())
        .insecure(true)
        .part_size(1, u64::MAX)
        .pull(TINY);
    assert!(
        r.error()
            .starts_with("digest mismatch, file must be downloaded again: want sha256:"),
        "{r:#?}"
    );
    assert!(r.waived.is_empty(), "{:#?}", r.waived);
    // Nothing but the (tiny, single-part, correct) config may have been published.
    let d = crate::util::upstream::digest(&blob_bytes(64_000, 4));
    assert!(!blob_path(tmp.path(), &d).exists());
    assert!(!Path::new(&format!("{}-partial", blob_path(tmp.path(), &d).display())).exists());
    assert!(!tmp.path().join("manifests").exists());
}

#[test]
fn no_location_and_permanent_redirects_fail_like_the_classic_downloader() {
    let s = StandIn::start(BlobAnswer::NoLocation);
    s.add_model("library/tiny", "latest", &[&blob_bytes(5000, 5)]);
    let tmp = tempfile::tempdir().unwrap();
    let net = Net::new().resolve("registry.ollama.ai:80", s.addr);
    let client = StrictOllama::new(net, tmp.path()).insecure(true);
    let r = client.pull(TINY);
    assert_eq!(r.error(), "http: no Location header in response", "{r:#?}");
    for status in [301, 302, 308] {
        s.set_answer(BlobAnswer::Redirect {
            status,
            to: "http://{other}".into(),
        });
        let r = client.pull(TINY);
        assert_eq!(
            r.error(),
            format!("unexpected status code {status}"),
            "{r:#?}"
        );
    }
    // 307 to the other host is what the downloader wants (waived here: another, private host).
    s.set_answer(BlobAnswer::Redirect {
        status: 307,
        to: "http://{other}".into(),
    });
    client.pull(TINY).expect_ok("307 to another host, insecure");
}

#[test]
fn the_direct_answer_passes_strict_tls_with_nothing_waived() {
    if !require_program("nginx") || !require_program("openssl") {
        return;
    }
    let s = StandIn::start(BlobAnswer::Direct);
    let layer = blob_bytes(16 * 3000 + 7, 6);
    let m = s.add_model("library/tiny", "latest", &[&layer]);
    let front = TlsFront::start("registry.ollama.ai", &s.url());
    let tmp = tempfile::tempdir().unwrap();
    let r = StrictOllama::new(https_net(&front, "registry.ollama.ai"), tmp.path())
        .part_size(1, u64::MAX)
        .pull(TINY);
    r.expect_ok("direct answer over TLS");
    assert!(r.waived.is_empty() && r.redirects.is_empty(), "{r:#?}");
    assert_pulled(
        tmp.path(),
        "registry.ollama.ai/library/tiny/latest",
        &m,
        &[&layer],
    );
    let d = crate::util::upstream::digest(&layer);
    // 16 parts of size/16 and the remainder.
    assert_eq!(r.blobs[&d].parts, 17);
    assert!(r.blobs[&d]
        .direct_url
        .starts_with("https://registry.ollama.ai/v2/library/tiny/blobs/"));
}

/// A tensor model: safetensors-style tensor layers and json layers, each with a `name`.
pub fn tensor_model(add: impl Fn(Vec<u8>) -> String) -> (Vec<u8>, Vec<Vec<u8>>) {
    let cfg = config_blob();
    let tensors: Vec<Vec<u8>> = (0..3)
        .map(|i| blob_bytes(200_000 + i * 1000, 30 + i as u64))
        .collect();
    let json = br#"{"architectures":["LlamaForCausalLM"],"torch_dtype":"bfloat16"}"#.to_vec();
    let tok = br#"{"model":{"type":"BPE"}}"#.to_vec();
    let mut layers = Vec::new();
    for (i, t) in tensors.iter().enumerate() {
        layers.push(
            ManifestLayer::new(
                "application/vnd.ollama.image.tensor",
                &add(t.clone()),
                t.len(),
            )
            .named(&format!("model.layers.{i}.mlp.down_proj.weight")),
        );
    }
    layers.push(
        ManifestLayer::new(
            "application/vnd.ollama.image.json",
            &add(json.clone()),
            json.len(),
        )
        .named("config.json"),
    );
    layers.push(
        ManifestLayer::new(
            "application/vnd.ollama.image.json",
            &add(tok.clone()),
            tok.len(),
        )
        .named("tokenizer.json"),
    );
    let m = manifest_json((cfg.len() as u64, add(cfg.clone())), &layers);
    let mut blobs = tensors;
    blobs.extend([json, tok, cfg]);
    (m, blobs)
}

#[test]
fn transfer_client_reads_a_200_twice_and_checks_cross_host_redirects() {
    if !require_program("nginx") || !require_program("openssl") {
        return;
    }
    const TENSOR: &str = "registry.ollama.ai/library/tensor";
    let tensor = "registry.ollama.ai/library/tensor/latest";
    let up = FakeUpstream::start();
    let (m, blobs) = tensor_model(|b| up.add_blob(b));
    up.set_manifest("library/tensor", "latest", m.clone());
    let refs: Vec<&[u8]> = blobs.iter().map(|b| &b[..]).collect();

    // Old way, HTTPS: the cross-host 307 is refused by the policy.
    let front = TlsFront::start("registry.ollama.ai", &up.url());
    let tmp = tempfile::tempdir().unwrap();
    let r = TransferClient::new(https_net(&front, "registry.ollama.ai"), tmp.path()).pull(TENSOR);
    assert!(
        r.error().ends_with("blocked redirect to a different host"),
        "{r:#?}"
    );
    // Old way, insecure HTTP: passes with the waivers recorded, one transfer per blob.
    let insecure = || {
        let dir = tempfile::tempdir().unwrap();
        let net = Net::new().resolve("registry.ollama.ai:80", up.registry);
        let r = TransferClient::new(net, dir.path())
            .insecure(true)
            .pull(TENSOR);
        (dir, r)
    };
    let (dir, r) = insecure();
    r.expect_ok("old way, insecure");
    assert_pulled(dir.path(), tensor, &m, &refs);
    assert!(!r.waived.is_empty());
    assert!((r.worst_ratio() - 1.0).abs() < 1e-9, "{r:#?}");

    // A dropped transfer resumes with Range: bytes=N-.
    let d0 = crate::util::upstream::digest(&blobs[0]);
    up.blob_faults(
        &d0,
        Some(Faults {
            truncate_at: Some(70_000),
            limit: Some(1),
            ..Default::default()
        }),
    );
    let (dir, r) = insecure();
    r.expect_ok("resume");
    assert_eq!(r.blobs[&d0].resumes, 1, "{r:#?}");
    assert_eq!(r.blobs[&d0].lan_bytes, blobs[0].len() as u64);
    assert_pulled(dir.path(), tensor, &m, &refs);

    // The direct answer over verified TLS: each blob read twice (2.0x), nothing waived.
    let s = StandIn::start(BlobAnswer::Direct);
    for b in &blobs {
        s.add_blob(b.clone());
    }
    s.set_manifest("library/tensor", "latest", m.clone());
    let front = TlsFront::start("registry.ollama.ai", &s.url());
    let dir = tempfile::tempdir().unwrap();
    let r = TransferClient::new(https_net(&front, "registry.ollama.ai"), dir.path()).pull(TENSOR);
    r.expect_ok("direct answer");
    assert!(r.waived.is_empty());
    assert_pulled(dir.path(), tensor, &m, &refs);
    for (d, b) in &r.blobs {
        assert_eq!((b.resolve_status, b.lan_bytes), (200, 2 * b.size), "{d}");
    }
    let total: u64 = blobs.iter().map(|b| b.len() as u64).sum();
    assert_eq!(s.body_bytes(), 2 * total);

    // A same-host 3xx: unknown in DESIGN.md, refused by this client.
    s.set_answer(BlobAnswer::Redirect {
        status: 307,
        to: String::new(),
    });
    let dir = tempfile::tempdir().unwrap();
    let r = TransferClient::new(https_net(&front, "registry.ollama.ai"), dir.path()).pull(TENSOR);
    assert!(r.error().contains("same-host redirect 307"), "{r:#?}");
}
