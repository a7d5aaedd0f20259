//! The subsystems connected to each other, against the fake registry + CDN in `util::upstream`:
//! - access index: a model pulled through the proxy is listed by `lancachectl models` as
//!   fetched, with a last use, and `prune --model` removes it without `--include-local`;
//! - space: a fill that eviction cannot make room for (the blocker is a local model and
//!   `evict_local = false`) is refused with 507 and the lifecycle's reason on the registry API
//!   and the data plane, while cached blobs keep being served;
//! - prefetch: `lancachectl prefetch NAME --wait` fills a model through the proxy from a
//!   throttled upstream and ends when it is complete; `--no-wait` returns at once; an unknown
//!   model is refused with upstream's answer;
//! - sessions: a slow ranged download (from a fill, and a stalled reader of a cached blob) shows
//!   in `/api/sessions` with its client and byte counts, and disappears when it ends;
//! - resume: fills left by a killed daemon resume at daemon start even without an HTTP listener.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::lifecycle_cache::{model, tmpdir};
use crate::util::daemon::Activate;
use crate::util::upstream::{blob_bytes, digest, raw_get, FakeUpstream, Faults};
use crate::util::wait_for;
use crate::util::Daemon;

const REG: &str = "registry.ollama.ai";

fn config(up: &FakeUpstream, cache: &str) -> String {
    format!(
        "[upstream]\nresolvers = []\n[upstream.registries]\n\"registry.ollama.ai\" = \"{}\"\n[cache]\nslice_size = \"1MiB\"\nstall_timeout = \"2s\"\n{cache}",
        up.url()
    )
}

/// An upstream with one model of one `size`-byte layer, sending 1 MiB/s.
fn slow_upstream(repo: &str, size: usize, seed: u64) -> (FakeUpstream, Vec<u8>) {
    let up = FakeUpstream::start();
    let layer = blob_bytes(size, seed);
    up.add_model(repo, "latest", &[&layer[..]]);
    up.faults(Faults {
        throttle: 1 << 20,
        ..Default::default()
    });
    (up, layer)
}

fn http(d: &Daemon) -> SocketAddr {
    d.http.unwrap()
}

/// The digests of a manifest's config and layers.
fn blobs_of(manifest: &[u8]) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_slice(manifest).unwrap();
    std::iter::once(&v["config"])
        .chain(v["layers"].as_array().unwrap())
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect()
}

/// Pulls a model like Ollama: the manifest, then each blob at its direct URL.
fn pull(d: &Daemon, repo: &str, tag: &str) {
    let r = raw_get(http(d), REG, &format!("/v2/{repo}/manifests/{tag}"), &[]);
    assert_eq!(r.status, 200);
    for dg in blobs_of(&r.body) {
        let path =
            crate::util::upstream::direct_url(http(d), REG, &format!("/v2/{repo}/blobs/{dg}"))
                .expect("200 with a Location");
        let r = raw_get(http(d), REG, &path, &[]);
        assert_eq!(r.status, 200);
        assert!(r.complete);
        assert_eq!(digest(&r.body), dg);
    }
}

/// Runs `lancachectl`, asserts success, and says how long it took.
fn ctl_ok(d: &Daemon, args: &[&str]) -> Duration {
    let t = Instant::now();
    let out = d.ctl(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    t.elapsed()
}

fn model_json(d: &Daemon, name: &str) -> Option<serde_json::Value> {
    d.ctl_json(&["models"])["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == name)
        .cloned()
}

#[test]
fn pulled_model_is_indexed_as_fetched_and_prunable() {
    let up = FakeUpstream::start();
    let layer = blob_bytes(300_000, 21);
    let manifest = up.add_model("library/wired", "latest", &[&layer[..]]);
    let d = Daemon::builder().config(&config(&up, "")).start();
    pull(&d, "library/wired", "latest");
    let name = "registry.ollama.ai/library/wired:latest";
    // The hot path buffers; the index is flushed every second.
    wait_for(
        "the model indexed as fetched",
        Duration::from_secs(10),
        || model_json(&d, name).is_some_and(|m| m["fetched"] == true && m["last_used"].is_u64()),
    );
    let m = model_json(&d, name).unwrap();
    assert_eq!(m["complete"], true, "{m}");
    ctl_ok(&d, &["prune", "--model", "wired"]);
    assert!(model_json(&d, name).is_none());
    for dg in blobs_of(&manifest) {
        assert!(
            !d.cache_dir
                .join("blobs")
                .join(dg.replace(':', "-"))
                .exists(),
            "{dg} left behind"
        );
    }
}

#[test]
fn fill_without_room_is_refused_while_hits_serve() {
    let tmp = tmpdir();
    let cache = tmp.path().join("cache");
    // A user's own model fills most of the cache and may not be evicted.
    let local_layer = blob_bytes(200_000, 22);
    model(&cache, "someone/local", &[&local_layer[..]]);
    let up = FakeUpstream::start();
    let layer = blob_bytes(200_000, 23);
    up.add_model("library/big", "latest", &[&layer[..]]);
    let d = Daemon::builder()
        .dir(tmp)
        .config(&config(&up, "max_size = \"300KiB\"\nevict_local = false"))
        .start();
    let r = raw_get(http(&d), REG, "/v2/library/big/manifests/latest", &[]);
    assert_eq!(r.status, 200);
    let dg = digest(&layer);
    let r = raw_get(http(&d), REG, &format!("/v2/library/big/blobs/{dg}"), &[]);
    assert_eq!(r.status, 507, "{:?}", String::from_utf8_lossy(&r.body));
    let body = String::from_utf8_lossy(&r.body);
    assert!(body.contains("no room for a fill"), "{body}");
    assert!(body.contains("evict_local"), "{body}");
    let r = raw_get(
        http(&d),
        "x",
        &format!("/blobs/{dg}?registry={REG}&repo=library/big"),
        &[],
    );
    assert_eq!(r.status, 507);
    assert!(!d
        .cache_dir
        .join("blobs")
        .join(dg.replace(':', "-"))
        .exists());
    assert!(d.stderr().contains("no room for a fill"));
    // Hits keep serving.
    let local = digest(&local_layer);
    let r = raw_get(http(&d), "x", &format!("/blobs/{local}"), &[]);
    assert_eq!(r.status, 200);
    assert!(r.complete && r.body == local_layer);
    let s = d.ctl_json(&["stats"]);
    assert!(s["lifecycle"]["no_space"].as_u64().unwrap() >= 1, "{s}");
}

#[test]
fn prefetch_fills_a_model_through_the_proxy() {
    let up = FakeUpstream::start();
    let a = blob_bytes(3 << 20, 24);
    let b = blob_bytes(4 << 20, 25);
    let manifest = up.add_model("library/llama3", "8b", &[&a[..]]);
    let v: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    let config_len = v["config"]["size"].as_u64().unwrap();
    up.add_model("library/qwen2.5", "1.5b", &[&b[..]]);
    up.faults(Faults {
        throttle: 2 << 20,
        ..Default::default()
    });
    let d = Daemon::builder().config(&config(&up, "")).start();

    let took = ctl_ok(&d, &["prefetch", "llama3:8b", "--wait"]);
    assert!(took > Duration::from_millis(1000), "waited for the fill");
    let m = model_json(&d, "registry.ollama.ai/library/llama3:8b").unwrap();
    assert_eq!(m["complete"], true, "{m}");
    assert_eq!(
        std::fs::read(d.cache_dir.join("blobs").join(digest(&a).replace(':', "-"))).unwrap(),
        a
    );
    assert_eq!(
        up.cdn_bytes(),
        a.len() as u64 + config_len,
        "one copy upstream"
    );

    let took = ctl_ok(&d, &["prefetch", "--no-wait", "qwen2.5:1.5b"]);
    assert!(
        took < Duration::from_millis(1500),
        "--no-wait took {took:?}"
    );
    let name = "registry.ollama.ai/library/qwen2.5:1.5b";
    assert_eq!(model_json(&d, name).unwrap()["complete"], false);
    // The fill goes on in the daemon.
    wait_for("the prefetched model", Duration::from_secs(20), || {
        model_json(&d, name).is_some_and(|m| m["complete"] == true)
    });

    let out = d.ctl(&["prefetch", "nosuch:1"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("404"), "{err}");
}

fn sessions(d: &Daemon) -> Vec<serde_json::Value> {
    let body = ureq::get(&d.http_url("/api/sessions"))
        .call()
        .unwrap()
        .into_body()
        .read_to_string()
        .unwrap();
    serde_json::from_str::<serde_json::Value>(&body)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn slow_downloads_show_in_sessions() {
    let size = 6usize << 20;
    let (up, layer) = slow_upstream("library/slow", size, 26);
    let d = Daemon::builder()
        .config(&config(&up, "fill_connections = 1"))
        .start();
    raw_get(http(&d), REG, "/v2/library/slow/manifests/latest", &[]);
    let dg = digest(&layer);
    let path = format!("/blobs/{dg}?registry={REG}&repo=library/slow");
    let addr = http(&d);
    let p = path.clone();
    // A ranged download from a cold fill: it lasts as long as the throttled upstream.
    let client = std::thread::spawn(move || raw_get(addr, "x", &p, &[("Range", "bytes=1048576-")]));
    let want_total = (size - (1 << 20)) as u64;
    wait_for("the session", Duration::from_secs(10), || {
        sessions(&d).iter().any(|s| {
            s["bytes_total"] == want_total
                && s["model"].as_str().unwrap().contains(&dg)
                && s["client"].as_str().unwrap().starts_with("127.0.0.1:")
        })
    });
    let r = client.join().unwrap();
    assert_eq!(r.status, 206);
    assert!(r.complete && r.body[..] == layer[1 << 20..]);
    wait_for("the session to end", Duration::from_secs(5), || {
        sessions(&d).is_empty()
    });

    // A cached blob to a client that stops reading: the mapped (zero-copy) body's session.
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET /blobs/{dg} HTTP/1.1\r\nHost: x\r\nRange: bytes=0-\r\n\r\n"
    )
    .unwrap();
    let mut first = [0u8; 4096];
    let n = s.read(&mut first).unwrap();
    assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 206"));
    wait_for("the stalled session", Duration::from_secs(5), || {
        sessions(&d)
            .iter()
            .any(|s| s["bytes_total"] == size as u64 && s["bytes_done"].as_u64().unwrap() > 0)
    });
    drop(s);
    wait_for(
        "the stalled session to end",
        Duration::from_secs(10),
        || sessions(&d).is_empty(),
    );
}

#[test]
fn fills_resume_at_start_without_http() {
    let size = 6usize << 20;
    let (up, layer) = slow_upstream("library/resume", size, 27);
    let no_http = Activate {
        http: false,
        ..Default::default()
    };
    let mut d = Daemon::builder()
        .activate(no_http)
        .config(&config(&up, "fill_connections = 1"))
        .start();
    // Without HTTP, prefetch is how a fill starts.
    ctl_ok(&d, &["prefetch", "--no-wait", "resume"]);
    let dg = digest(&layer);
    let map = d
        .cache_dir
        .join(".lancached/partial")
        .join(format!("{}.map", dg.replace(':', "-")));
    wait_for("a landed slice", Duration::from_secs(20), || {
        std::fs::read(&map)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .is_some_and(|j| !j["landed"].as_array().unwrap().is_empty())
    });
    d.kill9();
    let dir = d.into_dir();
    let _ = std::fs::remove_file(dir.path().join("control.sock"));
    up.faults(Faults::default());
    let d = Daemon::builder()
        .activate(no_http)
        .dir(dir)
        .config(&config(&up, ""))
        .start();
    let blob = d.cache_dir.join("blobs").join(dg.replace(':', "-"));
    wait_for(
        "the resumed fill to publish",
        Duration::from_secs(30),
        || blob.exists(),
    );
    assert_eq!(std::fs::read(&blob).unwrap(), layer);
}
