//! The caching registry proxy, against the fake registry + CDN in `util::upstream`:
//!
//! - Registry v2 front: `GET /v2/`; manifests proxied with the client's `Accept`, stored
//!   byte-exact at Ollama's path, served byte-exact with `Content-Type` and
//!   `Docker-Content-Digest`; TTL revalidation; offline serve when upstream is down or 5xx;
//!   404 and 401 (`WWW-Authenticate`) passed through; invalid names are 400 `NAME_INVALID`.
//! - Blob requests are never redirected: `HEAD` answers 200 with the size, `GET` 200 with the
//!   blob and a `Location` naming the same URL (Ollama's direct URL), on whatever host the client
//!   named (the registry's or the cache's own address).
//! - Loop guard: a request carrying the cache's own hop header is refused with 508.
//! - Cold fill: 16 concurrent ranged clients on one cold blob cost exactly one blob of upstream
//!   bytes; corrupt or truncating upstream publishes nothing and aborts every client's body;
//!   a one-time stall is retried and the blob still verifies; a client that disconnects does not
//!   cancel the fill; kill -9 mid-fill, restart, and the fill resumes without refetching landed
//!   slices and publishes a verified blob.
//! - Data plane conformance (RFC 9110 Range/If-Range/If-None-Match/HEAD/416).
//! - A cold `HEAD` answers the size from upstream without starting a fill.
//! - Stats in `lancachectl stats --json` and `/cache/stats`, including fills in progress.

use std::net::SocketAddr;
use std::time::Duration;

use crate::util::upstream::{
    blob_bytes, digest, direct_url, raw_get, raw_request, FakeUpstream, Faults,
};
use crate::util::wait_for;
use crate::util::Daemon;

const REG: &str = "registry.ollama.ai";

/// A daemon whose only registry is the fake; `cache` adds keys to `[cache]`.
fn daemon(up: &FakeUpstream, cache: &str) -> Daemon {
    daemon_ttl(up, "10m", cache)
}

fn daemon_ttl(up: &FakeUpstream, ttl: &str, cache: &str) -> Daemon {
    Daemon::builder()
        .config(&format!(
            "[upstream]\nresolvers = []\nmanifest_ttl = \"{ttl}\"\n[upstream.registries]\n\"registry.ollama.ai\" = \"{}\"\n[cache]\nslice_size = \"1MiB\"\nstall_timeout = \"2s\"\n{cache}",
            up.url()
        ))
        .start()
}

fn http(d: &Daemon) -> SocketAddr {
    d.http.unwrap()
}

/// Finds a blob's direct URL like Ollama: the registry's 200 names its own URL.
fn data_plane_path(d: &Daemon, repo: &str, dg: &str) -> String {
    let path = format!("/v2/{repo}/blobs/{dg}");
    let loc = direct_url(http(d), REG, &path).expect("200 with a Location");
    assert_eq!(loc, path, "the direct URL is the request's own");
    loc
}

fn blob_file(d: &Daemon, dg: &str) -> std::path::PathBuf {
    d.cache_dir.join("blobs").join(dg.replace(':', "-"))
}

#[test]
fn manifest_and_blob_through_the_cache() {
    let up = FakeUpstream::start();
    let layer = blob_bytes(3 << 20, 7);
    let manifest = up.add_model("library/tiny", "latest", &[&layer[..]]);
    let d = daemon(&up, "");

    let r = raw_get(http(&d), REG, "/v2/", &[]);
    assert_eq!(r.status, 200);

    let accept = "application/vnd.docker.distribution.manifest.v2+json";
    let r = raw_get(
        http(&d),
        REG,
        "/v2/library/tiny/manifests/latest",
        &[("Accept", accept)],
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.body, manifest, "manifest served byte-exact");
    assert_eq!(r.headers["content-type"], accept);
    assert_eq!(r.headers["docker-content-digest"], digest(&manifest));
    assert_eq!(
        up.last_accept().as_deref(),
        Some(accept),
        "client's Accept passed on"
    );
    let stored = d
        .cache_dir
        .join("manifests/registry.ollama.ai/library/tiny/latest");
    assert_eq!(
        std::fs::read(&stored).unwrap(),
        manifest,
        "stored at Ollama's path"
    );

    // Within the TTL: a hit, upstream not asked again.
    let n = up.manifest_requests();
    let r = raw_request(
        http(&d),
        "HEAD",
        REG,
        "/v2/library/tiny/manifests/latest",
        &[],
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["content-length"], manifest.len().to_string());
    assert_eq!(up.manifest_requests(), n);

    let dg = digest(&layer);
    // HEAD on the registry API answers the size itself (Ollama reads Content-Length).
    let r = raw_request(
        http(&d),
        "HEAD",
        REG,
        &format!("/v2/library/tiny/blobs/{dg}"),
        &[],
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["content-length"], layer.len().to_string());
    assert_eq!(r.headers["docker-content-digest"], dg);
    assert_eq!(r.headers["accept-ranges"], "bytes");
    assert!(!r.headers.contains_key("location"), "a HEAD is no redirect");
    let path = data_plane_path(&d, "library/tiny", &dg);
    let host = http(&d).to_string();
    let r = raw_request(http(&d), "HEAD", &host, &path, &[]);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.headers["content-length"],
        layer.len().to_string(),
        "cold HEAD knows the size"
    );
    let r = raw_get(http(&d), &host, &path, &[]);
    assert_eq!(r.status, 200);
    assert!(r.complete);
    assert_eq!(r.body, layer);
    wait_for("publish", Duration::from_secs(10), || {
        blob_file(&d, &dg).exists()
    });
    assert_eq!(std::fs::read(blob_file(&d, &dg)).unwrap(), layer);
    assert_eq!(up.cdn_bytes(), layer.len() as u64);

    // A hit: no upstream bytes. A client naming the cache itself gets the same answer.
    let r = raw_get(
        http(&d),
        &host,
        &format!("/v2/library/tiny/blobs/{dg}"),
        &[],
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.body, layer);
    assert_eq!(
        r.headers["location"],
        format!("/v2/library/tiny/blobs/{dg}")
    );
    assert_eq!(up.cdn_bytes(), layer.len() as u64);

    let stats = d.ctl_json(&["stats"]);
    let cache = &stats["cache"];
    assert_eq!(cache["blob_hits"], 1, "{stats}");
    assert!(cache["manifest_hits"].as_u64().unwrap() >= 1);
    assert_eq!(cache["bytes_from_upstream"], layer.len() as u64);
    assert_eq!(
        cache["per_registry"][REG]["bytes_from_upstream"],
        layer.len() as u64
    );
    let r = raw_get(http(&d), &host, "/cache/stats", &[]);
    let j: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(j["fills_completed"], 1);
}

#[test]
fn manifest_errors_revalidation_and_offline() {
    let up = FakeUpstream::start();
    let m1 = up.add_model("library/m", "latest", &[&blob_bytes(1000, 1)[..]]);
    let d = daemon_ttl(&up, "1s", "");
    let get = |path: &str| raw_get(http(&d), REG, path, &[]);

    for bad in [
        "/v2/library/trailing_/manifests/latest",
        "/v2/library/../etc/manifests/latest",
        "/v2/library/m/manifests/..",
        "/v2/a/b/c/manifests/latest",
        "/v2/library/m/blobs/sha256:xyz",
        "/v2/library/m/blobs/md5:00",
    ] {
        let r = get(bad);
        assert_eq!(r.status, 400, "{bad}");
        let j: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert!(
            j["errors"][0]["code"]
                .as_str()
                .unwrap()
                .ends_with("_INVALID"),
            "{bad}: {j}"
        );
    }
    assert_eq!(get("/v2/library/nope/manifests/latest").status, 404);
    up.faults(Faults {
        unauthorized: true,
        ..Default::default()
    });
    let r = get("/v2/library/other/manifests/latest");
    assert_eq!(r.status, 401);
    assert!(r.headers["www-authenticate"].starts_with("Bearer realm="));
    up.faults(Faults::default());

    assert_eq!(get("/v2/library/m/manifests/latest").body, m1);
    // The tag moves upstream: after the TTL the cache revalidates and serves the new bytes.
    let m2 = up.add_model("library/m", "latest", &[&blob_bytes(2000, 2)[..]]);
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(get("/v2/library/m/manifests/latest").body, m2);
    // Upstream failing: the cached copy is served.
    up.faults(Faults {
        status: Some(503),
        ..Default::default()
    });
    std::thread::sleep(Duration::from_millis(1200));
    let r = get("/v2/library/m/manifests/latest");
    assert_eq!((r.status, r.body), (200, m2.clone()));
    let j = d.ctl_json(&["stats"]);
    assert!(
        j["cache"]["manifest_offline_serves"].as_u64().unwrap() >= 1,
        "{j}"
    );
    assert!(
        j["cache"]["manifest_revalidations"].as_u64().unwrap() >= 1,
        "{j}"
    );

    // Loop guard.
    let r = raw_get(http(&d), REG, "/v2/", &[("X-Lancached-Hop", "1")]);
    assert_eq!(r.status, 508);
}

#[test]
fn sixteen_ranged_clients_cost_one_upstream_copy() {
    let up = FakeUpstream::start();
    let size = 16usize << 20;
    let layer = blob_bytes(size, 3);
    up.add_model("library/big", "latest", &[&layer[..]]);
    up.faults(Faults {
        throttle: 16 << 20,
        ..Default::default()
    });
    let d = daemon(&up, "fill_connections = 4");
    raw_get(http(&d), REG, "/v2/library/big/manifests/latest", &[]);
    let dg = digest(&layer);
    let path = data_plane_path(&d, "library/big", &dg);
    let addr = http(&d);
    let part = size / 16;
    let handles: Vec<_> = (0..16)
        .map(|i| {
            let path = path.clone();
            std::thread::spawn(move || {
                let range = format!("bytes={}-{}", i * part, (i + 1) * part - 1);
                raw_get(addr, &addr.to_string(), &path, &[("Range", &range)])
            })
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let r = h.join().unwrap();
        assert_eq!(r.status, 206);
        assert_eq!(
            r.headers["content-range"],
            format!("bytes {}-{}/{size}", i * part, (i + 1) * part - 1)
        );
        assert!(r.complete);
        assert!(r.body == layer[i * part..(i + 1) * part], "part {i} bytes");
    }
    wait_for("publish", Duration::from_secs(20), || {
        blob_file(&d, &dg).exists()
    });
    assert_eq!(
        up.cdn_bytes(),
        size as u64,
        "exactly one blob's worth of upstream bytes"
    );
}

fn failing_fill(faults: Faults, kind: &str) {
    let up = FakeUpstream::start();
    let size = 4usize << 20;
    let layer = blob_bytes(size, 4);
    up.add_model("library/bad", "latest", &[&layer[..]]);
    up.faults(faults);
    let d = daemon(&up, "");
    raw_get(http(&d), REG, "/v2/library/bad/manifests/latest", &[]);
    let dg = digest(&layer);
    let path = data_plane_path(&d, "library/bad", &dg);
    let addr = http(&d);
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let path = path.clone();
            std::thread::spawn(move || {
                if i == 0 {
                    raw_get(addr, &addr.to_string(), &path, &[])
                } else {
                    let range = format!("bytes={}-", i * (size / 4));
                    raw_get(addr, &addr.to_string(), &path, &[("Range", &range)])
                }
            })
        })
        .collect();
    for h in handles {
        let r = h.join().unwrap();
        assert!(
            !r.complete,
            "a client saw a complete body from a bad upstream"
        );
    }
    assert!(!blob_file(&d, &dg).exists(), "nothing published");
    let j = d.ctl_json(&["stats"]);
    assert!(
        j["cache"]["failures"][kind].as_u64().unwrap_or(0) >= 1,
        "{j}"
    );
    assert!(j["cache"]["fills_failed"].as_u64().unwrap() >= 1, "{j}");
}

#[test]
fn corrupt_upstream_publishes_nothing_and_aborts_clients() {
    failing_fill(
        Faults {
            corrupt_at: Some(3_000_000),
            ..Default::default()
        },
        "digest_mismatch",
    );
}

#[test]
fn truncating_upstream_publishes_nothing_and_aborts_clients() {
    failing_fill(
        Faults {
            truncate_at: Some(2_500_000),
            ..Default::default()
        },
        "truncated",
    );
}

#[test]
fn stalled_upstream_is_retried() {
    let up = FakeUpstream::start();
    let layer = blob_bytes(3 << 20, 5);
    up.add_model("library/st", "latest", &[&layer[..]]);
    up.faults(Faults {
        stall_at: Some((1_500_000, Duration::from_secs(6))),
        ..Default::default()
    });
    let d = daemon(&up, "");
    raw_get(http(&d), REG, "/v2/library/st/manifests/latest", &[]);
    let dg = digest(&layer);
    let path = data_plane_path(&d, "library/st", &dg);
    let r = raw_get(http(&d), &http(&d).to_string(), &path, &[]);
    assert!(r.complete);
    assert!(r.body == layer);
    let j = d.ctl_json(&["stats"]);
    assert!(
        j["cache"]["failures"]["stall"].as_u64().unwrap_or(0) >= 1,
        "{j}"
    );
}

#[test]
fn client_disconnect_does_not_cancel_the_fill() {
    let up = FakeUpstream::start();
    let layer = blob_bytes(6 << 20, 6);
    up.add_model("library/dc", "latest", &[&layer[..]]);
    up.faults(Faults {
        throttle: 4 << 20,
        ..Default::default()
    });
    let d = daemon(&up, "");
    raw_get(http(&d), REG, "/v2/library/dc/manifests/latest", &[]);
    let dg = digest(&layer);
    let path = data_plane_path(&d, "library/dc", &dg);
    {
        use std::io::{Read, Write};
        let mut c = std::net::TcpStream::connect(http(&d)).unwrap();
        write!(c, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut buf = [0u8; 4096];
        let _ = c.read(&mut buf).unwrap();
        // Dropped here: the client leaves after the first bytes.
    }
    wait_for(
        "publish after the client left",
        Duration::from_secs(30),
        || blob_file(&d, &dg).exists(),
    );
    assert_eq!(std::fs::read(blob_file(&d, &dg)).unwrap(), layer);
}

#[test]
fn kill9_mid_fill_resumes_without_refetching() {
    let up = FakeUpstream::start();
    let size = 8usize << 20;
    let layer = blob_bytes(size, 8);
    up.add_model("library/k9", "latest", &[&layer[..]]);
    up.faults(Faults {
        throttle: 2 << 20,
        ..Default::default()
    });
    let mut d = daemon(&up, "fill_connections = 1");
    raw_get(http(&d), REG, "/v2/library/k9/manifests/latest", &[]);
    let dg = digest(&layer);
    let path = data_plane_path(&d, "library/k9", &dg);
    let addr = http(&d);
    let p2 = path.clone();
    let client = std::thread::spawn(move || raw_get(addr, "x", &p2, &[]));
    let map = d
        .cache_dir
        .join(".lancached/partial")
        .join(format!("{}.map", dg.replace(':', "-")));
    let landed = |p: &std::path::Path| -> usize {
        std::fs::read(p)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .map(|j| j["landed"].as_array().unwrap().len())
            .unwrap_or(0)
    };
    wait_for("two landed slices", Duration::from_secs(30), || {
        landed(&map) >= 2
    });
    d.kill9();
    let r = client.join().unwrap();
    assert!(
        !r.complete,
        "the killed daemon's client must not see a complete body"
    );
    let landed_at_kill = landed(&map);
    assert!(!blob_file(&d, &dg).exists());
    // Every slice the map names has its bytes in the data file: the map lags the disk,
    // never leads it.
    let named: Vec<u64> =
        serde_json::from_slice::<serde_json::Value>(&std::fs::read(&map).unwrap()).unwrap()
            ["landed"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i.as_u64().unwrap())
            .collect();
    let data = std::fs::read(map.with_extension("data")).unwrap();
    for i in named {
        let r = (i as usize) << 20..((i as usize + 1) << 20).min(size);
        assert!(
            data[r.clone()] == layer[r],
            "slice {i} is named but its bytes are not there"
        );
    }
    let dir = d.into_dir();
    up.faults(Faults::default());
    // The fake may still push one chunk into the dead connection before it notices.
    std::thread::sleep(Duration::from_millis(300));
    let before = up.cdn_bytes();
    // The restarted daemon resumes the fill by itself, from the slice map.
    let d = Daemon::builder()
        .config(&format!(
            "[upstream]\nresolvers = []\n[upstream.registries]\n\"registry.ollama.ai\" = \"{}\"\n[cache]\nslice_size = \"1MiB\"\n",
            up.url()
        ))
        .dir(dir)
        .start();
    wait_for("resumed fill to publish", Duration::from_secs(30), || {
        blob_file(&d, &dg).exists()
    });
    assert_eq!(
        std::fs::read(blob_file(&d, &dg)).unwrap(),
        layer,
        "verified blob"
    );
    let refetched = up.cdn_bytes() - before;
    assert!(
        refetched <= (size - landed_at_kill * (1 << 20)) as u64,
        "refetched {refetched} bytes with {landed_at_kill} slices landed"
    );
    let r = raw_get(http(&d), "x", &path, &[]);
    assert!(r.complete && r.body == layer);
}

#[test]
fn data_plane_conformance() {
    let up = FakeUpstream::start();
    let layer = blob_bytes(1000, 9);
    up.add_model("library/c", "latest", &[&layer[..]]);
    let d = daemon(&up, "");
    let dg = digest(&layer);
    let path = data_plane_path(&d, "library/c", &dg);
    let host = http(&d).to_string();
    let r = raw_get(http(&d), &host, &path, &[]);
    assert!(r.complete && r.body == layer);
    wait_for("publish", Duration::from_secs(10), || {
        blob_file(&d, &dg).exists()
    });
    let etag = format!("\"{dg}\"");
    // (method, headers, status, body range, content-range)
    type Row<'a> = (
        &'a str,
        Vec<(&'a str, &'a str)>,
        u16,
        Option<(usize, usize)>,
        Option<&'a str>,
    );
    let table: Vec<Row> = vec![
        ("GET", vec![], 200, Some((0, 1000)), None),
        ("HEAD", vec![], 200, None, None),
        (
            "GET",
            vec![("Range", "bytes=0-99")],
            206,
            Some((0, 100)),
            Some("bytes 0-99/1000"),
        ),
        (
            "GET",
            vec![("Range", "bytes=990-")],
            206,
            Some((990, 1000)),
            Some("bytes 990-999/1000"),
        ),
        (
            "GET",
            vec![("Range", "bytes=-10")],
            206,
            Some((990, 1000)),
            Some("bytes 990-999/1000"),
        ),
        (
            "GET",
            vec![("Range", "bytes=900-5000")],
            206,
            Some((900, 1000)),
            Some("bytes 900-999/1000"),
        ),
        (
            "HEAD",
            vec![("Range", "bytes=0-9")],
            206,
            None,
            Some("bytes 0-9/1000"),
        ),
        (
            "GET",
            vec![("Range", "bytes=1000-")],
            416,
            Some((0, 0)),
            Some("bytes */1000"),
        ),
        (
            "GET",
            vec![("Range", "bytes=0-1,5-6")],
            200,
            Some((0, 1000)),
            None,
        ),
        (
            "GET",
            vec![("Range", "bytes=9-2")],
            200,
            Some((0, 1000)),
            None,
        ),
        (
            "GET",
            vec![("Range", "bytes=0-9"), ("If-Range", &etag)],
            206,
            Some((0, 10)),
            Some("bytes 0-9/1000"),
        ),
        (
            "GET",
            vec![("Range", "bytes=0-9"), ("If-Range", "\"sha256:other\"")],
            200,
            Some((0, 1000)),
            None,
        ),
        (
            "GET",
            vec![("If-None-Match", &etag)],
            304,
            Some((0, 0)),
            None,
        ),
    ];
    for (method, headers, status, body, cr) in table {
        let r = raw_request(http(&d), method, &host, &path, &headers);
        let what = format!("{method} {headers:?}");
        assert_eq!(r.status, status, "{what}");
        if let Some((a, b)) = body {
            assert_eq!(r.body, layer[a..b], "{what}");
        }
        assert_eq!(
            r.headers.get("content-range").map(String::as_str),
            cr,
            "{what}"
        );
        if status != 304 {
            assert_eq!(r.headers["accept-ranges"], "bytes", "{what}");
        }
        assert_eq!(r.headers["etag"], etag, "{what}");
        assert!(!r.headers.contains_key("content-encoding"), "{what}");
        if status == 200 || status == 206 {
            assert_eq!(r.headers["docker-content-digest"], dg, "{what}");
            assert_eq!(
                r.headers["cache-control"],
                "public, max-age=31536000, immutable"
            );
            let want = body
                .map(|(a, b)| b - a)
                .unwrap_or_else(|| cr.map(|_| 10).unwrap_or(1000));
            assert_eq!(r.headers["content-length"], want.to_string(), "{what}");
        }
    }
    // Unknown blob without an origin: 404; bad digest: 400.
    let unknown = format!("/blobs/sha256:{}", "0".repeat(64));
    assert_eq!(raw_get(http(&d), &host, &unknown, &[]).status, 404);
    assert_eq!(
        raw_get(http(&d), &host, "/blobs/sha256:../../etc/passwd", &[]).status,
        400
    );
}

#[test]
fn cold_head_probes_size_and_stats_show_active_fills() {
    let up = FakeUpstream::start();
    let layer = blob_bytes(4 << 20, 12);
    let dg = up.add_blob(layer.clone());
    up.faults(Faults {
        throttle: 1 << 20,
        ..Default::default()
    });
    let d = daemon(&up, "fill_connections = 1");
    let addr = http(&d);
    let host = addr.to_string();
    // No manifest seen: the query names the origin and the size comes from upstream.
    let path = format!("/blobs/{dg}?registry=registry.ollama.ai&repo=library/loose");
    let r = raw_request(addr, "HEAD", &host, &path, &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["content-length"], layer.len().to_string());
    assert!(up.cdn_bytes() <= 1, "a HEAD starts no fill");

    let p2 = path.clone();
    let client = std::thread::spawn(move || raw_get(addr, &addr.to_string(), &p2, &[]));
    let mut seen = serde_json::Value::Null;
    wait_for("an active fill in stats", Duration::from_secs(10), || {
        seen = d.ctl_json(&["stats"]);
        seen["cache"]["fills"]
            .as_array()
            .is_some_and(|f| f.len() == 1 && f[0]["waiters"].as_u64() == Some(1))
    });
    let f = &seen["cache"]["fills"][0];
    assert_eq!(f["digest"], dg.as_str());
    assert_eq!(f["size"], layer.len() as u64);
    assert_eq!(f["state"], "filling");
    assert_eq!(f["model"], "registry.ollama.ai/library/loose");
    let r = client.join().unwrap();
    assert!(r.complete && r.body == layer);
    // The response ends once the blob is verified; publication (fsync, rename) follows.
    let mut j = serde_json::Value::Null;
    wait_for("the fill to be published", Duration::from_secs(10), || {
        j = serde_json::from_slice(&raw_get(addr, &host, "/cache/stats", &[]).body).unwrap();
        j["fills"].as_array().map(Vec::len) == Some(0)
    });
    assert_eq!(j["fills_completed"], 1, "{j}");
}
