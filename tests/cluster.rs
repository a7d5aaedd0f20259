//! Cluster mode (issue 15, docs/cluster.md): several lancached nodes over one SeaweedFS
//! (master, two volume servers, filer, S3 gateway), each node on a loopback address of its
//! own, in front of the upstream stand-in.
//!
//! - The store honours the lease's preconditions: a second `If-None-Match: *` create is
//!   refused (412), an `If-Match` with a stale ETag is refused, the right ETag renews; a live
//!   lease names its holder to others, an expired one is taken over by exactly one node.
//! - Clients on three nodes pulling one cold blob at once: upstream sends it once (1.00x),
//!   every client gets the verified bytes; the store then holds the whole blob.
//! - A model pulled through node A is pulled through node B from the store, manifest byte for
//!   byte and blobs: no upstream request at all; a client version upstream has not passed for
//!   those bytes is still checked upstream (the version gate holds across the cluster).
//! - DNS on every node answers the healthy nodes, itself first; a node killed drops out after
//!   one lease TTL, a node stopped cleanly at once.
//! - `prune --cluster` removes a named or old model's manifest and the blobs no kept manifest
//!   references, never a blob being filled; the node's local copy stays; a model not in the
//!   store, or a node not in cluster mode, is a clear error.
//! - `kill -9` of the lease holder mid-fill: the other node's client ends verified or
//!   aborted (never wrong bytes), and the blob is then served whole by the surviving nodes.
//! - Store stopped: local hits keep working, a cold blob is filled alone from upstream, and
//!   `lancachectl status` / `stats` (hence `/metrics`) and `/health` (still 200) say the store
//!   is unreachable.
//! - Store objects are only ever whole, verified blobs (size and sha256 checked), a blob
//!   above the single-PUT size too (multipart upload).

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use lancached::cluster::lease::{self, Acquired};
use lancached::cluster::store::Store;
use lancached::config::{ClusterConfig, HumanDuration};
use lancached::store::Digest;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};

use crate::util::seaweed::{self, Seaweed};
use crate::util::upstream::{blob_bytes, digest, raw_get, FakeUpstream, Faults};
use crate::util::wait_for;
use crate::util::Daemon;

const REG: &str = "registry.ollama.ai";

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn store_config(sw: &Seaweed, bucket: &str) -> ClusterConfig {
    ClusterConfig {
        store: format!("s3://{bucket}/lan"),
        endpoint: sw.endpoint(),
        nodes: vec!["127.0.0.11:80".into()],
        lease_ttl: HumanDuration::secs(2),
        credentials_file: sw.credentials_file(),
        ..Default::default()
    }
}

macro_rules! need_weed {
    () => {
        if !seaweed::available() {
            return;
        }
    };
}

#[test]
fn store_honours_lease_preconditions() {
    need_weed!();
    let sw = Seaweed::start();
    let store = Store::new(&store_config(&sw, "leases")).unwrap();
    let a: SocketAddr = "127.0.0.11:80".parse().unwrap();
    let b: SocketAddr = "127.0.0.12:80".parse().unwrap();
    let d = Digest::of(b"a blob");
    let ttl = Duration::from_secs(2);
    rt().block_on(async {
        // Raw preconditions first: what the lease relies on, checked against the store itself.
        let p = object_store::path::Path::from("lan/raw");
        let first = store
            .s3
            .put_opts(&p, PutPayload::from("one"), PutMode::Create.into())
            .await
            .expect("first create");
        let second = store
            .s3
            .put_opts(&p, PutPayload::from("two"), PutMode::Create.into())
            .await;
        assert!(
            matches!(second, Err(object_store::Error::AlreadyExists { .. })),
            "a second If-None-Match: * create must be refused: {second:?}"
        );
        let stale = UpdateVersion {
            e_tag: Some("\"00000000000000000000000000000000\"".into()),
            version: None,
        };
        let r = store
            .s3
            .put_opts(&p, PutPayload::from("three"), PutMode::Update(stale).into())
            .await;
        assert!(
            matches!(r, Err(object_store::Error::Precondition { .. })),
            "If-Match with a stale ETag must be refused: {r:?}"
        );
        let right = UpdateVersion {
            e_tag: first.e_tag.clone(),
            version: None,
        };
        let renewed = store
            .s3
            .put_opts(
                &p,
                PutPayload::from("four"),
                PutMode::Update(right.clone()).into(),
            )
            .await
            .expect("If-Match with the current ETag renews");
        let again = store
            .s3
            .put_opts(&p, PutPayload::from("five"), PutMode::Update(right).into())
            .await;
        assert!(
            matches!(again, Err(object_store::Error::Precondition { .. })),
            "the ETag before a renewal is stale after it: {again:?}"
        );
        assert_ne!(renewed.e_tag, first.e_tag);
        let body = store.s3.get(&p).await.unwrap().bytes().await.unwrap();
        assert_eq!(&body[..], b"four");
        let _ = PutOptions::default();

        // The lease on top.
        let got = lease::acquire(&store, &d, a, ttl).await.unwrap();
        assert!(matches!(got, Acquired::Mine { .. }), "{got:?}");
        let other = lease::acquire(&store, &d, b, ttl).await.unwrap();
        assert_eq!(other, Acquired::Held { holder: a });
        // A lets it expire: exactly one of two contenders takes it over.
        tokio::time::sleep(ttl + Duration::from_millis(300)).await;
        let c: SocketAddr = "127.0.0.13:80".parse().unwrap();
        let (rb, rc) = tokio::join!(
            lease::acquire(&store, &d, b, ttl),
            lease::acquire(&store, &d, c, ttl)
        );
        let (rb, rc) = (rb.unwrap(), rc.unwrap());
        let mine = [&rb, &rc]
            .iter()
            .filter(|r| matches!(r, Acquired::Mine { .. }))
            .count();
        assert_eq!(mine, 1, "one takeover winner: {rb:?} {rc:?}");
        lease::release(&store, &d).await.unwrap();
        let fresh = lease::acquire(&store, &d, a, ttl).await.unwrap();
        assert!(matches!(fresh, Acquired::Mine { .. }), "{fresh:?}");
    });
}

/// A free port on `ip` (bound and let go: the daemon's harness binds it again).
fn node_addr(ip: &str) -> SocketAddr {
    TcpListener::bind(format!("{ip}:0"))
        .unwrap()
        .local_addr()
        .unwrap()
}

struct Cluster {
    nodes: Vec<Daemon>,
    addrs: Vec<SocketAddr>,
}

fn start_nodes(sw: &Seaweed, up: &FakeUpstream, bucket: &str, n: usize, ttl: &str) -> Cluster {
    let addrs: Vec<SocketAddr> = (0..n)
        .map(|i| node_addr(&format!("127.0.0.{}", 11 + i)))
        .collect();
    let names: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
    let nodes = addrs
        .iter()
        .map(|a| {
            Daemon::builder()
                .http_addr(*a)
                .config(&format!(
                    "[upstream]\nresolvers = []\n[upstream.registries]\n\"{REG}\" = \"{}\"\n[cache]\nslice_size = \"1MiB\"\nfill_connections = 2\n{}",
                    up.url(),
                    sw.cluster_toml(bucket, &names, ttl)
                ))
                .start()
        })
        .collect();
    Cluster { nodes, addrs }
}

fn get_blob(addr: SocketAddr, dg: &str) -> (u16, Vec<u8>) {
    get_repo_blob(addr, "library/m", dg)
}

fn get_repo_blob(addr: SocketAddr, repo: &str, dg: &str) -> (u16, Vec<u8>) {
    let r = raw_get(addr, REG, &format!("/v2/{repo}/blobs/{dg}"), &[]);
    (r.status, r.body)
}

/// The store's copy of `dg`, if there is one.
fn store_object(sw: &Seaweed, bucket: &str, dg: &str) -> Option<Vec<u8>> {
    let d = Digest::parse(dg).unwrap();
    store_key(sw, bucket, &format!("blobs/{}", d.file_name()))
}

/// The store's object at `rel` under the test prefix, if there is one.
fn store_key(sw: &Seaweed, bucket: &str, rel: &str) -> Option<Vec<u8>> {
    sw.object(bucket, &format!("lan/{rel}"))
}

fn model(up: &FakeUpstream, size: usize, seed: u64) -> (Vec<u8>, String) {
    model_in(up, "library/m", size, seed)
}

fn model_in(up: &FakeUpstream, repo: &str, size: usize, seed: u64) -> (Vec<u8>, String) {
    let layer = blob_bytes(size, seed);
    up.add_model(repo, "latest", &[&layer[..]]);
    let dg = digest(&layer);
    (layer, dg)
}

#[test]
fn three_nodes_one_upstream_fill_then_the_store() {
    need_weed!();
    let sw = Seaweed::start();
    let up = FakeUpstream::start();
    let size = 6usize << 20;
    let (layer, dg) = model(&up, size, 21);
    // 2 MiB/s per connection: the fill runs for a second or two, long enough to overlap.
    up.faults(Faults {
        throttle: 2 << 20,
        ..Default::default()
    });
    let c = start_nodes(&sw, &up, "one", 3, "10s");
    for a in &c.addrs {
        let m = raw_get(*a, REG, "/v2/library/m/manifests/latest", &[]);
        assert_eq!(m.status, 200, "{}", String::from_utf8_lossy(&m.body));
    }
    let got: Vec<(u16, Vec<u8>)> = std::thread::scope(|s| {
        let hs: Vec<_> = c
            .addrs
            .iter()
            .map(|a| {
                let dg = dg.clone();
                s.spawn(move || get_blob(*a, &dg))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, (status, body)) in got.iter().enumerate() {
        assert_eq!(*status, 200, "node {i}");
        assert!(*body == layer, "node {i}'s client got the blob's bytes");
    }
    let logs: Vec<String> = c
        .nodes
        .iter()
        .map(|n| {
            n.stderr()
                .lines()
                .filter(|l| l.contains("cluster"))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .collect();
    assert_eq!(
        up.cdn_bytes_of(&dg),
        size as u64,
        "upstream sent the blob once for three nodes (1.00x); node logs:\n{}",
        logs.join("\n---\n")
    );
    wait_for("the blob in the store", Duration::from_secs(30), || {
        store_object(&sw, "one", &dg).is_some()
    });
    let obj = store_object(&sw, "one", &dg).unwrap();
    assert!(obj == layer, "the store object is the whole, verified blob");

    // A second model through A only; then B serves it, manifest and blob, from the store:
    // no request upstream at all.
    let (layer2, dg2) = model_in(&up, "library/m2", 3 << 20, 22);
    let m2 = raw_get(c.addrs[0], REG, "/v2/library/m2/manifests/latest", &[]);
    assert_eq!(m2.status, 200);
    let (s, b) = get_repo_blob(c.addrs[0], "library/m2", &dg2);
    assert_eq!(s, 200);
    assert!(b == layer2);
    wait_for(
        "the second blob and its manifest in the store",
        Duration::from_secs(30),
        || {
            store_object(&sw, "one", &dg2).is_some()
                && store_key(&sw, "one", "manifests/registry.ollama.ai/library/m2/latest")
                    .is_some_and(|m| m == m2.body)
        },
    );
    let (bytes_before, manifests_before) = (up.cdn_bytes(), up.manifest_requests());
    let m2b = raw_get(c.addrs[1], REG, "/v2/library/m2/manifests/latest", &[]);
    assert_eq!(m2b.status, 200);
    assert!(m2b.body == m2.body, "B served A's manifest byte for byte");
    let (s, b) = get_repo_blob(c.addrs[1], "library/m2", &dg2);
    assert_eq!(s, 200);
    assert!(b == layer2, "B served the blob from the store");
    assert_eq!(
        up.cdn_bytes(),
        bytes_before,
        "no upstream bytes for B's pull"
    );
    assert_eq!(
        up.manifest_requests(),
        manifests_before,
        "no manifest request upstream for B's pull"
    );
    // A client version upstream has not passed for these bytes is checked upstream (the
    // version gate holds across the cluster).
    let m2c = raw_get(
        c.addrs[2],
        REG,
        "/v2/library/m2/manifests/latest",
        &[("User-Agent", "ollama/0.34.2 (amd64 linux) Go/go1.24.0")],
    );
    assert_eq!(m2c.status, 200);
    assert_eq!(up.manifest_requests(), manifests_before + 1);
    drop(c);
}

#[test]
fn holder_killed_mid_fill_another_node_completes() {
    need_weed!();
    let sw = Seaweed::start();
    let up = FakeUpstream::start();
    let size = 8usize << 20;
    let (layer, dg) = model(&up, size, 31);
    up.faults(Faults {
        throttle: 1 << 20,
        ..Default::default()
    });
    let mut c = start_nodes(&sw, &up, "kill", 2, "2s");
    let (a, b) = (c.addrs[0], c.addrs[1]);
    for n in [a, b] {
        assert_eq!(
            raw_get(n, REG, "/v2/library/m/manifests/latest", &[]).status,
            200
        );
    }
    let dga = dg.clone();
    let first = std::thread::spawn(move || get_blob(a, &dga));
    wait_for("A's fill under way", Duration::from_secs(20), || {
        up.cdn_bytes_of(&dg) > 0
    });
    let dgb = dg.clone();
    let second = std::thread::spawn(move || get_blob(b, &dgb));
    std::thread::sleep(Duration::from_millis(800));
    c.nodes[0].kill9();
    let _ = first.join();
    let (status, body) = second.join().unwrap();
    // B's client: the whole verified blob, or a visible failure; never other bytes.
    if status == 200 && body.len() == size {
        assert!(body == layer, "a complete body is the blob");
    }
    // Afterwards B serves it whole (its fill took over once A's lease expired).
    wait_for("B serves the blob whole", Duration::from_secs(60), || {
        let (s, body) = get_blob(b, &dg);
        s == 200 && body == layer
    });
    wait_for("the blob in the store", Duration::from_secs(30), || {
        store_object(&sw, "kill", &dg).is_some()
    });
    assert!(store_object(&sw, "kill", &dg).unwrap() == layer);
}

#[test]
fn store_lost_local_hits_and_fill_alone() {
    need_weed!();
    let mut sw = Seaweed::start();
    let up = FakeUpstream::start();
    let (layer, dg) = model(&up, 2 << 20, 41);
    let c = start_nodes(&sw, &up, "lost", 2, "5s");
    let (a, b) = (c.addrs[0], c.addrs[1]);
    assert_eq!(
        raw_get(a, REG, "/v2/library/m/manifests/latest", &[]).status,
        200
    );
    assert_eq!(get_blob(a, &dg), (200, layer.clone()));
    let st = c.nodes[1].ctl_json(&["status"]);
    assert_eq!(st["cluster"]["store_reachable"], true, "{st}");
    assert_eq!(st["cluster"]["node"], b.to_string(), "{st}");
    assert_eq!(st["cluster"]["nodes"].as_array().unwrap().len(), 2, "{st}");
    sw.stop();
    assert!(!sw.listening());
    // A local hit needs no store.
    assert_eq!(get_blob(a, &dg), (200, layer.clone()));
    // A cold blob on B: filled alone from upstream (docs/cluster.md, "Store lost").
    assert_eq!(
        raw_get(b, REG, "/v2/library/m/manifests/latest", &[]).status,
        200
    );
    let (s, body) = get_blob(b, &dg);
    assert_eq!(s, 200);
    assert!(body == layer);
    // ... and says so: `status` and `stats` (which `/metrics` renders).
    let st = c.nodes[1].ctl_json(&["status"]);
    assert_eq!(st["cluster"]["store_reachable"], false, "{st}");
    let stats = c.nodes[1].ctl_json(&["stats"]);
    assert_eq!(stats["cluster"]["store_reachable"], false, "{stats}");
    let health = crate::util::upstream::raw_get(b, "lancache", "/health", &[]);
    assert_eq!(health.status, 200, "a node without its store still serves");
    let health: serde_json::Value = serde_json::from_slice(&health.body).unwrap();
    assert_eq!(health["cluster"]["store"], "unreachable", "{health}");
    let human = c.nodes[1].ctl(&["status"]);
    assert!(
        String::from_utf8_lossy(&human.stdout).contains("UNREACHABLE"),
        "{}",
        String::from_utf8_lossy(&human.stdout)
    );
}

#[test]
fn large_blob_goes_up_as_a_whole_multipart_object() {
    need_weed!();
    let sw = Seaweed::start();
    let up = FakeUpstream::start();
    // Above the 16 MiB single-PUT limit: a multipart upload of two parts.
    let (layer, dg) = model(&up, 20 << 20, 51);
    let c = start_nodes(&sw, &up, "big", 1, "10s");
    let a = c.addrs[0];
    assert_eq!(
        raw_get(a, REG, "/v2/library/m/manifests/latest", &[]).status,
        200
    );
    let (s, body) = get_blob(a, &dg);
    assert_eq!(s, 200);
    assert!(body == layer);
    wait_for("the blob in the store", Duration::from_secs(60), || {
        store_object(&sw, "big", &dg).is_some()
    });
    let obj = store_object(&sw, "big", &dg).unwrap();
    assert_eq!(obj.len(), layer.len());
    assert_eq!(
        digest(&obj),
        dg,
        "the store object is the whole, verified blob"
    );
}

/// `dig +short` of a registry name against `d`'s DNS, in answer order.
fn dig_a(d: &Daemon) -> Vec<String> {
    crate::util::dig_short(std::process::Command::new("dig"), d.dns.unwrap(), REG, "A")
}

#[test]
fn dns_answers_the_healthy_nodes_local_first() {
    need_weed!();
    if !crate::util::require_program("dig") {
        return;
    }
    let sw = Seaweed::start();
    let up = FakeUpstream::start();
    let mut c = start_nodes(&sw, &up, "dns", 3, "2s");
    let ip = |i: usize| c.addrs[i].ip().to_string();
    let (a, b, d) = (ip(0), ip(1), ip(2));
    // Every node answers with itself first, then the live others in configured order.
    wait_for("B to see all three", Duration::from_secs(15), || {
        dig_a(&c.nodes[1]) == [b.clone(), a.clone(), d.clone()]
    });
    wait_for("C to see all three", Duration::from_secs(15), || {
        dig_a(&c.nodes[2]) == [d.clone(), a.clone(), b.clone()]
    });
    let st = c.nodes[0].ctl_json(&["status"]);
    assert_eq!(
        st["cluster"]["healthy_nodes"].as_array().map(|v| v.len()),
        Some(3),
        "{st}"
    );
    // C dies without a word: it drops out once its heartbeat expires (one TTL).
    c.nodes[2].kill9();
    wait_for(
        "C to drop out of A's answers",
        Duration::from_secs(15),
        || dig_a(&c.nodes[0]) == [a.clone(), b.clone()],
    );
    // A stops cleanly: it deletes its heartbeat, and B drops it well before a TTL could pass.
    c.nodes[0].stop(Duration::from_secs(10));
    wait_for(
        "A to drop out of B's answers",
        Duration::from_secs(5),
        || dig_a(&c.nodes[1]) == [b.clone()],
    );
}

/// Pulls `repo:latest` through `addr` as a client does: the manifest, then every blob.
fn pull(addr: SocketAddr, repo: &str) -> Vec<String> {
    let m = raw_get(addr, REG, &format!("/v2/{repo}/manifests/latest"), &[]);
    assert_eq!(m.status, 200, "{}", String::from_utf8_lossy(&m.body));
    let v: serde_json::Value = serde_json::from_slice(&m.body).unwrap();
    let mut dgs = vec![v["config"]["digest"].as_str().unwrap().to_string()];
    for l in v["layers"].as_array().unwrap() {
        dgs.push(l["digest"].as_str().unwrap().to_string());
    }
    for d in &dgs {
        assert_eq!(get_repo_blob(addr, repo, d).0, 200, "{repo} {d}");
    }
    dgs
}

#[test]
fn prune_cluster_removes_from_the_store_what_no_kept_manifest_needs() {
    need_weed!();
    let sw = Seaweed::start();
    let up = FakeUpstream::start();
    // Two models sharing their config blob.
    let (_, x) = model_in(&up, "library/m1", 1 << 20, 61);
    let (_, y) = model_in(&up, "library/m2", 1 << 20, 62);
    let c = start_nodes(&sw, &up, "prune", 1, "10s");
    let a = c.addrs[0];
    let m1 = pull(a, "library/m1");
    let m2 = pull(a, "library/m2");
    let config = m1[0].clone();
    assert_eq!(m2[0], config, "the models share their config");
    wait_for("both models in the store", Duration::from_secs(30), || {
        m1.iter()
            .chain(&m2)
            .all(|d| store_object(&sw, "prune", d).is_some())
            && store_key(
                &sw,
                "prune",
                "manifests/registry.ollama.ai/library/m1/latest",
            )
            .is_some()
            && store_key(
                &sw,
                "prune",
                "manifests/registry.ollama.ai/library/m2/latest",
            )
            .is_some()
    });

    // A dry run changes nothing, and says what would go: m1 and its own layer only.
    let dry = c.nodes[0].ctl_json(&["prune", "--cluster", "--model", "m1", "--dry-run"]);
    assert_eq!(dry["removed"][0]["name"], "m1:latest", "{dry}");
    assert_eq!(dry["blobs_removed"], 1, "{dry}");
    assert_eq!(dry["bytes_freed"], 1 << 20, "{dry}");
    assert!(store_object(&sw, "prune", &x).is_some());

    let done = c.nodes[0].ctl_json(&["prune", "--cluster", "--model", "m1"]);
    assert_eq!(done["blobs_removed"], 1, "{done}");
    assert!(
        store_object(&sw, "prune", &x).is_none(),
        "m1's own layer left the store"
    );
    assert!(
        store_key(
            &sw,
            "prune",
            "manifests/registry.ollama.ai/library/m1/latest"
        )
        .is_none(),
        "m1's manifest left the store"
    );
    assert!(
        store_object(&sw, "prune", &config).is_some(),
        "m2 still needs the config"
    );
    assert!(store_object(&sw, "prune", &y).is_some());
    // The node's own copy is its own: still a local hit.
    let before = up.cdn_bytes();
    assert_eq!(get_repo_blob(a, "library/m1", &x).0, 200);
    assert_eq!(up.cdn_bytes(), before);

    // A blob being filled (its lease is held) is never removed, however old the prune's age.
    let orphan = blob_bytes(4096, 63);
    let od = digest(&orphan);
    let store = Store::new(&store_config(&sw, "prune")).unwrap();
    let odg = Digest::parse(&od).unwrap();
    rt().block_on(async {
        store
            .s3
            .put(&store.blob(&odg), PutPayload::from(orphan.clone()))
            .await
            .unwrap();
        let holder: SocketAddr = "127.0.0.99:80".parse().unwrap();
        lease::acquire(&store, &odg, holder, Duration::from_secs(600))
            .await
            .unwrap();
    });
    std::thread::sleep(Duration::from_millis(1500));
    let done = c.nodes[0].ctl_json(&["prune", "--cluster", "--older-than", "1s"]);
    assert_eq!(done["removed"][0]["name"], "m2:latest", "{done}");
    assert!(store_object(&sw, "prune", &y).is_none());
    assert!(store_object(&sw, "prune", &config).is_none());
    assert!(
        store_object(&sw, "prune", &od).is_some(),
        "a blob being filled stays"
    );

    // Named but absent: a clear error.
    let out = c.nodes[0].ctl(&["prune", "--cluster", "--model", "nosuch:1b"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not in the cluster store"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn prune_cluster_outside_cluster_mode_says_so() {
    let d = Daemon::start();
    let out = d.ctl(&["prune", "--cluster", "--older-than", "30d"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not in cluster mode"), "{err}");
}
