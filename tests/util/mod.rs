//! Test harness shared by every feature module.

#![allow(dead_code)]

pub mod daemon;
pub mod echo;
pub mod hf_client;
pub mod hf_upstream;
pub mod hop;
pub mod models;
pub mod netns;
pub mod ollama;
pub mod seaweed;
pub mod standin;
pub mod strict_http;
pub mod strict_ollama;
pub mod tls_upstream;
pub mod transfer_client;
pub mod upstream;

pub use daemon::Daemon;

use std::path::PathBuf;

/// The directory holding the binaries under test (`target/debug` or the nextest equivalent).
pub fn bin_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_lancached"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn lancached_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_lancached"))
}

/// `lancachectl` is another workspace member's binary, built beside ours.
pub fn lancachectl_bin() -> PathBuf {
    let p = bin_dir().join("lancachectl");
    assert!(
        p.exists(),
        "{} is missing: build the whole workspace (cargo build --workspace)",
        p.display()
    );
    p
}

/// `dig +short NAME TYPE` against `server`, run as `cmd` (plain `dig`, or `dig` inside a test
/// namespace): the answers in the order the server gave them.
pub fn dig_short(
    mut cmd: std::process::Command,
    server: std::net::SocketAddr,
    name: &str,
    qtype: &str,
) -> Vec<String> {
    let out = cmd
        .arg(format!("@{}", server.ip()))
        .args(["-p", &server.port().to_string()])
        .args(["+tries=1", "+time=2", "+short", name, qtype])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

/// Whether an external program is installed; tests that need one skip loudly without it only
/// when `LANCACHE_ALLOW_SKIP=1` (CI installs everything and never sets it).
pub fn require_program(name: &str) -> bool {
    let found = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !found {
        if std::env::var("LANCACHE_ALLOW_SKIP").as_deref() == Ok("1") {
            eprintln!("SKIP: {name} is not installed");
            return false;
        }
        panic!("{name} is not installed: run scripts/test-deps.sh (or set LANCACHE_ALLOW_SKIP=1)");
    }
    true
}

/// Whether the real Ollama client is installed (see `require_program` for the skip rule).
pub fn require_ollama() -> bool {
    if ollama::binary().is_some() {
        return true;
    }
    if std::env::var("LANCACHE_ALLOW_SKIP").as_deref() == Ok("1") {
        eprintln!("SKIP: the real Ollama client is not installed");
        return false;
    }
    panic!("the real Ollama client is not installed: run scripts/test-deps.sh");
}

/// Polls `f` until it holds; panics naming `what` (and how long it waited) at `timeout`.
pub fn wait_for(what: &str, timeout: std::time::Duration, mut f: impl FnMut() -> bool) {
    let t = std::time::Instant::now();
    while !f() {
        assert!(
            t.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
