//! A cache fed from another cache (a building cache in front of a district cache):
//!
//! - Parent over HTTP as a registries entry, child in a network namespace of its own, joined to
//!   the parent's by a veth pair: the child's client pulls a manifest and a cold blob, the
//!   parent fills once from the upstream stand-in (throttled), the child's fill streams from
//!   the parent's still-running fill (the client holds bytes before the parent publishes),
//!   and upstream sends the blob exactly once (1.00x).
//! - `upstream.parent` over TLS: the child keeps the registry's name (Host and SNI
//!   registry.ollama.ai), dials the parent's HTTPS address instead of resolving it, and trusts
//!   the parent's CA through `upstream.ca_file`; the blob arrives whole, upstream sends it once.
//! - The strict 0.34.2 client (`util::strict_ollama`, nothing waived) pulls a model through a
//!   child whose `upstream.parent` is the parent over TLS: every byte verified, upstream 1.00x.
//! - A real loop (A's registry is B, B's registry is A) is refused with a 508 at A, and A's
//!   log names it; the client gets an error, not a hang.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::util::daemon::Activate;
use crate::util::netns::{self, NetNs};
use crate::util::strict_http::Net;
use crate::util::strict_ollama::StrictOllama;
use crate::util::upstream::{blob_bytes, digest, raw_get, FakeUpstream, Faults};
use crate::util::wait_for;
use crate::util::Daemon;

const REG: &str = "registry.ollama.ai";

fn published(d: &Daemon, dg: &str) -> bool {
    d.cache_dir
        .join("blobs")
        .join(dg.replace(':', "-"))
        .exists()
}

/// A GET read as it arrives: status, the body, and when its first byte came.
struct Streamed {
    status: u16,
    body: Vec<u8>,
    first_byte: Option<Instant>,
}

fn stream_get(addr: SocketAddr, host: &str, path: &str) -> Streamed {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    c.write_all(req.as_bytes()).unwrap();
    let mut r = BufReader::new(c);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
    }
    let mut body = Vec::new();
    let mut first_byte = None;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match r.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                first_byte.get_or_insert_with(Instant::now);
                body.extend_from_slice(&buf[..n]);
            }
        }
    }
    Streamed {
        status,
        body,
        first_byte,
    }
}

fn upstream_with_blob(size: usize, throttle: u64) -> (FakeUpstream, Vec<u8>) {
    let up = FakeUpstream::start();
    let layer = blob_bytes(size, 7);
    up.add_model("library/m", "latest", &[&layer[..]]);
    up.faults(Faults {
        throttle,
        ..Default::default()
    });
    (up, layer)
}

/// The district cache. One fill connection: the throttled upstream (per connection) then sends
/// the blob in order at the throttle's rate, so the fill runs for size / throttle.
fn parent_config(up: &FakeUpstream) -> String {
    format!(
        "[upstream]\nresolvers = []\n[upstream.registries]\n\"{REG}\" = \"{}\"\n[cache]\nslice_size = \"1MiB\"\nfill_connections = 1\n",
        up.url()
    )
}

#[test]
fn child_streams_from_the_parents_running_fill_across_namespaces() {
    if !netns::available() {
        eprintln!("SKIP: needs root and ip(8) for network namespaces");
        return;
    }
    let size = 4usize << 20;
    // 1 MiB/s: the parent's fill runs for about 4 s.
    let (up, layer) = upstream_with_blob(size, 1 << 20);
    let dg = digest(&layer);
    let ns = NetNs::new(&[]);
    let (root_ip, _) = ns.veth();
    let parent = Daemon::builder()
        .http_addr(format!("{root_ip}:0").parse().unwrap())
        .config(&parent_config(&up))
        .start();
    let parent_http = parent.http.unwrap();

    // The building cache, in its own namespace: its only way out is the veth to the parent.
    ns.enter();
    let child = Daemon::builder()
        .config(&format!(
            "[upstream]\nresolvers = []\n[upstream.registries]\n\"{REG}\" = \"http://{parent_http}\"\n[cache]\nslice_size = \"1MiB\"\n"
        ))
        .start();
    let http = child.http.unwrap();

    let m = raw_get(http, REG, "/v2/library/m/manifests/latest", &[]);
    assert_eq!(m.status, 200, "{}", String::from_utf8_lossy(&m.body));
    // The registry API answers a blob with 200 and the same URL as `Location`.
    let got = stream_get(http, REG, &format!("/v2/library/m/blobs/{dg}"));
    assert_eq!(got.status, 200);
    assert!(got.body == layer, "the child's client got the blob's bytes");
    // `stream_get` returns when the body ends; the parent had not published when the first
    // byte came if that byte is older than the parent's publication. Checked from the other
    // side: the first byte came well before the end of a 4 s upstream transfer.
    let first = got.first_byte.unwrap();
    wait_for("the parent publishes", Duration::from_secs(20), || {
        published(&parent, &dg)
    });
    let published_at = Instant::now();
    assert!(
        published_at.duration_since(first) > Duration::from_secs(1),
        "the child's client had bytes while the parent was still filling"
    );
    assert_eq!(
        up.cdn_bytes_of(&dg),
        size as u64,
        "upstream sent the blob once"
    );
    wait_for("the child publishes", Duration::from_secs(20), || {
        published(&child, &dg)
    });
    // The blob's rename comes a moment before the counter: wait for the count, not the file.
    wait_for(
        "the parent counts its fill",
        Duration::from_secs(20),
        || parent.ctl_json(&["stats"])["cache"]["fills_completed"] != 0,
    );
    let j = parent.ctl_json(&["stats"]);
    assert_eq!(j["cache"]["fills_completed"], 1, "{j}");
}

#[test]
fn child_streams_while_the_parent_fills_seen_from_the_parent() {
    // The same chain on two loopback daemons, watching the parent's stats: its fill is still
    // running (not published) when the child's client already holds bytes.
    let size = 4usize << 20;
    let (up, layer) = upstream_with_blob(size, 1 << 20);
    let dg = digest(&layer);
    let parent = Daemon::builder().config(&parent_config(&up)).start();
    let child = Daemon::builder()
        .config(&format!(
            "[upstream]\nresolvers = []\n[upstream.registries]\n\"{REG}\" = \"http://{}\"\n[cache]\nslice_size = \"1MiB\"\n",
            parent.http.unwrap()
        ))
        .start();
    let http = child.http.unwrap();
    assert_eq!(
        raw_get(http, REG, "/v2/library/m/manifests/latest", &[]).status,
        200
    );
    let path = format!("/v2/library/m/blobs/{dg}");
    let reader = std::thread::spawn(move || stream_get(http, REG, &path));
    // Bytes reach the child's client (its landed count grows) while the parent still fills.
    let mut seen_while_filling = false;
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(20) && !published(&parent, &dg) {
        let c = child.ctl_json(&["stats"]);
        let landed = c["cache"]["fills"]
            .as_array()
            .and_then(|f| f.first())
            .and_then(|f| f["landed"].as_u64())
            .unwrap_or(0);
        if landed > 0 && !published(&parent, &dg) {
            seen_while_filling = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        seen_while_filling,
        "the child's fill landed bytes before the parent published"
    );
    let got = reader.join().unwrap();
    assert_eq!(got.status, 200);
    assert!(got.body == layer);
    assert_eq!(up.cdn_bytes_of(&dg), size as u64, "upstream bytes 1.00x");
}

#[test]
fn upstream_parent_keeps_the_registry_name_over_tls() {
    let size = 2usize << 20;
    let (up, layer) = upstream_with_blob(size, 0);
    let dg = digest(&layer);
    let parent = Daemon::builder()
        .activate(Activate {
            https: true,
            ..Default::default()
        })
        .config(&parent_config(&up))
        .start();
    let https = parent.https.unwrap();
    let ca = parent.dir.join("ca/ca.crt");
    // The child keeps the default registries (https://registry.ollama.ai) and no resolvers:
    // nothing is resolved, every request goes to the parent.
    let child = Daemon::builder()
        .config(&format!(
            "[upstream]\nresolvers = []\nparent = \"{https}\"\nca_file = {:?}\n[cache]\nslice_size = \"1MiB\"\n",
            ca.display().to_string()
        ))
        .start();
    let http = child.http.unwrap();
    let m = raw_get(http, REG, "/v2/library/m/manifests/latest", &[]);
    assert_eq!(
        m.status,
        200,
        "{}\n{}",
        String::from_utf8_lossy(&m.body),
        child.stderr()
    );
    let got = stream_get(http, REG, &format!("/v2/library/m/blobs/{dg}"));
    assert_eq!(got.status, 200);
    assert!(got.body == layer);
    assert_eq!(up.cdn_bytes_of(&dg), size as u64);
    let j = parent.ctl_json(&["stats"]);
    assert!(j["tls"]["handshakes"].as_u64().unwrap() >= 1, "{j}");
}

#[test]
fn strict_client_pulls_through_a_child_of_a_parent() {
    let up = FakeUpstream::start();
    let layer = blob_bytes(3 << 20, 21);
    up.add_model("library/m", "latest", &[&layer[..]]);
    let parent = Daemon::builder()
        .activate(Activate {
            https: true,
            ..Default::default()
        })
        .config(&parent_config(&up))
        .start();
    let child = Daemon::builder()
        .config(&format!(
            "[upstream]\nresolvers = []\nparent = \"{}\"\nca_file = {:?}\n[cache]\nslice_size = \"1MiB\"\n",
            parent.https.unwrap(),
            parent.dir.join("ca/ca.crt").display().to_string()
        ))
        .start();
    let net = Net::new().resolve(&format!("{REG}:80"), child.http.unwrap());
    let models = tempfile::tempdir().unwrap();
    let r = StrictOllama::new(net, models.path())
        .insecure(true)
        .pull(&format!("{REG}/library/m:latest"));
    r.expect_ok("strict pull through child and parent");
    assert!(r.waived.is_empty(), "{:#?}", r.waived);
    let got = std::fs::read(crate::util::strict_ollama::blob_path(
        models.path(),
        &digest(&layer),
    ))
    .unwrap();
    assert!(got == layer);
    assert_eq!(up.cdn_bytes(), up.blob_total(), "upstream cost 1.00x");
}

#[test]
fn a_loop_between_two_caches_is_refused_and_logged() {
    let a = Daemon::start();
    let b = Daemon::builder()
        .config(&format!(
            "[upstream]\nresolvers = []\n[upstream.registries]\n\"{REG}\" = \"http://{}\"\n",
            a.http.unwrap()
        ))
        .start();
    a.write_config(&format!(
        "[upstream]\nresolvers = []\n[upstream.registries]\n\"{REG}\" = \"http://{}\"\n",
        b.http.unwrap()
    ));
    assert_eq!(a.ctl_json(&["reload"])["response"], "reloaded");
    let t = Instant::now();
    let r = raw_get(a.http.unwrap(), REG, "/v2/library/m/manifests/latest", &[]);
    assert!(r.status >= 500, "{}", r.status);
    assert!(t.elapsed() < Duration::from_secs(20), "no hang");
    wait_for("A logs the loop", Duration::from_secs(5), || {
        a.stderr().contains("request loop refused (508)")
    });
    let log = a.stderr();
    let line = log
        .lines()
        .find(|l| l.contains("request loop refused"))
        .unwrap();
    assert!(line.contains("holds this cache's own id"), "{line}");
    // A request from a client (no hop list) to B alone is not a loop.
    assert_ne!(raw_get(b.http.unwrap(), REG, "/v2/", &[]).status, 508);
}
