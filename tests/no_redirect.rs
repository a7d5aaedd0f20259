//! "No registry-API response is a redirect to another host or scheme" (issue 13, item 1), as a
//! property over every route and both listeners. Ollama 0.34.2+ refuses a redirect from https to
//! http, to another host, or to a private address; the cache is all three, so the only safe
//! answer is none at all. Checked with curl (which reports what it was told, never following):
//!
//! - seeded random requests (`LANCACHE_FAULT_SEED` picks the seed) over HTTP and over HTTPS with
//!   the cache's CA, for the hosts `registry.ollama.ai`, `hf.co` and the cache's own address;
//!   methods GET and HEAD; `/v2/`, manifests by tag and digest (known, unknown, invalid), blobs
//!   (cold, filling, cached, unknown, invalid digest), unknown `/v2` endpoints; with and without
//!   `Range` (satisfiable, open, suffix, unsatisfiable), `If-None-Match` and `Accept`;
//! - no answer is a 3xx, and every `Location` is a path on the request's own scheme and host;
//! - every blob GET that succeeds names its own URL as `Location` (Ollama's direct URL).

use std::process::Command;

use crate::util::daemon::Activate;
use crate::util::upstream::{blob_bytes, digest, FakeUpstream};
use crate::util::{require_program, Daemon};

/// A tiny deterministic generator (xorshift), so a failure names its seed.
struct Rng(u64);

impl Rng {
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        &xs[(self.0 % xs.len() as u64) as usize]
    }
}

struct Answer {
    status: u16,
    location: Option<String>,
}

/// One request with curl, never following redirects; the status and any `Location`.
fn curl(d: &Daemon, tls: bool, host: &str, method: &str, path: &str, hdrs: &[&str]) -> Answer {
    let (scheme, addr) = if tls {
        ("https", d.https.unwrap())
    } else {
        ("http", d.http.unwrap())
    };
    let mut c = Command::new("curl");
    c.args(["-sS", "-o", "/dev/null", "-D", "-", "--max-time", "20"]);
    if method == "HEAD" {
        c.arg("-I");
    }
    if tls {
        c.arg("--cacert").arg(d.dir.join("ca/ca.crt"));
    }
    c.arg("--resolve")
        .arg(format!("{host}:{}:127.0.0.1", addr.port()));
    for h in hdrs {
        c.args(["-H", h]);
    }
    c.arg(format!("{scheme}://{host}:{}{path}", addr.port()));
    let out = c.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "curl {method} {scheme}://{host}{path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let location = text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("location")
            .then(|| v.trim().to_string())
    });
    Answer { status, location }
}

#[test]
fn no_registry_answer_redirects_over_either_listener() {
    if !require_program("curl") {
        return;
    }
    let up = FakeUpstream::start();
    let cached = blob_bytes(64 << 10, 1);
    let cold = blob_bytes(96 << 10, 2);
    let manifest = up.add_model("library/tiny", "latest", &[&cached[..], &cold[..]]);
    let loose = up.add_blob(blob_bytes(32 << 10, 3));
    let d = Daemon::builder()
        .activate(Activate {
            https: true,
            ..Default::default()
        })
        .config(&format!(
            "[upstream]\nresolvers = []\n[upstream.registries]\n\"registry.ollama.ai\" = \"{u}\"\n\"hf.co\" = \"{u}\"\n[dns]\nadvertise = [\"127.0.0.1\"]\n",
            u = up.url()
        ))
        .start();
    let (cached_dg, cold_dg, manifest_dg) = (digest(&cached), digest(&cold), digest(&manifest));
    // One blob is cached before the run; the other stays cold until a request fills it.
    let warm = curl(
        &d,
        false,
        "registry.ollama.ai",
        "GET",
        "/v2/library/tiny/manifests/latest",
        &[],
    );
    assert_eq!(warm.status, 200);
    let warm = curl(
        &d,
        false,
        "registry.ollama.ai",
        "GET",
        &format!("/v2/library/tiny/blobs/{cached_dg}"),
        &[],
    );
    assert_eq!(warm.status, 200);

    let unknown = format!("sha256:{}", "0".repeat(64));
    let paths = [
        "/v2/".to_string(),
        "/v2".to_string(),
        "/v2/library/tiny/manifests/latest".to_string(),
        format!("/v2/library/tiny/manifests/{manifest_dg}"),
        "/v2/library/none/manifests/latest".to_string(),
        "/v2/library/tiny/manifests/-bad".to_string(),
        format!("/v2/library/tiny/blobs/{cached_dg}"),
        format!("/v2/library/tiny/blobs/{cold_dg}"),
        format!("/v2/library/tiny/blobs/{loose}"),
        format!("/v2/library/tiny/blobs/{unknown}"),
        "/v2/library/tiny/blobs/sha256:nothex".to_string(),
        "/v2/library/tiny/tags/list".to_string(),
        "/v2/a/b/c/blobs/x".to_string(),
    ];
    let hosts = ["registry.ollama.ai", "hf.co", "127.0.0.1"];
    let headers: [&[&str]; 7] = [
        &[],
        &["Range: bytes=0-9"],
        &["Range: bytes=100-"],
        &["Range: bytes=-5"],
        &["Range: bytes=99999999-"],
        &["Accept: application/vnd.docker.distribution.manifest.v2+json"],
        &["If-None-Match: \"x\"", "Range: bytes=1-2"],
    ];
    let seed: u64 = std::env::var("LANCACHE_FAULT_SEED")
        .ok()
        .and_then(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok())
        .unwrap_or(0x5eed_1e55);
    let mut rng = Rng(seed | 1);
    let mut blob_gets = 0;
    for i in 0..240 {
        let tls = i % 2 == 1;
        let host = *rng.pick(&hosts);
        let method = *rng.pick(&["GET", "HEAD"]);
        let path = rng.pick(&paths).clone();
        let hdrs = *rng.pick(&headers);
        let a = curl(&d, tls, host, method, &path, hdrs);
        let what = format!(
            "seed {seed:#x} #{i}: {method} {}://{host}{path} {hdrs:?} -> {}",
            if tls { "https" } else { "http" },
            a.status
        );
        assert!(!(300..400).contains(&a.status), "a redirect: {what}");
        if let Some(loc) = &a.location {
            assert!(
                loc.starts_with('/'),
                "Location leaves the host or scheme: {loc} for {what}"
            );
        }
        if method == "GET"
            && path.contains("/blobs/sha256:")
            && (a.status == 200 || a.status == 206)
        {
            assert_eq!(
                a.location.as_deref(),
                Some(path.as_str()),
                "direct URL for {what}"
            );
            blob_gets += 1;
        }
    }
    assert!(blob_gets > 10, "the run exercised blob GETs ({blob_gets})");
}
