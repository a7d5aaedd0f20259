//! `upstream.max_rate`, the cap on what all fills together take from upstream (the precise
//! figures are the bench's, `scripts/bench/uplink.sh`; these are short and measure loosely):
//!
//! - a capped cold pull takes about size / cap, and `lancachectl stats --json` and `/metrics`
//!   show the cap and the rate in use;
//! - a reload that lifts the cap speeds up the fill already running (live on reload);
//! - a slice a client is blocked on goes before read-ahead: a ranged client near the end of a
//!   cold blob gets its slice at about slice / cap, though three other workers read ahead.

use std::time::{Duration, Instant};

use crate::util::upstream::{blob_bytes, digest, raw_get, FakeUpstream};
use crate::util::Daemon;

const REG: &str = "registry.ollama.ai";

fn daemon(up: &FakeUpstream, rate: &str, cache: &str) -> Daemon {
    Daemon::builder().config(&config(up, rate, cache)).start()
}

fn config(up: &FakeUpstream, rate: &str, cache: &str) -> String {
    format!(
        "[upstream]\nresolvers = []\nmax_rate = \"{rate}\"\n[upstream.registries]\n\"{REG}\" = \"{}\"\n[cache]\nslice_size = \"1MiB\"\n{cache}",
        up.url()
    )
}

fn model(up: &FakeUpstream, size: usize) -> (Vec<u8>, String) {
    let layer = blob_bytes(size, 11);
    up.add_model("library/m", "latest", &[&layer[..]]);
    let dg = digest(&layer);
    (layer, dg)
}

#[test]
fn a_capped_fill_runs_at_the_cap_and_stats_show_it() {
    let up = FakeUpstream::start();
    let size = 6usize << 20;
    let (layer, dg) = model(&up, size);
    // 16 Mbit/s = 2 MB/s: 6 MiB in about 3.1 s.
    let d = daemon(&up, "16Mbit", "");
    let http = d.http.unwrap();
    assert_eq!(
        raw_get(http, REG, "/v2/library/m/manifests/latest", &[]).status,
        200
    );
    let path = format!("/v2/library/m/blobs/{dg}");
    let t = Instant::now();
    let reader = std::thread::spawn(move || raw_get(http, REG, &path, &[]));
    std::thread::sleep(Duration::from_millis(2200));
    let j = d.ctl_json(&["stats"]);
    let c = &j["cache"];
    assert_eq!(c["upstream_max_rate_bytes_per_second"], 2_000_000, "{j}");
    let in_use = c["upstream_rate_bytes_per_second"].as_u64().unwrap();
    assert!(
        (1_200_000..=2_800_000).contains(&in_use),
        "rate in use {in_use}"
    );
    let human = String::from_utf8_lossy(&d.ctl(&["stats"]).stdout).to_string();
    assert!(human.contains("cap 16.0 Mbit/s"), "{human}");
    let metrics = raw_get(http, "localhost", "/metrics", &[]);
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        text.contains("lancache_cache_upstream_max_rate_bytes_per_second 2000000"),
        "{text}"
    );
    assert!(text.contains("lancache_cache_upstream_rate_bytes_per_second"));
    let r = reader.join().unwrap();
    let secs = t.elapsed().as_secs_f64();
    assert!(r.body == layer);
    let want = size as f64 / 2e6;
    assert!(
        (want * 0.8..want * 1.3).contains(&secs),
        "{secs:.2} s for {want:.2} s at the cap"
    );
    assert_eq!(up.cdn_bytes_of(&dg), size as u64);
}

#[test]
fn a_reload_changes_the_cap_of_a_running_fill() {
    let up = FakeUpstream::start();
    let size = 8usize << 20;
    let (layer, dg) = model(&up, size);
    // 8 Mbit/s = 1 MB/s: 8.4 s at this cap.
    let d = daemon(&up, "8Mbit", "");
    let http = d.http.unwrap();
    raw_get(http, REG, "/v2/library/m/manifests/latest", &[]);
    let path = format!("/v2/library/m/blobs/{dg}");
    let t = Instant::now();
    let reader = std::thread::spawn(move || raw_get(http, REG, &path, &[]));
    std::thread::sleep(Duration::from_millis(1500));
    d.write_config(&config(&up, "0", ""));
    let rep = d.ctl_json(&["reload"]);
    assert_eq!(rep["response"], "reloaded", "{rep}");
    let r = reader.join().unwrap();
    let secs = t.elapsed().as_secs_f64();
    assert!(r.body == layer);
    assert!(
        secs < 4.0,
        "{secs:.2} s: the lifted cap applied to the running fill"
    );
    assert_eq!(
        d.ctl_json(&["stats"])["cache"]["upstream_max_rate_bytes_per_second"],
        0
    );
}

#[test]
fn a_blocked_client_goes_before_read_ahead() {
    let up = FakeUpstream::start();
    let size = 8usize << 20;
    let (layer, dg) = model(&up, size);
    // 16 Mbit/s = 2 MB/s shared by 4 workers. A fair share would bring the client's 1 MiB
    // slice in about 2 s; demand first brings it in about 0.5 s.
    let d = daemon(&up, "16Mbit", "fill_connections = 4\n");
    let http = d.http.unwrap();
    raw_get(http, REG, "/v2/library/m/manifests/latest", &[]);
    let path = format!("/v2/library/m/blobs/{dg}");
    // Slice 6 of 8 (not the last: the blob's last byte waits for the whole blob's hash).
    let (from, to) = (6usize << 20, (7usize << 20) - 1);
    let range = format!("bytes={from}-{to}");
    let t = Instant::now();
    let r = raw_get(http, REG, &path, &[("Range", &range)]);
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(r.status, 206);
    assert!(r.body == layer[from..=to]);
    assert!(secs < 1.2, "{secs:.2} s for the demanded slice");
}
