//! The test harness's own promises, checked against the real programs it drives:
//! - a test network namespace has its own loopback and its own /etc/hosts (via `ip netns exec`);
//! - the real Ollama client starts inside it on an empty models directory and lists nothing.

use crate::util::{netns, ollama::Ollama};

#[test]
fn netns_has_private_loopback_and_hosts() {
    if !netns::available() {
        return;
    }
    let ns = netns::NetNs::new(&[("127.0.0.1", "registry.ollama.ai")]);
    let out = ns
        .command("getent")
        .args(["hosts", "registry.ollama.ai"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("127.0.0.1"),
        "{out:?}"
    );
    // A listener inside the namespace is invisible outside it.
    let port = std::thread::scope(|s| {
        s.spawn(|| {
            ns.enter();
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let port = l.local_addr().unwrap().port();
            std::mem::forget(l);
            port
        })
        .join()
        .unwrap()
    });
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}

#[test]
fn real_ollama_starts_in_a_netns() {
    if !netns::available() || !crate::util::require_ollama() {
        return;
    }
    let ns = netns::NetNs::new(&[]);
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    std::fs::create_dir_all(&models).unwrap();
    let o = Ollama::serve(&models, 11434, Some(&ns), &[]);
    assert!(o.list().is_empty());
}
