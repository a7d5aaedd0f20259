//! `lancachectl prefetch`, the client side, against a scripted control-socket peer speaking the
//! real protocol (the daemon's fill engine is tested with the proxy):
//! - `--wait` (the default) polls `fill_progress` until every model is done: exit 0, one line
//!   per model when stdout is not a terminal, the final progress as JSON with `--json`;
//! - a failed model ends the watch with exit 1 and its reason;
//! - `--no-wait` returns after starting the fills and says they run in the daemon;
//! - Ctrl-C (SIGINT) stops watching, not the fills: exit 130 and a message saying so.

use lancache_protocol::{read_frame, write_frame, FillProgress, Request, Response};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const MODEL: &str = "registry.ollama.ai/library/llama3:8b";
const OTHER: &str = "hf.co/bartowski/llama-3.2-1b-instruct-gguf:Q4_K_M";

fn fill(model: &str, digest: char, size: u64, landed: u64, state: &str) -> FillProgress {
    FillProgress {
        model: Some(model.into()),
        digest: format!("sha256:{}", digest.to_string().repeat(64)),
        size,
        landed,
        waiters: 1,
        state: state.into(),
    }
}

/// A control socket that answers `prefetch` with "pending" and then `fill_progress` with
/// `script(poll_number)`. Returns the socket path and the requests it saw.
fn fake_daemon(
    script: impl Fn(usize) -> Vec<FillProgress> + Send + Sync + 'static,
) -> (tempfile::TempDir, PathBuf, Arc<Mutex<Vec<Request>>>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("control.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let polls = Arc::new(AtomicUsize::new(0));
    {
        let seen = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut s) = conn else { return };
                while let Ok(req) = read_frame::<Request>(&mut s) {
                    seen.lock().unwrap().push(req.clone());
                    let resp = match req {
                        Request::Prefetch { names } => Response::Prefetch {
                            fills: names
                                .iter()
                                .map(|_| fill(MODEL, 'a', 0, 0, "pending"))
                                .collect(),
                        },
                        Request::FillProgress { .. } => Response::Prefetch {
                            fills: script(polls.fetch_add(1, Ordering::SeqCst)),
                        },
                        _ => Response::Error(lancache_protocol::ErrorReply {
                            kind: lancache_protocol::ErrorKind::Unsupported,
                            message: "scripted peer".into(),
                        }),
                    };
                    if write_frame(&mut s, &resp).is_err() {
                        break;
                    }
                }
            }
        });
    }
    (dir, path, seen)
}

fn ctl(socket: &PathBuf, args: &[&str]) -> Command {
    let mut c = Command::new(crate::util::lancachectl_bin());
    c.args(args).env("LANCACHE_SOCKET", socket);
    c
}

/// Two models: llama3 lands in three polls, the other one is complete from the start.
fn progressing(poll: usize) -> Vec<FillProgress> {
    let landed = (poll as u64 * 400).min(1000);
    let state = if landed == 1000 { "done" } else { "filling" };
    vec![
        fill(MODEL, 'a', 100, 100, "done"),
        fill(MODEL, 'b', 1000, landed, state),
        fill(OTHER, 'c', 500, 500, "done"),
    ]
}

#[test]
fn wait_until_done() {
    let (_dir, socket, seen) = fake_daemon(progressing);
    let out = ctl(&socket, &["prefetch", "llama3:8b", OTHER])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("llama3:8b") && l.ends_with("done")),
        "{stdout}"
    );
    assert!(stdout.contains("hf.co/bartowski"), "{stdout}");
    let seen = seen.lock().unwrap();
    assert_eq!(
        seen[0],
        Request::Prefetch {
            names: vec!["llama3:8b".into(), OTHER.into()]
        }
    );
    assert!(seen.len() >= 4, "polled until done: {seen:?}");
}

#[test]
fn json_wait_prints_final_progress() {
    let (_dir, socket, _) = fake_daemon(progressing);
    let out = ctl(&socket, &["prefetch", "--json", "llama3:8b"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["response"], "prefetch");
    assert!(v["fills"]
        .as_array()
        .unwrap()
        .iter()
        .all(|f| f["state"] == "done"));
}

#[test]
fn a_failed_model_is_exit_1() {
    let (_dir, socket, _) = fake_daemon(|_| {
        vec![
            fill(MODEL, 'a', 100, 100, "done"),
            fill(MODEL, 'b', 1000, 10, "failed: upstream answered 404"),
        ]
    });
    let out = ctl(&socket, &["prefetch", "llama3:8b"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("failed: upstream answered 404"), "{stdout}");
}

#[test]
fn no_wait_returns_at_once() {
    let (_dir, socket, seen) = fake_daemon(progressing);
    let out = ctl(&socket, &["prefetch", "--no-wait", "llama3:8b"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("the fills run in lancached"), "{stdout}");
    assert_eq!(seen.lock().unwrap().len(), 1, "no polling");
}

#[test]
fn ctrl_c_leaves_the_fills_running() {
    let (_dir, socket, seen) = fake_daemon(|_| vec![fill(MODEL, 'b', 1000, 10, "filling")]);
    let child = ctl(&socket, &["prefetch", "llama3:8b"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Let it poll a few times, then interrupt it the way a terminal does.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while seen.lock().unwrap().len() < 3 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the fills keep running in lancached"), "{err}");
}
