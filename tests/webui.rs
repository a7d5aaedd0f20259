//! The web UI rendered by a real browser (headless Chromium, Debian's `chromium`) after its
//! JavaScript ran: the model list (full and short names, sizes, complete/incomplete), a client
//! download in progress with its progress bar, cache usage, and the copy-paste commands carrying
//! the cache's URL. A screenshot is kept as `target/test-artifacts/webui.png` for people to look at.

use crate::util::models::{prepared_dir, write_model, write_sparse_model, TestModel};
use crate::util::{require_program, Daemon};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn chromium(args: &[&str], url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new("timeout")
        .arg("90")
        .arg("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--virtual-time-budget=3000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn web_ui_shows_models_and_live_downloads() {
    if !require_program("chromium") {
        return;
    }
    let tmp = prepared_dir(|c| {
        write_model(c, "qwen2.5:1.5b", &[300_000]);
        write_model(c, "qwen2.5:7b", &[400_000]);
        write_model(c, "someuser/my-model:v1.0", &[50_000]);
        write_model(
            c,
            "hf.co/bartowski/llama-3.2-1b-instruct-gguf:Q4_K_M",
            &[90_000],
        );
        let m = write_model(c, "phi3:3.8b", &[1_000, 2_000]);
        std::fs::remove_file(TestModel::blob_path(c, &m.blobs[2].0)).unwrap();
        write_sparse_model(c, "llama3:70b", 3 << 30);
    });
    let d = Daemon::builder().dir(tmp).start();

    // A client downloading slowly: read the head and a little, then stall (TCP backpressure
    // keeps the session open while the browser looks).
    let mut client = std::net::TcpStream::connect(d.http.unwrap()).unwrap();
    write!(client, "GET /models/llama3:70b HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut got = 0;
    let deadline = Instant::now() + Duration::from_secs(5);
    while got < 800_000 && Instant::now() < deadline {
        got += client.read(&mut buf).unwrap();
    }
    let client_addr = client.local_addr().unwrap().to_string();

    let url = d.http_url("/");
    let dom = chromium(&["--dump-dom"], &url);
    for want in [
        "qwen2.5:1.5b",
        "qwen2.5:7b",
        "someuser/my-model:v1.0",
        "hf.co/bartowski/llama-3.2-1b-instruct-gguf:Q4_K_M",
        "registry.ollama.ai/library/phi3:3.8b",
        "incomplete",
        "complete",
        "1.5b, 7b",
        &client_addr,
        "llama3:70b",
        &format!(
            "curl -fsSL {} | sh -s -- qwen2.5:1.5b",
            d.http_url("/install.sh")
        ),
    ] {
        assert!(
            dom.contains(want),
            "{want:?} not in the rendered page:\n{dom}"
        );
    }
    assert!(!dom.contains("loading…"), "models never loaded:\n{dom}");
    assert!(
        dom.contains("id=\"meta\">v"),
        "/api/info never rendered:\n{dom}"
    );
    // The session's row has a progress bar with a width set by the script.
    let sessions = &dom[dom.find("id=\"sessions\"").unwrap()..];
    assert!(sessions.contains("class=\"bar\""), "{sessions}");

    let shot = artifacts().join("webui.png");
    let _ = std::fs::remove_file(&shot);
    chromium(
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1280,1400",
        ],
        &url,
    );
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000);
    drop(client);
}
