//! The real Ollama client (0.5.4) pulling through lancached, in a network namespace of the
//! test's own where `/etc/netns/NAME/hosts` maps `registry.ollama.ai` to the cache:
//!
//! - `ollama pull --insecure registry.ollama.ai/library/<model>` (plain HTTP on port 80, the
//!   blob served on the registry's own host with no redirect, up to 16 parallel ranged GETs) of a
//!   model whose layer is over 300 MB succeeds, and `ollama list` shows the upstream manifest's ID;
//! - two clients pulling the cold model at once cost upstream exactly one copy of each blob;
//! - a third client pulls it with the upstream gone, from the cache alone.
//!
//! The test thread enters the namespace with setns(2) so that the fake upstream's sockets, the
//! daemon (spawned from that thread) and everything it connects to live there; the Ollama
//! processes run under `ip netns exec`, which bind-mounts the namespace's hosts file.

use std::path::Path;
use std::process::Command;

use crate::util::netns::NetNs;
use crate::util::ollama::Ollama;
use crate::util::upstream::{FakeUpstream, Faults};
use crate::util::{require_program, Daemon};

fn sha256_file(p: &Path) -> String {
    let out = Command::new("sha256sum").arg(p).output().unwrap();
    format!(
        "sha256:{}",
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap()
    )
}

#[test]
fn real_ollama_pulls_through_the_cache() {
    if !require_program("ip") || !crate::util::require_ollama() {
        return;
    }
    let ns = NetNs::new(&[("127.0.0.1", "registry.ollama.ai")]);
    ns.set_resolver("127.0.0.1");
    // Everything network-facing happens on a thread inside the namespace.
    std::thread::spawn(move || {
        ns.enter();
        run_in_namespace(&ns);
    })
    .join()
    .unwrap();
}

fn run_in_namespace(ns: &NetNs) {
    let up = FakeUpstream::start();
    // A layer over 300 MB, so Ollama splits it into several parallel parts.
    let big = crate::util::upstream::blob_bytes(320 << 20, 42);
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("big"), &big).unwrap();
    let big_digest = sha256_file(&tmp.path().join("big"));
    let manifest = up.add_model_with_digests("library/tinyllm", "latest", vec![(big, big_digest)]);
    let manifest_id = crate::util::upstream::digest(&manifest);
    let total: u64 = up.blob_total();

    let d = Daemon::builder()
        // Nothing socket-activated: the daemon binds port 80 itself, from the config.
        .activate(crate::util::daemon::Activate::none())
        .config(&format!(
            "[upstream]\nresolvers = []\n[upstream.registries]\n\"registry.ollama.ai\" = \"{}\"\n[http]\nlisten = [\"127.0.0.1:80\"]\n",
            up.url()
        ))
        .start();

    let homes = tempfile::tempdir().unwrap();
    let client = |name: &str, port: u16| {
        let models = homes.path().join(name).join("models");
        std::fs::create_dir_all(&models).unwrap();
        Ollama::serve(&models, port, Some(ns), &[])
    };
    let a = client("a", 11434);
    let b = client("b", 11435);
    let pull = |o: &Ollama| {
        o.pull_ok(
            &["--insecure", "registry.ollama.ai/library/tinyllm:latest"],
            &d,
        )
    };
    std::thread::scope(|s| {
        s.spawn(|| pull(&a));
        s.spawn(|| pull(&b));
    });
    assert_eq!(
        up.cdn_bytes(),
        total,
        "two concurrent pulls cost upstream one copy"
    );
    for o in [&a, &b] {
        let list = o.list();
        assert!(
            list.iter()
                .any(|(n, id)| n == "tinyllm:latest" && *id == manifest_id[7..19]),
            "ollama list shows the upstream ID: {list:?}"
        );
    }

    // Upstream gone: a third client pulls from the cache alone.
    up.faults(Faults {
        status: Some(503),
        ..Default::default()
    });
    drop(up);
    let c = client("c", 11436);
    pull(&c);
    let list = c.list();
    assert!(
        list.iter().any(|(_, id)| *id == manifest_id[7..19]),
        "{list:?}"
    );
    let j = d.ctl_json(&["stats"]);
    assert_eq!(j["cache"]["fills_completed"], 2, "{j}");
}
