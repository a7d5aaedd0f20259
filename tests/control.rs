//! The control socket and lancachectl:
//! - status, stats and reload answer, in human form and with --json;
//! - reload with a bad file is refused with the parse error (exit 1) and the old config stays;
//! - a good reload reports what was applied and what needs a restart;
//! - a caller of another uid, not in the group, is refused (exit 1, "may not control");
//! - malformed, unknown and oversized frames get an error reply and the daemon lives on;
//! - an unreachable daemon is exit 2 with the socket path in the message.

use crate::util::Daemon;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::Command;

#[test]
fn status_stats_reload() {
    let d = Daemon::start();
    let out = d.ctl(&["status"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("lancached ") && text.contains("http") && text.contains("healthy"),
        "{text}"
    );
    let stats = d.ctl_json(&["stats"]);
    assert_eq!(stats["response"], "stats");
    assert!(stats["control"]["requests"].as_u64().unwrap() >= 1);
    let reload = d.ctl_json(&["reload"]);
    assert_eq!(reload["response"], "reloaded");
}

#[test]
fn reload_good_and_bad() {
    let d = Daemon::start();
    d.write_config("[dns]\nintercept = [\"*.example.test\"]\n");
    let r = d.ctl_json(&["reload"]);
    assert_eq!(r["applied"], serde_json::json!(["dns"]), "{r}");
    std::fs::write(&d.config_path, "[cache]\nmax_size = \"lots\"\n").unwrap();
    let out = d.ctl(&["reload"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cache.max_size") && err.contains("line 2"),
        "{err}"
    );
    // Still serving, on the old configuration.
    assert!(d.ctl(&["status"]).status.success());
}

fn raw_exchange(d: &Daemon, frame: &[u8]) -> serde_json::Value {
    let mut s = UnixStream::connect(d.control_path()).unwrap();
    s.write_all(frame).unwrap();
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).unwrap();
    serde_json::from_slice(&body).unwrap()
}

fn framed(body: &[u8]) -> Vec<u8> {
    let mut f = (body.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(body);
    f
}

#[test]
fn malformed_frames_get_errors() {
    let d = Daemon::start();
    let r = raw_exchange(&d, &framed(b"this is not json"));
    assert_eq!(r["kind"], "bad_request", "{r}");
    let r = raw_exchange(&d, &framed(br#"{"request":"format_disk"}"#));
    assert_eq!(r["kind"], "bad_request", "{r}");
    assert!(r["message"].as_str().unwrap().contains("format_disk"));
    let mut big = ((2u32 << 20).to_be_bytes()).to_vec();
    big.extend_from_slice(&[b'x'; 1024]);
    let r = raw_exchange(&d, &big);
    assert_eq!(r["kind"], "frame_too_large", "{r}");
    // The daemon is unharmed.
    assert!(d.ctl(&["status"]).status.success());
    let stats = d.ctl_json(&["stats"]);
    assert!(
        stats["control"]["bad_frames"].as_u64().unwrap() >= 3,
        "{stats}"
    );
}

#[test]
fn other_uid_is_refused() {
    if !crate::util::require_program("setpriv") {
        return;
    }
    let d = Daemon::start();
    // The socket's mode would already keep uid 65534 out; open it up so the daemon's own
    // credential check is what refuses.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(d.control_path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::set_permissions(&d.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(crate::util::lancachectl_bin())
        .arg("status")
        .env("LANCACHE_SOCKET", d.control_path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("uid 65534 may not control"), "{err}");
    assert_eq!(d.ctl_json(&["stats"])["control"]["refused"], 1);
}

#[test]
fn unreachable_daemon_is_exit_2() {
    let out = Command::new(crate::util::lancachectl_bin())
        .args(["status", "--socket", "/nonexistent/control.sock"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/nonexistent/control.sock") && err.contains("is lancached running"),
        "{err}"
    );
}
