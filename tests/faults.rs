//! Fault injection: the real daemon against the fake registry + CDN of `util::upstream`, each
//! fault repeated at random (but seeded, so reproducible) moments and offsets. What it checks:
//!
//! - Upstream truncation and corruption at random offsets (100 runs, one blob each, 16 parallel
//!   ranged clients that do not check the status, as Ollama, plus one whole-blob client): no
//!   response that reaches the blob's last byte ever completes with wrong bytes, a truncating
//!   upstream never yields a wrong byte at all, `blobs/` never holds a file whose sha256 is not
//!   its name; a transient truncation is retried and the blob verifies; persistent corruption
//!   publishes nothing; once the upstream heals, every blob pulls and verifies.
//! - `kill -9` of the daemon at random moments of a throttled fill (20 runs, some killed twice):
//!   the restarted daemon resumes the fill by itself (or on the next request), publishes a
//!   verified blob, and upstream bytes stay within one slice per connection per kill of the size.
//! - Upstream down (5xx, then connection refused): cached models still pull, manifest and every
//!   blob, byte-exact, ranged too; an uncached model fails quickly with an error.
//! - A stalled upstream: waiters end with an aborted body within the bound the retries set (no
//!   hang), the daemon says "no data from upstream", nothing is published; once it flows again
//!   the fill resumes and refetches at most one slice. Transient stalls at random offsets, and
//!   an upstream that first sends not even a status line, are retried; a slow but steady
//!   upstream is not mistaken for a stalled one.
//! - Disk full, on a real size-limited tmpfs: a fill larger than the free space is refused with
//!   507 naming the lack of room; a fill that meets ENOSPC midway aborts its clients, the log
//!   names "No space left", hits on a cached blob are served byte-exact throughout, nothing
//!   partial or corrupt reaches `blobs/`, the partial file is removed (the free space comes
//!   back), and the same pull succeeds once room is made.
//! - Prune (`lancachectl prune --older-than 0s`) and eviction (a small `max_size`) racing with
//!   pulls: every body a client receives, complete or cut short, is a correct prefix of what it
//!   asked for; errors are clean statuses; `blobs/` stays verified.
//!
//! Seeds: `LANCACHE_FAULT_SEED` (hex or decimal) replaces the default; every failure message
//! names the seed, the run and the offset.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::util::upstream::{blob_bytes, digest, try_request, FakeUpstream, Faults, RawResponse};
use crate::util::wait_for;
use crate::util::Daemon;

const REG: &str = "registry.ollama.ai";
const MIB: usize = 1 << 20;
const SLICE: u64 = 1 << 20;

/// The run's seed: `LANCACHE_FAULT_SEED` or a fixed default.
fn seed() -> u64 {
    std::env::var("LANCACHE_FAULT_SEED")
        .ok()
        .and_then(|s| match s.strip_prefix("0x") {
            Some(h) => u64::from_str_radix(h, 16).ok(),
            None => s.parse().ok(),
        })
        .unwrap_or(0x1a2b_3c4d_5e6f_7081)
}

/// xorshift64*: small, deterministic, good enough to spread offsets and delays.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    /// Uniform in `a..b`.
    fn range(&mut self, a: u64, b: u64) -> u64 {
        a + self.below(b - a)
    }
}

/// A daemon whose only registry is the fake; `cache` adds lines to `[cache]`.
fn daemon(up_url: &str, ttl: &str, cache: &str, dir: Option<tempfile::TempDir>) -> Daemon {
    let mut lines = cache.to_string();
    for (k, v) in [
        ("slice_size", "\"1MiB\""),
        ("stall_timeout", "\"2s\""),
        ("max_fills", "32"),
    ] {
        if !cache.lines().any(|l| l.starts_with(k)) {
            lines.push_str(&format!("{k} = {v}\n"));
        }
    }
    let mut b = Daemon::builder().config(&format!(
        "[upstream]\nresolvers = []\nmanifest_ttl = \"{ttl}\"\n[upstream.registries]\n\"{REG}\" = \"{up_url}\"\n[cache]\n{lines}"
    ));
    if let Some(dir) = dir {
        b = b.dir(dir);
    }
    b.start()
}

fn http(d: &Daemon) -> SocketAddr {
    d.http.unwrap()
}

/// A GET (or HEAD) that never panics: a connection the daemon drops is a response with
/// `complete == false`, a refused one status 0.
fn get(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> RawResponse {
    try_request(addr, method, &addr.to_string(), path, headers).unwrap_or(RawResponse {
        status: 0,
        headers: HashMap::new(),
        body: Vec::new(),
        complete: false,
    })
}

fn registry_get(d: &Daemon, path: &str) -> RawResponse {
    try_request(http(d), "GET", REG, path, &[]).unwrap_or(RawResponse {
        status: 0,
        headers: HashMap::new(),
        body: Vec::new(),
        complete: false,
    })
}

/// Finds a blob's direct URL like Ollama (the registry's 200 names its own URL), or the status.
fn data_plane_path(d: &Daemon, repo: &str, dg: &str) -> Result<String, u16> {
    crate::util::upstream::direct_url(http(d), REG, &format!("/v2/{repo}/blobs/{dg}"))
}

fn blob_file(cache: &Path, dg: &str) -> PathBuf {
    cache.join("blobs").join(dg.replace(':', "-"))
}

fn sha256_file(p: &Path) -> Option<String> {
    std::fs::read(p).ok().map(|b| digest(&b))
}

/// Like `sha256_file`, with `Ok(None)` for a file removed meanwhile (prune, eviction).
fn sha256_if_there(p: &Path) -> Result<Option<String>, std::io::Error> {
    match std::fs::read(p) {
        Ok(b) => Ok(Some(digest(&b))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Every file in `blobs/` whose content does not hash to its name (or whose name is not a
/// digest at all): what must never exist.
fn bad_blobs(cache: &Path) -> Vec<String> {
    let mut bad = Vec::new();
    for e in std::fs::read_dir(cache.join("blobs"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = e.file_name().to_string_lossy().to_string();
        let want = name.replacen("sha256-", "sha256:", 1);
        let ok = name.starts_with("sha256-")
            && name.len() == 7 + 64
            && match sha256_if_there(&e.path()) {
                Ok(Some(got)) => got == want,
                Ok(None) => true,
                Err(_) => false,
            };
        if !ok {
            bad.push(name);
        }
    }
    bad
}

/// Whether the daemon has a fill of `dg` in flight (`/cache/stats`).
fn filling(d: &Daemon, dg: &str) -> bool {
    let r = get(http(d), "GET", "/cache/stats", &[]);
    let j: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
    j["fills"]
        .as_array()
        .is_some_and(|f| f.iter().any(|f| f["digest"] == dg))
}

/// Ollama's split of a blob into 16 ranges (it uses ≥100 MB parts; the same shape, smaller).
/// Offers `layer` upstream as the one layer of `repo:latest`, misbehaving as `faults` says for
/// that blob alone (so concurrent runs each have their own); returns the blob's digest.
fn add_faulty_model(up: &FakeUpstream, repo: &str, layer: &[u8], faults: Faults) -> String {
    up.add_model(repo, "latest", &[layer]);
    let dg = digest(layer);
    up.blob_faults(&dg, Some(faults));
    dg
}

/// GETs `path` once per ask, all at the same time, each on its own thread: `Some((a, b))` asks
/// for the bytes `a..b` with a Range, `None` for the whole blob. Answers come back in ask order.
fn get_all_at_once(addr: SocketAddr, path: &str, asks: &[Option<(u64, u64)>]) -> Vec<RawResponse> {
    let clients: Vec<_> = asks
        .iter()
        .map(|&ask| {
            let path = path.to_string();
            std::thread::spawn(move || match ask {
                Some((a, b)) => {
                    let range = format!("bytes={a}-{}", b - 1);
                    get(addr, "GET", &path, &[("Range", &range)])
                }
                None => get(addr, "GET", &path, &[]),
            })
        })
        .collect();
    clients.into_iter().map(|c| c.join().unwrap()).collect()
}

fn parts(size: u64) -> Vec<(u64, u64)> {
    let n = 16u64;
    let part = size.div_ceil(n);
    (0..n)
        .map(|i| (i * part, ((i + 1) * part).min(size)))
        .filter(|(a, b)| a < b)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// 1. Truncation and corruption at random offsets.

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Truncate,
    Corrupt,
}

#[derive(Default, Debug)]
struct Tally {
    runs: u64,
    responses: u64,
    complete: u64,
    aborted: u64,
    /// Complete responses reaching the last byte with wrong bytes: must stay 0.
    bad_final: u64,
    /// Any wrong byte received from a truncating upstream: must stay 0.
    bad_truncation_bytes: u64,
    /// All 16 parts complete yet the assembled blob is wrong: must stay 0.
    bad_assembled: u64,
    /// A 206 whose Content-Range is not the range asked for: must stay 0.
    wrong_range: u64,
    /// Published files that do not hash to their name: must stay 0.
    corrupt_published: u64,
    /// Mid-blob parts that completed with the corrupt byte (by design: only the last byte is
    /// held back until the digest verifies; the client's own sha256 then fails).
    mid_parts_with_corrupt_byte: u64,
    published_during_fault: u64,
    fills_failed_runs: u64,
    recovered: u64,
}

#[test]
fn truncation_and_corruption_at_random_offsets() {
    const RUNS: u64 = 100;
    const WORKERS: usize = 16;
    let seed = seed();
    let base = seed;
    let t0 = Instant::now();
    let up = Arc::new(FakeUpstream::start());
    let d = Arc::new(daemon(&up.url(), "10m", "fill_connections = 4\n", None));

    struct Run {
        i: u64,
        kind: Kind,
        offset: u64,
        limit: Option<u32>,
        layer: Vec<u8>,
        dg: String,
        repo: String,
    }
    let runs: Vec<Run> = (0..RUNS)
        .map(|i| {
            let mut rng = Rng::new(seed ^ (i + 1).wrapping_mul(0xA24B_AED4_963E_E407));
            let size = rng.range(MIB as u64 + 1, 5 * MIB as u64 / 2) as usize;
            let kind = if i % 2 == 0 {
                Kind::Truncate
            } else {
                Kind::Corrupt
            };
            let offset = rng.below(size as u64);
            let limit = match kind {
                Kind::Truncate => [Some(1), Some(2), Some(3), None][rng.below(4) as usize],
                Kind::Corrupt => [Some(1), None][rng.below(2) as usize],
            };
            let layer = blob_bytes(size, seed.wrapping_add(i));
            let repo = format!("library/f{i}");
            let dg = add_faulty_model(
                &up,
                &repo,
                &layer,
                Faults {
                    truncate_at: (kind == Kind::Truncate).then_some(offset),
                    corrupt_at: (kind == Kind::Corrupt).then_some(offset),
                    limit,
                    ..Default::default()
                },
            );
            Run {
                i,
                kind,
                offset,
                limit,
                layer,
                dg,
                repo,
            }
        })
        .collect();
    let runs = Arc::new(Mutex::new(runs.into_iter()));
    let tally = Arc::new(Mutex::new(Tally::default()));

    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let (runs, tally, d, up) = (runs.clone(), tally.clone(), d.clone(), up.clone());
            std::thread::spawn(move || loop {
                let Some(run) = runs.lock().unwrap().next() else {
                    return;
                };
                let Run {
                    i,
                    kind,
                    offset,
                    limit,
                    layer,
                    dg,
                    repo,
                } = run;
                let ctx = format!(
                    "LANCACHE_FAULT_SEED={base:#x} run={i} {kind:?} at offset {offset} of {} (limit {limit:?})",
                    layer.len()
                );
                let size = layer.len() as u64;
                let m = registry_get(&d, &format!("/v2/{repo}/manifests/latest"));
                assert_eq!(m.status, 200, "{ctx}");
                let path = data_plane_path(&d, &repo, &dg).expect(&ctx);
                let addr = http(&d);
                // 16 ranged clients and one whole-blob client, all at once.
                let mut asks: Vec<Option<(u64, u64)>> = parts(size).into_iter().map(Some).collect();
                asks.push(None);
                let answers = get_all_at_once(addr, &path, &asks);
                wait_for(
                    &format!("the fill to end ({ctx})"),
                    Duration::from_secs(60),
                    || !filling(&d, &dg),
                );
                let published = blob_file(&d.cache_dir, &dg);
                let mut t = Tally {
                    runs: 1,
                    ..Default::default()
                };
                if published.exists() {
                    t.published_during_fault = 1;
                    if sha256_file(&published).as_deref() != Some(dg.as_str()) {
                        t.corrupt_published += 1;
                    }
                }
                let mut assembled = vec![0u8; size as usize];
                let mut all_parts = true;
                for (ask, r) in asks.iter().zip(&answers) {
                    t.responses += 1;
                    let (a, b) = ask.unwrap_or((0, size));
                    let want = &layer[a as usize..b as usize];
                    if r.status == 206 {
                        let cr = format!("bytes {a}-{}/{size}", b - 1);
                        if r.headers.get("content-range") != Some(&cr) {
                            t.wrong_range += 1;
                        }
                    }
                    let got_ok = r.body.len() <= want.len() && r.body[..] == want[..r.body.len()];
                    if kind == Kind::Truncate && !got_ok {
                        t.bad_truncation_bytes += 1;
                    }
                    if r.complete {
                        t.complete += 1;
                        if b == size && r.body != want {
                            t.bad_final += 1;
                        }
                        if b < size && r.body != want {
                            t.mid_parts_with_corrupt_byte += 1;
                        }
                        if ask.is_some() {
                            assembled[a as usize..b as usize].copy_from_slice(&r.body[..]);
                        }
                    } else {
                        t.aborted += 1;
                        if ask.is_some() {
                            all_parts = false;
                        }
                    }
                }
                if all_parts && assembled != layer {
                    t.bad_assembled += 1;
                }
                // What each fault must lead to.
                match (kind, limit) {
                    (Kind::Truncate, Some(_)) => {
                        // At most 3 cut responses against 5 attempts per slice: retried, whole.
                        assert!(
                            answers.iter().all(|r| r.complete),
                            "a transient truncation was not retried to completion ({ctx})"
                        );
                        assert!(published.exists(), "{ctx}");
                    }
                    (_, None) => {
                        assert!(!published.exists(), "persistent fault published ({ctx})");
                        assert!(!answers.last().unwrap().complete, "{ctx}");
                        t.fills_failed_runs = 1;
                    }
                    (Kind::Corrupt, Some(_)) => {}
                }
                // The upstream heals: the same blob pulls whole and verifies.
                up.blob_faults(&dg, None);
                let r = get(addr, "GET", &path, &[]);
                assert!(
                    r.complete && r.body == layer,
                    "no recovery after the fault ({ctx})"
                );
                wait_for(&format!("publish ({ctx})"), Duration::from_secs(30), || {
                    published.exists()
                });
                assert_eq!(
                    sha256_file(&published).as_deref(),
                    Some(dg.as_str()),
                    "{ctx}"
                );
                t.recovered = 1;
                let mut all = tally.lock().unwrap();
                all.runs += t.runs;
                all.responses += t.responses;
                all.complete += t.complete;
                all.aborted += t.aborted;
                all.bad_final += t.bad_final;
                all.bad_truncation_bytes += t.bad_truncation_bytes;
                all.bad_assembled += t.bad_assembled;
                all.wrong_range += t.wrong_range;
                all.corrupt_published += t.corrupt_published;
                all.mid_parts_with_corrupt_byte += t.mid_parts_with_corrupt_byte;
                all.published_during_fault += t.published_during_fault;
                all.fills_failed_runs += t.fills_failed_runs;
                all.recovered += t.recovered;
                assert_eq!(
                    (
                        t.bad_final,
                        t.bad_truncation_bytes,
                        t.bad_assembled,
                        t.wrong_range,
                        t.corrupt_published
                    ),
                    (0, 0, 0, 0, 0),
                    "{ctx}: {t:?}"
                );
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let bad = bad_blobs(&d.cache_dir);
    assert!(
        bad.is_empty(),
        "LANCACHE_FAULT_SEED={base:#x}: unverified files in blobs/: {bad:?}"
    );
    let t = tally.lock().unwrap();
    assert_eq!(t.runs, RUNS);
    assert_eq!(t.recovered, RUNS);
    let stats = d.ctl_json(&["stats"]);
    eprintln!(
        "faults: truncation/corruption LANCACHE_FAULT_SEED={base:#x}: {t:?}; daemon failures {}; {:.1}s",
        stats["cache"]["failures"],
        t0.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------------------------------------
// 2. kill -9 at random moments of a fill.

/// How many slices the slice map of `dg` records as landed.
fn landed(cache: &Path, dg: &str) -> Option<usize> {
    let map = cache
        .join(".lancached/partial")
        .join(format!("{}.map", dg.replace(':', "-")));
    let j: serde_json::Value = serde_json::from_slice(&std::fs::read(map).ok()?).ok()?;
    Some(j["landed"].as_array()?.len())
}

#[test]
fn kill9_at_random_moments_of_a_fill() {
    const RUNS: u64 = 20;
    const CONNS: u64 = 2;
    let base = seed();
    let seed = base ^ 0x6b69_6c6c;
    let t0 = Instant::now();
    let up = FakeUpstream::start();
    let cache = format!("fill_connections = {CONNS}\n");
    let mut dir = None;
    let (mut kills, mut by_itself, mut on_request, mut overhead) = (0u64, 0u64, 0u64, 0u64);
    let mut total = 0u64;
    let mut after_publish = 0u64;
    #[derive(Clone, Copy)]
    enum AtKill {
        NotStarted,
        Partial,
        Published,
    }
    for i in 0..RUNS {
        let mut rng = Rng::new(seed ^ (i + 1).wrapping_mul(0xA24B_AED4_963E_E407));
        let size = rng.range(2 * MIB as u64, 4 * MIB as u64) as usize;
        let layer = blob_bytes(size, seed.wrapping_add(i));
        let repo = format!("library/k{i}");
        // 2 connections of 6 MiB/s: a fill lasts 0.17–0.33 s.
        let dg = add_faulty_model(
            &up,
            &repo,
            &layer,
            Faults {
                throttle: 6 << 20,
                ..Default::default()
            },
        );
        let twice = rng.below(4) == 0;
        let delays = [rng.range(0, 300), rng.range(0, 200)];
        let ctx = format!(
            "LANCACHE_FAULT_SEED={base:#x} run={i} size={size} delays={delays:?} twice={twice}"
        );

        let mut d = daemon(&up.url(), "10m", &cache, dir.take());
        assert_eq!(
            registry_get(&d, &format!("/v2/{repo}/manifests/latest")).status,
            200,
            "{ctx}"
        );
        // The registry GET starts the fill before it answers.
        let path = data_plane_path(&d, &repo, &dg).expect(&ctx);
        let addr = http(&d);
        let p2 = path.clone();
        let client = std::thread::spawn(move || get(addr, "GET", &p2, &[]));
        let mut run_kills = 0;
        let mut at_kill = AtKill::NotStarted;
        for (k, delay) in delays.iter().enumerate() {
            if k == 1 && !twice {
                break;
            }
            std::thread::sleep(Duration::from_millis(*delay));
            d.kill9();
            run_kills += 1;
            let bad = bad_blobs(&d.cache_dir);
            assert!(bad.is_empty(), "{ctx}: {bad:?}");
            at_kill = if blob_file(&d.cache_dir, &dg).exists() {
                AtKill::Published
            } else if landed(&d.cache_dir, &dg).is_some() {
                AtKill::Partial
            } else {
                AtKill::NotStarted
            };
            let tmp = d.into_dir();
            d = daemon(&up.url(), "10m", &cache, Some(tmp));
        }
        let r = client.join().unwrap();
        assert!(
            !r.complete || r.body == layer,
            "a complete body with wrong bytes ({ctx})"
        );
        kills += run_kills;
        // Resumed by itself (a slice map was left), or started by the next request.
        match at_kill {
            AtKill::Partial => {
                wait_for(
                    &format!("the resumed fill ({ctx})"),
                    Duration::from_secs(30),
                    || blob_file(&d.cache_dir, &dg).exists(),
                );
                by_itself += 1;
            }
            AtKill::NotStarted => on_request += 1,
            AtKill::Published => after_publish += 1,
        }
        let r = get(http(&d), "GET", &path, &[]);
        assert!(r.complete && r.body == layer, "{ctx}");
        assert_eq!(
            sha256_file(&blob_file(&d.cache_dir, &dg)).as_deref(),
            Some(dg.as_str()),
            "{ctx}"
        );
        // Each kill costs at most the slices in flight (plus what the fake pushed into the
        // dead socket before it noticed).
        let bytes = up.cdn_bytes_of(&dg);
        let bound = size as u64 + run_kills * CONNS * (SLICE + (64 << 10));
        assert!(bytes <= bound, "{bytes} upstream bytes > {bound} ({ctx})");
        overhead += bytes - size as u64;
        total += size as u64;
        dir = Some(d.into_dir());
    }
    assert!(
        by_itself >= RUNS / 2,
        "most kills should land mid-fill: {by_itself}"
    );
    eprintln!(
        "faults: kill -9 LANCACHE_FAULT_SEED={base:#x}: {RUNS} runs, {kills} kills, resumed by itself {by_itself}, on the next request {on_request}, killed after publishing {after_publish}, upstream overhead {:.1}% of {} MiB; {:.1}s",
        overhead as f64 * 100.0 / total as f64,
        total >> 20,
        t0.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Upstream down.

/// Pulls a model the way Ollama does (manifest, then HEAD + direct-URL GET of every blob, the
/// biggest in 16 ranges); returns the manifest bytes.
fn pull(d: &Daemon, repo: &str, blobs: &HashMap<String, Vec<u8>>) -> Vec<u8> {
    let m = registry_get(d, &format!("/v2/{repo}/manifests/latest"));
    assert_eq!(
        m.status,
        200,
        "manifest of {repo}: {}",
        String::from_utf8_lossy(&m.body)
    );
    let j: serde_json::Value = serde_json::from_slice(&m.body).unwrap();
    let mut digests = vec![j["config"]["digest"].as_str().unwrap().to_string()];
    for l in j["layers"].as_array().unwrap() {
        digests.push(l["digest"].as_str().unwrap().to_string());
    }
    for dg in digests {
        let want = &blobs[&dg];
        let head =
            try_request(http(d), "HEAD", REG, &format!("/v2/{repo}/blobs/{dg}"), &[]).unwrap();
        assert_eq!(head.status, 200, "{dg}");
        let path = data_plane_path(d, repo, &dg).unwrap();
        let r = get(http(d), "GET", &path, &[]);
        assert!(r.status == 200 && r.complete && r.body == *want, "{dg}");
        if want.len() > MIB {
            for (a, b) in parts(want.len() as u64) {
                let range = format!("bytes={a}-{}", b - 1);
                let r = get(http(d), "GET", &path, &[("Range", &range)]);
                assert!(r.status == 206 && r.complete && r.body == want[a as usize..b as usize]);
            }
        }
    }
    m.body
}

#[test]
fn upstream_down_cached_models_still_pull() {
    let up = FakeUpstream::start();
    let layers = [blob_bytes(3 * MIB / 2, 31), blob_bytes(300_000, 32)];
    let manifest = up.add_model("library/down", "latest", &[&layers[0][..], &layers[1][..]]);
    let j: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    let cfg_digest = j["config"]["digest"].as_str().unwrap().to_string();
    let mut blobs: HashMap<String, Vec<u8>> =
        layers.iter().map(|l| (digest(l), l.clone())).collect();
    // The fake's config blob is fixed; fetch it the way a client would to know its bytes.
    let d = daemon(&up.url(), "1s", "", None);
    let path = data_plane_path(&d, "library/down", &cfg_digest).unwrap();
    blobs.insert(cfg_digest.clone(), get(http(&d), "GET", &path, &[]).body);
    assert_eq!(digest(&blobs[&cfg_digest]), cfg_digest);
    assert_eq!(pull(&d, "library/down", &blobs), manifest, "cold pull");
    for dg in blobs.keys() {
        wait_for("publish", Duration::from_secs(10), || {
            blob_file(&d.cache_dir, dg).exists()
        });
    }
    let bytes = up.cdn_bytes();

    // Upstream answers 503 to everything; the manifest's TTL has run out.
    up.faults(Faults {
        status: Some(503),
        ..Default::default()
    });
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(
        pull(&d, "library/down", &blobs),
        manifest,
        "pull with upstream 503"
    );
    // Upstream gone altogether: connections refused.
    let url = up.url();
    drop(up);
    std::thread::sleep(Duration::from_millis(1100));
    assert!(std::net::TcpStream::connect(url.trim_start_matches("http://")).is_err());
    assert_eq!(
        pull(&d, "library/down", &blobs),
        manifest,
        "pull with upstream down"
    );
    let s = d.ctl_json(&["stats"]);
    assert!(
        s["cache"]["manifest_offline_serves"].as_u64().unwrap() >= 2,
        "{s}"
    );
    assert!(
        s["cache"]["bytes_from_upstream"].as_u64().unwrap() <= bytes,
        "{s}"
    );
    // A model never cached fails at once with an error, not a hang.
    let t = Instant::now();
    let r = registry_get(&d, "/v2/library/never/manifests/latest");
    assert!(r.status >= 400 && r.complete, "{}", r.status);
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
}

// ---------------------------------------------------------------------------------------------
// 4. Stalled and slow upstream.

#[test]
fn stalled_upstream_fails_waiters_cleanly_then_the_fill_retries() {
    let base = seed();
    let seed = base ^ 0x7374_616c;
    let mut rng = Rng::new(seed);
    let up = FakeUpstream::start();
    let size = 5 * MIB / 2;
    let layer = blob_bytes(size, 41);
    let offset = rng.range(1000, size as u64 - 1000);
    let ctx = format!("LANCACHE_FAULT_SEED={base:#x} stall at {offset} of {size}");
    // Every response reaching the offset goes silent far longer than stall_timeout.
    let dg = add_faulty_model(
        &up,
        "library/stall",
        &layer,
        Faults {
            stall_at: Some((offset, Duration::from_secs(20))),
            limit: Some(u32::MAX),
            ..Default::default()
        },
    );
    let d = daemon(
        &up.url(),
        "10m",
        "stall_timeout = \"1s\"\nfill_connections = 2\n",
        None,
    );
    registry_get(&d, "/v2/library/stall/manifests/latest");
    let path = data_plane_path(&d, "library/stall", &dg).unwrap();
    let addr = http(&d);
    let t = Instant::now();
    let asks = [
        None,
        Some((offset, size as u64)),
        Some((size as u64 - 10, size as u64)),
    ];
    for r in get_all_at_once(addr, &path, &asks) {
        assert!(
            !r.complete,
            "a waiter completed past a stalled upstream ({ctx})"
        );
        assert!(r.status == 200 || r.status == 206, "{ctx}: {}", r.status);
    }
    // 5 attempts × 1 s of silence + 0.5+1+2+4 s of backoff.
    let waited = t.elapsed();
    assert!(
        waited < Duration::from_secs(25),
        "waiters hung for {waited:?} ({ctx})"
    );
    wait_for("the fill to end", Duration::from_secs(10), || {
        !filling(&d, &dg)
    });
    assert!(!blob_file(&d.cache_dir, &dg).exists(), "{ctx}");
    assert!(d.stderr().contains("no data from upstream"), "{ctx}");
    let s = d.ctl_json(&["stats"]);
    assert!(
        s["cache"]["failures"]["stall"].as_u64().unwrap_or(0) >= 5,
        "{s}"
    );
    assert!(s["cache"]["fills_failed"].as_u64().unwrap() >= 1, "{s}");
    // A client arriving now starts the fill again: it resumes what landed and refetches at
    // most the slice that stalled.
    let before = up.cdn_bytes_of(&dg);
    up.blob_faults(&dg, None);
    let r = get(addr, "GET", &path, &[]);
    assert!(r.complete && r.body == layer, "{ctx}");
    let refetched = up.cdn_bytes_of(&dg) - before;
    assert!(
        refetched <= size as u64 - offset / SLICE * SLICE || refetched <= 2 * SLICE,
        "refetched {refetched} ({ctx})"
    );
    eprintln!(
        "faults: persistent stall {ctx}: waiters aborted after {:.1}s, retry refetched {refetched} bytes",
        waited.as_secs_f64()
    );
}

#[test]
fn transient_stalls_are_retried_and_slow_is_not_stalled() {
    const BLOBS: u64 = 6;
    let base = seed();
    let seed = base ^ 0x736c_6f77;
    let up = Arc::new(FakeUpstream::start());
    let d = Arc::new(daemon(
        &up.url(),
        "10m",
        "stall_timeout = \"1s\"\nfill_connections = 2\n",
        None,
    ));
    let mut jobs = Vec::new();
    let mut expected = 0;
    for i in 0..BLOBS {
        let mut rng = Rng::new(seed ^ (i + 1));
        let size = rng.range(MIB as u64 + 1, 3 * MIB as u64) as usize;
        let layer = blob_bytes(size, seed.wrapping_add(i));
        let repo = format!("library/s{i}");
        let offset = rng.below(size as u64);
        let times = 1 + rng.below(2) as u32;
        expected += times as u64;
        let dg = add_faulty_model(
            &up,
            &repo,
            &layer,
            Faults {
                stall_at: Some((offset, Duration::from_secs(10))),
                limit: Some(times),
                ..Default::default()
            },
        );
        jobs.push((
            format!(
                "LANCACHE_FAULT_SEED={base:#x} blob {i}: {times} stall(s) at {offset} of {size}"
            ),
            repo,
            dg,
            layer,
        ));
    }
    // One more, slow but steady: 2 × 256 KiB/s, 16 KiB every 62 ms, never 1 s of silence.
    let slow = blob_bytes(3 * MIB / 2, 51);
    up.add_model("library/slow", "latest", &[&slow[..]]);
    let slow_dg = digest(&slow);
    up.blob_faults(
        &slow_dg,
        Some(Faults {
            throttle: 256 << 10,
            ..Default::default()
        }),
    );
    jobs.push(("slow upstream".into(), "library/slow".into(), slow_dg, slow));
    // And one whose CDN first says nothing at all, not even a status line.
    let mute = blob_bytes(3 * MIB / 2, 52);
    up.add_model("library/mute", "latest", &[&mute[..]]);
    let mute_dg = digest(&mute);
    up.blob_faults(
        &mute_dg,
        Some(Faults {
            silent: Some(Duration::from_secs(10)),
            limit: Some(1),
            ..Default::default()
        }),
    );
    expected += 1;
    jobs.push((
        "silent upstream".into(),
        "library/mute".into(),
        mute_dg,
        mute,
    ));
    let t = Instant::now();
    let handles: Vec<_> = jobs
        .into_iter()
        .map(|(ctx, repo, dg, layer)| {
            let d = d.clone();
            std::thread::spawn(move || {
                registry_get(&d, &format!("/v2/{repo}/manifests/latest"));
                let path = data_plane_path(&d, &repo, &dg).unwrap();
                let r = get(http(&d), "GET", &path, &[]);
                assert!(r.complete && r.body == layer, "{ctx}");
                wait_for(&ctx, Duration::from_secs(10), || {
                    blob_file(&d.cache_dir, &dg).exists()
                });
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let s = d.ctl_json(&["stats"]);
    let stalls = s["cache"]["failures"]["stall"].as_u64().unwrap_or(0);
    // Each transient stall costs one failed attempt; the slow blob costs none.
    // (A loaded machine may add a spurious one; none may be missed.)
    assert!(
        stalls >= expected && stalls <= expected + 2,
        "{expected} stalls injected: {s}"
    );
    assert_eq!(s["cache"]["fills_failed"].as_u64().unwrap_or(0), 0, "{s}");
    assert!(bad_blobs(&d.cache_dir).is_empty());
    eprintln!(
        "faults: transient stalls LANCACHE_FAULT_SEED={base:#x}: {BLOBS} blobs stalled at random offsets and 1 silent, {expected} stalls injected, {stalls} stalled attempts retried, 0 failed fills, slow blob not timed out; {:.1}s",
        t.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------------------------------------
// 5. Disk full on a real, small filesystem.

/// A tmpfs of a given size mounted under a temporary directory, unmounted on drop (also when
/// the test panics). `None` when mounting is not permitted here.
struct SmallFs {
    dir: Option<tempfile::TempDir>,
    mount: PathBuf,
}

impl SmallFs {
    fn mount(size: &str) -> Option<SmallFs> {
        let dir = tempfile::Builder::new()
            .prefix("lancached-test")
            .tempdir()
            .unwrap();
        let mount = dir.path().join("cache");
        std::fs::create_dir(&mount).unwrap();
        let ok = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(&mount)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        ok.then_some(SmallFs {
            dir: Some(dir),
            mount,
        })
    }

    /// Free bytes as `statvfs` says.
    fn free(&self) -> u64 {
        let c = std::ffi::CString::new(self.mount.as_os_str().as_encoded_bytes()).unwrap();
        let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut s) }, 0);
        s.f_bavail as u64 * s.f_frsize as u64
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        // Lazy: a daemon still dying may hold files open; the mount goes when it lets go.
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.mount)
            .status();
        drop(self.dir.take());
        // The daemon's own tempdir (which held the mount point) could not remove it while
        // mounted.
        let _ = std::fs::remove_dir(&self.mount);
        if let Some(parent) = self.mount.parent() {
            let _ = std::fs::remove_dir_all(parent);
        }
    }
}

#[test]
fn disk_full_during_a_fill() {
    let Some(mut fs) = SmallFs::mount("24m") else {
        if std::env::var("LANCACHE_ALLOW_SKIP").as_deref() == Ok("1") {
            eprintln!("SKIP: mounting a tmpfs is not permitted here");
            return;
        }
        panic!("cannot mount a tmpfs (needs root or CAP_SYS_ADMIN; LANCACHE_ALLOW_SKIP=1 skips)");
    };
    let up = FakeUpstream::start();
    let small = blob_bytes(MIB, 61);
    let huge = blob_bytes(30 * MIB, 62);
    let big = blob_bytes(12 * MIB, 63);
    up.add_model("library/small", "latest", &[&small[..]]);
    up.add_model("library/huge", "latest", &[&huge[..]]);
    up.add_model("library/big", "latest", &[&big[..]]);
    let (small_dg, huge_dg, big_dg) = (digest(&small), digest(&huge), digest(&big));
    // The cache dir is the tmpfs: the harness's tempdir holds config and sockets beside it.
    let d = daemon(
        &up.url(),
        "10m",
        "fill_connections = 2\nmin_free = 0\n",
        Some(fs.dir.take().unwrap()),
    );
    assert_eq!(d.cache_dir, fs.mount);
    let addr = http(&d);
    registry_get(&d, "/v2/library/small/manifests/latest");
    let small_path = data_plane_path(&d, "library/small", &small_dg).unwrap();
    let r = get(addr, "GET", &small_path, &[]);
    assert!(r.complete && r.body == small);
    wait_for("small published", Duration::from_secs(10), || {
        blob_file(&d.cache_dir, &small_dg).exists()
    });

    // Hits on the cached blob, whole and ranged, all through what follows.
    let stop = Arc::new(AtomicBool::new(false));
    let hits = Arc::new(AtomicU64::new(0));
    let hitter = {
        let (stop, hits, path, small) = (
            stop.clone(),
            hits.clone(),
            small_path.clone(),
            small.clone(),
        );
        std::thread::spawn(move || {
            let mut rng = Rng::new(7);
            while !stop.load(Ordering::SeqCst) {
                let a = rng.below(small.len() as u64);
                let b = rng.range(a + 1, small.len() as u64 + 1);
                let range = format!("bytes={a}-{}", b - 1);
                let r = get(addr, "GET", &path, &[("Range", &range)]);
                assert!(
                    r.status == 206 && r.complete && r.body == small[a as usize..b as usize],
                    "a hit failed while the disk was full: {} {range}",
                    r.status
                );
                hits.fetch_add(1, Ordering::SeqCst);
            }
        })
    };

    // 1. Bigger than the whole disk: refused up front with 507, on both paths a client takes.
    registry_get(&d, "/v2/library/huge/manifests/latest");
    let r = registry_get(&d, &format!("/v2/library/huge/blobs/{huge_dg}"));
    assert_eq!(r.status, 507, "{}", String::from_utf8_lossy(&r.body));
    let msg = String::from_utf8_lossy(&r.body).to_string();
    assert!(msg.contains("no room for a fill"), "{msg}");
    let r = get(addr, "GET", &format!("/blobs/{huge_dg}"), &[]);
    assert_eq!(r.status, 507);
    assert!(!blob_file(&d.cache_dir, &huge_dg).exists());

    // 2. Fits when it starts, but the disk fills up under it (another writer): ENOSPC midway.
    up.blob_faults(
        &big_dg,
        Some(Faults {
            throttle: 2 << 20,
            ..Default::default()
        }),
    );
    let free_before = fs.free();
    registry_get(&d, "/v2/library/big/manifests/latest");
    let big_path = data_plane_path(&d, "library/big", &big_dg).unwrap();
    let p2 = big_path.clone();
    let client = std::thread::spawn(move || get(addr, "GET", &p2, &[]));
    let partial = d
        .cache_dir
        .join(".lancached/partial")
        .join(format!("{}.data", big_dg.replace(':', "-")));
    wait_for("the fill to write 2 MiB", Duration::from_secs(20), || {
        std::fs::metadata(&partial).is_ok_and(|m| {
            use std::os::unix::fs::MetadataExt;
            m.blocks() * 512 >= 2 << 20
        })
    });
    let filler = d.cache_dir.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0xa5u8; 64 << 10];
        // Fill until the disk says no: the filesystem is now full.
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
    }
    let t = Instant::now();
    let r = client.join().unwrap();
    assert!(
        !r.complete,
        "a client got a complete body from a fill that ran out of disk"
    );
    assert!(r.body.len() < big.len() && r.body == big[..r.body.len()]);
    wait_for("the fill to fail", Duration::from_secs(20), || {
        !filling(&d, &big_dg)
    });
    eprintln!(
        "faults: ENOSPC fill aborted its client {:.1}s after the disk filled",
        t.elapsed().as_secs_f64()
    );
    let log = d.stderr();
    assert!(
        log.contains("No space left on device"),
        "the log does not name the cause"
    );
    let s = d.ctl_json(&["stats"]);
    assert!(
        s["cache"]["failures"]["disk"].as_u64().unwrap_or(0) >= 1,
        "{s}"
    );
    assert!(!blob_file(&d.cache_dir, &big_dg).exists());
    assert!(bad_blobs(&d.cache_dir).is_empty());
    // What the failed fill wrote is given back: only the filler holds the disk.
    wait_for("the partial file to go", Duration::from_secs(10), || {
        !partial.exists()
    });
    let filler_len = std::fs::metadata(&filler).unwrap().len();
    let recovered = || fs.free() + filler_len + (256 << 10) >= free_before;
    let t = Instant::now();
    while !recovered() && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let free_after_fail = fs.free();
    let held = |what: &str| {
        std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "ls -l /proc/{}/{what} 2>/dev/null | grep deleted; grep deleted /proc/{}/maps",
                d.pid(),
                d.pid()
            ))
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
            .unwrap_or_default()
    };
    assert!(
        recovered(),
        "space not recovered: {free_before} free before the fill, {free_after_fail} after, filler {filler_len}; deleted files the daemon holds:\n{}\n{}",
        held("fd"),
        String::from_utf8_lossy(&std::process::Command::new("du").arg("-ab").arg(&fs.mount).output().unwrap().stdout)
    );
    // While the disk is full a new attempt is refused cleanly (507), not started and failed.
    let r = get(addr, "GET", &big_path, &[]);
    assert!(r.status == 507 || !r.complete, "{}", r.status);

    // Room again: the same pull succeeds and verifies.
    std::fs::remove_file(&filler).unwrap();
    up.blob_faults(&big_dg, None);
    let r = get(addr, "GET", &big_path, &[]);
    assert!(
        r.complete && r.body == big,
        "pull after freeing space: {}",
        r.status
    );
    wait_for("big published", Duration::from_secs(10), || {
        blob_file(&d.cache_dir, &big_dg).exists()
    });

    // 3. Two fills that each fit but not together (a fill in flight reserves no space): ENOSPC
    //    midway with no other writer. One at least fails cleanly; what succeeds verifies.
    let free_now = fs.free();
    assert!(free_now > 6 << 20 && free_now < 12 << 20, "{free_now} free");
    let twins: Vec<(String, Vec<u8>)> = (0..2u64)
        .map(|i| {
            let layer = blob_bytes(6 * MIB, 64 + i);
            let repo = format!("library/twin{i}");
            add_faulty_model(
                &up,
                &repo,
                &layer,
                Faults {
                    throttle: 3 << 20,
                    ..Default::default()
                },
            );
            assert_eq!(
                registry_get(&d, &format!("/v2/{repo}/manifests/latest")).status,
                200
            );
            (repo, layer)
        })
        .collect();
    let clients: Vec<_> = twins
        .iter()
        .map(|(repo, layer)| {
            let path = data_plane_path(&d, repo, &digest(layer)).unwrap();
            let layer = layer.clone();
            std::thread::spawn(move || {
                let r = get(addr, "GET", &path, &[]);
                assert!(r.body.len() <= layer.len() && r.body == layer[..r.body.len()]);
                (path, r.complete)
            })
        })
        .collect();
    let outcomes: Vec<(String, bool)> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let failed = outcomes.iter().filter(|(_, ok)| !ok).count();
    assert!(failed >= 1, "two fills bigger than the disk both completed");
    for (_, layer) in &twins {
        let dg = digest(layer);
        wait_for("the twin fills to end", Duration::from_secs(20), || {
            !filling(&d, &dg)
        });
        up.blob_faults(&dg, None);
    }
    assert!(bad_blobs(&d.cache_dir).is_empty());
    let leftover: Vec<_> = std::fs::read_dir(d.cache_dir.join(".lancached/partial"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(leftover.is_empty(), "partial files left: {leftover:?}");
    // The failed one again: eviction of the least recently used model makes room. A model's
    // use is its manifest's (every pull starts there); the hitter's blob GETs only pin the
    // blob while each one runs. So `small` is pulled again, a second later than anything
    // else (use is kept in whole seconds), to be the model that must stay.
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(
        registry_get(&d, "/v2/library/small/manifests/latest").status,
        200
    );
    for ((path, ok), (_, layer)) in outcomes.iter().zip(&twins) {
        if !ok {
            let r = get(addr, "GET", path, &[]);
            assert!(r.complete && r.body == *layer, "twin retry: {}", r.status);
        }
    }
    assert!(bad_blobs(&d.cache_dir).is_empty());
    eprintln!(
        "faults: two concurrent 6 MiB fills with {} MiB free: {failed} failed with ENOSPC, retried after eviction and verified",
        free_now >> 20
    );
    stop.store(true, Ordering::SeqCst);
    hitter.join().unwrap();
    assert!(
        hits.load(Ordering::SeqCst) > 10,
        "too few hits to mean anything"
    );
    // The cached model was neither evicted for a blob that could never fit nor refetched.
    assert!(d
        .cache_dir
        .join("manifests/registry.ollama.ai/library/small/latest")
        .exists());
    assert_eq!(up.cdn_bytes_of(&small_dg), small.len() as u64);
    assert!(bad_blobs(&d.cache_dir).is_empty());
    eprintln!(
        "faults: disk full: free {} MiB before the fill, {} MiB after it failed (filler {} MiB); {} hits served meanwhile",
        free_before >> 20,
        free_after_fail >> 20,
        filler_len >> 20,
        hits.load(Ordering::SeqCst)
    );
    drop(d);
    drop(fs);
}

// ---------------------------------------------------------------------------------------------
// 6. Prune and eviction racing with pulls.

/// Clients pulling `models` over and over, each body checked against the expected bytes as a
/// prefix (complete or not), while `disturb` runs; returns (responses, complete, clean errors).
fn race(
    d: &Arc<Daemon>,
    models: &[(String, String, Vec<u8>)],
    clients: usize,
    mut disturb: impl FnMut(&Daemon),
    seed: u64,
) -> (u64, u64, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Mutex::new((0u64, 0u64, 0u64)));
    let models = Arc::new(models.to_vec());
    let handles: Vec<_> = (0..clients)
        .map(|c| {
            let (d, stop, counts, models) =
                (d.clone(), stop.clone(), counts.clone(), models.clone());
            std::thread::spawn(move || {
                let mut rng = Rng::new(seed ^ (c as u64 + 1));
                while !stop.load(Ordering::SeqCst) {
                    let (repo, dg, layer) = &models[rng.below(models.len() as u64) as usize];
                    let m = registry_get(&d, &format!("/v2/{repo}/manifests/latest"));
                    let path = match (m.status, data_plane_path(&d, repo, dg)) {
                        (200, Ok(p)) => p,
                        (_, Err(s)) => {
                            assert!(s >= 400, "blob direct-URL GET answered {s}");
                            counts.lock().unwrap().2 += 1;
                            continue;
                        }
                        (s, _) => panic!("manifest answered {s}"),
                    };
                    let size = layer.len() as u64;
                    let (a, b) = match rng.below(3) {
                        0 => (0, size),
                        _ => {
                            let a = rng.below(size);
                            (a, rng.range(a + 1, size + 1))
                        }
                    };
                    let range = format!("bytes={a}-{}", b - 1);
                    let r = get(http(&d), "GET", &path, &[("Range", &range)]);
                    let want = &layer[a as usize..b as usize];
                    let mut n = counts.lock().unwrap();
                    n.0 += 1;
                    match r.status {
                        206 => {
                            assert!(
                                r.body.len() <= want.len() && r.body[..] == want[..r.body.len()],
                                "wrong bytes for {repo} {range} (complete {})",
                                r.complete
                            );
                            if r.complete {
                                assert_eq!(r.body.len(), want.len());
                                n.1 += 1;
                            }
                        }
                        s if s >= 400 => n.2 += 1,
                        s => panic!("{repo} {range}: status {s}"),
                    }
                    drop(n);
                    // Idle moments, so that prune finds models unpinned.
                    std::thread::sleep(Duration::from_millis(rng.below(20)));
                }
            })
        })
        .collect();
    disturb(d);
    stop.store(true, Ordering::SeqCst);
    for h in handles {
        h.join().unwrap();
    }
    let n = *counts.lock().unwrap();
    n
}

fn race_models(
    up: &FakeUpstream,
    prefix: &str,
    n: u64,
    seed: u64,
) -> Vec<(String, String, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let layer = blob_bytes(MIB + (i as usize * 100_003), seed.wrapping_add(i));
            let repo = format!("library/{prefix}{i}");
            up.add_model(&repo, "latest", &[&layer[..]]);
            (repo, digest(&layer), layer)
        })
        .collect()
}

#[test]
fn prune_racing_with_pulls() {
    const ROUNDS: u32 = 30;
    let base = seed();
    let seed = base ^ 0x7072_756e;
    let up = FakeUpstream::start();
    let models = race_models(&up, "p", 6, seed);
    let d = Arc::new(daemon(&up.url(), "10m", "fill_connections = 2\n", None));
    let mut pruned = 0u64;
    let mut rng = Rng::new(seed);
    let t = Instant::now();
    let (responses, complete, errors) = race(
        &d,
        &models,
        4,
        |d| {
            for round in 0..ROUNDS {
                std::thread::sleep(Duration::from_millis(60));
                // By age (skips models in use), or by name (the manifest goes even while its
                // blob streams; the blob waits for its pin).
                let out = if round % 2 == 0 {
                    d.ctl(&["prune", "--older-than", "0s", "--json"])
                } else {
                    let name = format!("p{}", rng.below(models.len() as u64));
                    d.ctl(&["prune", "--model", &name, "--json"])
                };
                let text = String::from_utf8_lossy(&out.stdout);
                if out.status.success() {
                    let j: serde_json::Value = serde_json::from_str(&text).unwrap();
                    pruned += j["removed"].as_array().map_or(0, |a| a.len() as u64);
                } else {
                    let err = String::from_utf8_lossy(&out.stderr);
                    assert!(
                        err.contains("not in the cache") || err.contains("in use"),
                        "{err}"
                    );
                }
                let bad = bad_blobs(&d.cache_dir);
                assert!(bad.is_empty(), "LANCACHE_FAULT_SEED={base:#x}: {bad:?}");
            }
        },
        seed,
    );
    assert!(complete > 50, "too few complete responses: {complete}");
    assert!(
        pruned > 0,
        "prune never removed anything while clients pulled"
    );
    assert!(bad_blobs(&d.cache_dir).is_empty());
    eprintln!(
        "faults: prune race LANCACHE_FAULT_SEED={base:#x}: {ROUNDS} prunes removed {pruned} models; {responses} responses, {complete} complete, {errors} clean errors, 0 wrong bytes; {:.1}s",
        t.elapsed().as_secs_f64()
    );
}

#[test]
fn eviction_racing_with_pulls() {
    let base = seed();
    let seed = base ^ 0x6576_6963;
    let up = FakeUpstream::start();
    let models = race_models(&up, "e", 5, seed);
    // Room for about two of the five: every cold fill evicts someone else.
    let d = Arc::new(daemon(
        &up.url(),
        "10m",
        "fill_connections = 2\nmax_size = \"3MiB\"\n",
        None,
    ));
    let t = Instant::now();
    let (responses, complete, errors) = race(
        &d,
        &models,
        6,
        |d| {
            let deadline = Instant::now() + Duration::from_secs(6);
            while Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(200));
                let bad = bad_blobs(&d.cache_dir);
                assert!(bad.is_empty(), "LANCACHE_FAULT_SEED={base:#x}: {bad:?}");
            }
        },
        seed,
    );
    let s = d.ctl_json(&["stats"]);
    let evicted = s["lifecycle"]["evicted_models"].as_u64().unwrap_or(0);
    assert!(evicted > 0, "no eviction happened: {s}");
    assert!(complete > 20, "too few complete responses: {complete}");
    assert!(bad_blobs(&d.cache_dir).is_empty());
    eprintln!(
        "faults: eviction race LANCACHE_FAULT_SEED={base:#x}: {evicted} models evicted; {responses} responses, {complete} complete, {errors} clean errors, 0 wrong bytes; {:.1}s",
        t.elapsed().as_secs_f64()
    );
}
