//! Cluster mode on a LAN of its own (issue 15): three lancached nodes, each in a network
//! namespace of its own, joined by veth to a switch namespace where SeaweedFS and the upstream
//! stand-in run; a real Ollama client (0.5.4) beside each node, resolving through the cluster's
//! DNS (every node's resolver listed, its own first), pulling over plain HTTP on port 80.
//!
//! - Each node's DNS answers `registry.ollama.ai` with the healthy nodes, itself first.
//! - Clients on all three nodes pulling one cold model at once: upstream sends each blob once
//!   (1.00x), every client ends with the upstream manifest's ID (`ollama list`), and Ollama
//!   itself has checked every blob's sha256.
//! - A model pulled through node A, then through node B: B serves it from the store (manifest
//!   and blobs), no request upstream.
//! - The store stopped: a node's local copy is still served, a cold model is filled alone from
//!   upstream, and `status` says the store is unreachable.
//! - `kill -9` of the fill's lease holder mid-fill: the clients end verified (the model listed
//!   with the right ID) or aborted (the pull fails), never with wrong bytes (in practice both
//!   complete: the killed node's client falls over to the next resolver and node); the surviving nodes
//!   complete the fill (a client on them pulls the model whole), and the store's copy is whole.

use std::net::SocketAddr;
use std::time::Duration;

use crate::util::daemon::Activate;
use crate::util::netns::{Lan, NetNs};
use crate::util::ollama::Ollama;
use crate::util::seaweed::{self, Seaweed};
use crate::util::upstream::{blob_bytes, digest, FakeUpstream, Faults};
use crate::util::{require_program, wait_for, Daemon};

const REG: &str = "registry.ollama.ai";

fn available() -> bool {
    if !seaweed::available() {
        return false;
    }
    require_program("ip") && crate::util::require_ollama()
}

struct Site {
    lan: Lan,
    sw: Seaweed,
    up: FakeUpstream,
    nodes: Vec<Daemon>,
    homes: tempfile::TempDir,
    bucket: String,
}

/// The switch's services, then one node per host. The calling thread ends in the switch's
/// namespace (where the test talks to upstream and the store).
fn site(n: usize, ttl: &str, bucket: &str) -> Site {
    let lan = Lan::new(n);
    lan.switch.enter();
    let sw = Seaweed::start_on(Lan::SWITCH_IP);
    let up = FakeUpstream::start_on(Lan::SWITCH_IP, Lan::SWITCH_IP);
    let addrs: Vec<SocketAddr> = (0..n)
        .map(|i| format!("{}:80", Lan::host_ip(i)).parse().unwrap())
        .collect();
    let names: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
    let nodes = (0..n)
        .map(|i| {
            let host = &lan.hosts[i];
            host.enter();
            let ip = Lan::host_ip(i);
            // The host's resolvers: its own node first, then the others (as DHCP would hand
            // out the cluster's DNS servers).
            let mut resolvers: Vec<String> = vec![ip.clone()];
            resolvers.extend((0..n).filter(|j| *j != i).map(Lan::host_ip));
            let text: String = resolvers
                .iter()
                .map(|r| format!("nameserver {r}\n"))
                .collect::<String>()
                + "options timeout:1 attempts:1\n";
            std::fs::write(host.etc_dir().join("resolv.conf"), text).unwrap();
            let d = Daemon::builder()
                // Nothing socket-activated: the daemon binds its node's addresses itself.
                .activate(Activate::none())
                .config(&format!(
                    "[upstream]\nresolvers = []\n[upstream.registries]\n\"{REG}\" = \"{}\"\n[http]\nlisten = [\"{ip}:80\"]\n[dns]\nlisten = [\"{ip}:53\"]\nadvertise = [\"{ip}\"]\nallow = [\"10.214.0.0/24\", \"127.0.0.0/8\"]\n[cache]\nslice_size = \"1MiB\"\nfill_connections = 2\n{}",
                    up.url(),
                    sw.cluster_toml(bucket, &names, ttl)
                ))
                .start();
            d
        })
        .collect();
    lan.switch.enter();
    Site {
        lan,
        sw,
        up,
        nodes,
        homes: tempfile::tempdir().unwrap(),
        bucket: bucket.to_string(),
    }
}

impl Site {
    /// An Ollama client on host `i`.
    fn client(&self, i: usize, name: &str) -> Ollama {
        let models = self.homes.path().join(name).join("models");
        std::fs::create_dir_all(&models).unwrap();
        Ollama::serve(&models, 11434, Some(&self.lan.hosts[i]), &[])
    }

    fn host(&self, i: usize) -> &NetNs {
        &self.lan.hosts[i]
    }
}

/// `dig +short` for the registry name, from host `i` against its own node.
fn dig(s: &Site, i: usize) -> Vec<String> {
    let server = format!("{}:53", Lan::host_ip(i)).parse().unwrap();
    crate::util::dig_short(s.host(i).command("dig"), server, REG, "A")
}

fn pull(o: &Ollama, model: &str) -> Result<(), String> {
    o.pull(&["--insecure", &format!("{REG}/library/{model}:latest")])
}

fn has_model(o: &Ollama, model: &str, id: &str) -> bool {
    o.list()
        .iter()
        .any(|(n, got)| n == &format!("{model}:latest") && got == &id[7..19])
}

/// Runs `f` on a thread of its own (it enters namespaces; the test's thread stays as it was).
fn on_lan(f: impl FnOnce() + Send + 'static) {
    std::thread::spawn(f).join().unwrap();
}

#[test]
fn real_clients_on_three_nodes_one_upstream_copy_then_the_store() {
    if !available() || !require_program("dig") {
        return;
    }
    on_lan(|| {
        let s = site(3, "10s", "lan");
        let ips: Vec<String> = (0..3).map(Lan::host_ip).collect();
        for i in 0..3 {
            let mut want = vec![ips[i].clone()];
            want.extend((0..3).filter(|j| *j != i).map(|j| ips[j].clone()));
            let mut last = Vec::new();
            let t = std::time::Instant::now();
            while last != want {
                assert!(
                    t.elapsed() < Duration::from_secs(20),
                    "node {i}'s DNS answered {last:?}, not {want:?}\n{}",
                    s.nodes[i].stderr()
                );
                std::thread::sleep(Duration::from_millis(200));
                last = dig(&s, i);
            }
        }

        // A cold model, throttled so the three pulls overlap.
        let manifest =
            s.up.add_model("library/tiny", "latest", &[&blob_bytes(24 << 20, 71)]);
        let id = digest(&manifest);
        let total = s.up.blob_total();
        s.up.faults(Faults {
            throttle: 8 << 20,
            ..Default::default()
        });
        let clients: Vec<Ollama> = (0..3).map(|i| s.client(i, &format!("c{i}"))).collect();
        let results: Vec<Result<(), String>> = std::thread::scope(|sc| {
            let hs: Vec<_> = clients
                .iter()
                .map(|o| sc.spawn(move || pull(o, "tiny")))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (i, r) in results.iter().enumerate() {
            assert!(
                r.is_ok(),
                "client on node {i}: {r:?}\n{}",
                s.nodes[i].stderr()
            );
            assert!(
                has_model(&clients[i], "tiny", &id),
                "node {i}: {:?}",
                clients[i].list()
            );
        }
        assert_eq!(
            s.up.cdn_bytes(),
            total,
            "three real clients on three nodes cost upstream one copy (1.00x)"
        );

        // Through A only, then through B: from the store, nothing upstream.
        s.up.faults(Faults::default());
        let manifest2 =
            s.up.add_model("library/second", "latest", &[&blob_bytes(6 << 20, 72)]);
        let id2 = digest(&manifest2);
        let a2 = s.client(0, "a2");
        pull(&a2, "second").unwrap();
        let layer2 = digest(&blob_bytes(6 << 20, 72));
        let key = |rel: &str| format!("lan/{rel}");
        wait_for("A's copy in the store", Duration::from_secs(30), || {
            store_has(&s, &key(&format!("blobs/sha256-{}", &layer2[7..])))
                && store_has(
                    &s,
                    &key("manifests/registry.ollama.ai/library/second/latest"),
                )
        });
        let (bytes, manifests) = (s.up.cdn_bytes(), s.up.manifest_requests());
        let b2 = s.client(1, "b2");
        pull(&b2, "second").unwrap();
        assert!(has_model(&b2, "second", &id2));
        assert_eq!(s.up.cdn_bytes(), bytes, "B's pull cost upstream no bytes");
        assert_eq!(
            s.up.manifest_requests(),
            manifests,
            "nor a manifest request"
        );
        drop(clients);
    });
}

#[test]
fn holder_killed_mid_fill_clients_end_verified_or_aborted() {
    if !available() {
        return;
    }
    on_lan(|| {
        let mut s = site(3, "2s", "kill");
        let layer = blob_bytes(32 << 20, 81);
        let manifest = s.up.add_model("library/big", "latest", &[&layer]);
        let id = digest(&manifest);
        let dg = digest(&layer);
        // Slow enough that the kill lands mid-fill.
        s.up.faults(Faults {
            throttle: 3 << 20,
            ..Default::default()
        });
        let a = s.client(0, "a");
        let b = s.client(1, "b");
        let results = std::thread::scope(|sc| {
            let ha = sc.spawn(|| pull(&a, "big"));
            let hb = sc.spawn(|| pull(&b, "big"));
            // Whichever node won the lease: kill it once bytes are flowing.
            let mut holder = None;
            wait_for("a node to hold the lease", Duration::from_secs(30), || {
                holder = (0..2).find(|i| {
                    s.nodes[*i].ctl_json(&["status"])["cluster"]["leases_held"]
                        .as_array()
                        .is_some_and(|l| l.iter().any(|d| d == dg.as_str()))
                });
                holder.is_some()
            });
            let holder = holder.unwrap();
            std::thread::sleep(Duration::from_millis(1500));
            s.nodes[holder].kill9();
            let sent = s.up.cdn_bytes_of(&dg);
            assert!(
                sent < layer.len() as u64,
                "the kill landed mid-fill ({sent} of {} bytes sent)",
                layer.len()
            );
            eprintln!("killed node {holder} after {sent} of {} bytes", layer.len());
            (holder, ha.join().unwrap(), hb.join().unwrap())
        });
        let (holder, ra, rb) = results;
        eprintln!("client on A: {ra:?}; client on B: {rb:?}");
        let survivor = 1 - holder;
        for (i, (o, r)) in [(&a, &ra), (&b, &rb)].into_iter().enumerate() {
            match r {
                // Ollama checks each blob's sha256 before it writes the manifest: listed with
                // the upstream ID is verified.
                Ok(()) => assert!(has_model(o, "big", &id), "client {i}: {:?}", o.list()),
                Err(e) => {
                    assert!(
                        !has_model(o, "big", &id),
                        "client {i} failed but lists the model"
                    );
                    assert!(
                        !e.contains("digest mismatch"),
                        "client {i} got wrong bytes: {e}"
                    );
                }
            }
        }
        let r = [&ra, &rb][survivor];
        assert!(
            r.is_ok(),
            "the client on the surviving node {survivor} completes: {r:?}\n{}",
            s.nodes[survivor].stderr()
        );
        // The third node serves the whole model, and the store's copy is whole.
        s.up.faults(Faults::default());
        let c = s.client(2, "c");
        pull(&c, "big").unwrap();
        assert!(has_model(&c, "big", &id));
        wait_for("the blob in the store", Duration::from_secs(30), || {
            store_get(&s, &format!("lan/blobs/sha256-{}", &dg[7..])).is_some_and(|b| b == layer)
        });
    });
}

/// The object at `key` (under the bucket, prefix included) of the site's store.
fn store_get(s: &Site, key: &str) -> Option<Vec<u8>> {
    s.sw.object(&s.bucket, key)
}

fn store_has(s: &Site, key: &str) -> bool {
    store_get(s, key).is_some()
}
