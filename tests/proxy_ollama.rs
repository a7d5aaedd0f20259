//! The real Ollama client (0.5.4) pulling through lancached, in a network namespace of the
//! test's own where `/etc/netns/NAME/hosts` maps `registry.ollama.ai` to the cache:
//!
//! - `ollama pull --insecure registry.ollama.ai/library/<model>` (plain HTTP on port 80, the
//!   registry's 307 to the data plane on another host name, up to 16 parallel ranged GETs) of a
//!   model whose layer is over 300 MB succeeds, and `ollama list` shows the upstream manifest's ID;
//! - two clients pulling the cold model at once cost upstream exactly one copy of each blob;
//! - a third client pulls it with the upstream gone, from the cache alone.
//!
//! The test thread enters the namespace with setns(2) so that the fake upstream's sockets, the
//! daemon (spawned from that thread) and everything it connects to live there; the Ollama
//! processes run under `ip netns exec`, which bind-mounts the namespace's hosts file.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::util::upstream::{FakeUpstream, Faults};
use crate::util::{require_program, Daemon};

struct Netns {
    name: String,
}

impl Netns {
    fn create(tag: &str) -> Netns {
        let name = format!("lc{tag}{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        assert!(Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap()
            .success());
        assert!(Command::new("ip")
            .args(["-n", &name, "link", "set", "lo", "up"])
            .status()
            .unwrap()
            .success());
        let etc = PathBuf::from("/etc/netns").join(&name);
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::write(
            etc.join("hosts"),
            "127.0.0.1 localhost\n127.0.0.1 registry.ollama.ai\n",
        )
        .unwrap();
        std::fs::write(etc.join("resolv.conf"), "nameserver 127.0.0.1\n").unwrap();
        Netns { name }
    }

    /// Moves the calling thread into the namespace.
    fn enter(&self) {
        let f = std::fs::File::open(format!("/var/run/netns/{}", self.name)).unwrap();
        let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = std::fs::remove_dir_all(PathBuf::from("/etc/netns").join(&self.name));
    }
}

/// One `ollama serve` in the namespace, with its own models directory and port.
struct Ollama {
    child: std::process::Child,
    ns: String,
    host: String,
    home: tempfile::TempDir,
    bin: PathBuf,
}

impl Ollama {
    fn start(bin: &Path, ns: &str, port: u16) -> Ollama {
        let home = tempfile::tempdir().unwrap();
        let host = format!("127.0.0.1:{port}");
        let log = std::fs::File::create(home.path().join("serve.log")).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(bin)
            .arg("serve")
            .env("OLLAMA_HOST", &host)
            .env("OLLAMA_MODELS", home.path().join("models"))
            .env("HOME", home.path())
            .env_remove("HTTP_PROXY")
            .env_remove("HTTPS_PROXY")
            .env_remove("http_proxy")
            .env_remove("https_proxy")
            .current_dir(home.path())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let o = Ollama {
            child,
            ns: ns.to_string(),
            host,
            home,
            bin: bin.to_path_buf(),
        };
        let t = Instant::now();
        while o
            .cli(&["list"])
            .map(|x| !x.status.success())
            .unwrap_or(true)
        {
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "ollama serve did not start: {}",
                o.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        o
    }

    fn cli(&self, args: &[&str]) -> std::io::Result<Output> {
        Command::new("ip")
            .args(["netns", "exec", &self.ns])
            .arg(&self.bin)
            .args(args)
            .env("OLLAMA_HOST", &self.host)
            .env("HOME", self.home.path())
            .current_dir(self.home.path())
            .output()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.home.path().join("serve.log")).unwrap_or_default()
    }
}

impl Drop for Ollama {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

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
    if !require_program("ip") {
        return;
    }
    let bin = PathBuf::from(
        String::from_utf8(
            Command::new("bash")
                .arg(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/../shared/tools/get-ollama.sh"
                ))
                .output()
                .map(|o| o.stdout)
                .unwrap_or_default(),
        )
        .unwrap()
        .trim(),
    );
    let bin = if bin.exists() {
        bin
    } else {
        PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
            .join(".cache/lancache-test/ollama/ollama")
    };
    assert!(
        bin.exists(),
        "the real Ollama client is missing: run scripts/test-deps.sh"
    );
    let ns = Netns::create("px");
    let name = ns.name.clone();
    // Everything network-facing happens on a thread inside the namespace.
    std::thread::spawn(move || {
        ns.enter();
        run_in_namespace(&bin, &name);
        drop(ns);
    })
    .join()
    .unwrap();
}

fn run_in_namespace(bin: &Path, ns: &str) {
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
        .activate(crate::util::daemon::Activate {
            dns: false,
            http: false,
            https: false,
            control: false,
        })
        .config(&format!(
            "[upstream]\nresolvers = []\n[upstream.registries]\n\"registry.ollama.ai\" = \"{}\"\n[http]\nlisten = [\"127.0.0.1:80\"]\n",
            up.url()
        ))
        .start();

    let a = Ollama::start(bin, ns, 11434);
    let b = Ollama::start(bin, ns, 11435);
    let pull = |o: &Ollama| {
        let out = o
            .cli(&[
                "pull",
                "--insecure",
                "registry.ollama.ai/library/tinyllm:latest",
            ])
            .unwrap();
        assert!(
            out.status.success(),
            "ollama pull failed: {}\n{}\nserve log:\n{}\ndaemon:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            o.log(),
            d.stderr()
        );
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
        let list = o.cli(&["list"]).unwrap();
        let list = String::from_utf8_lossy(&list.stdout).to_string();
        assert!(list.contains("tinyllm:latest"), "{list}");
        assert!(
            list.contains(&manifest_id[7..19]),
            "ollama list shows the upstream ID: {list}"
        );
    }

    // Upstream gone: a third client pulls from the cache alone.
    up.faults(Faults {
        status: Some(503),
        ..Default::default()
    });
    drop(up);
    let c = Ollama::start(bin, ns, 11436);
    pull(&c);
    let list = String::from_utf8_lossy(&c.cli(&["list"]).unwrap().stdout).to_string();
    assert!(list.contains(&manifest_id[7..19]), "{list}");
    let j = d.ctl_json(&["stats"]);
    assert_eq!(j["cache"]["fills_completed"], 2, "{j}");
}
