//! Socket activation (sd_listen_fds(3)) and the bind fallback:
//! - sockets passed as LISTEN_FDS with LISTEN_FDNAMES are served, UDP and TCP `dns` told apart;
//! - a socket with a name lancached does not use is refused at start-up, naming it;
//! - a LISTEN_PID of another process is ignored (systemd's rule) and the config is bound;
//! - without activation, `listen` addresses (IPv4 and IPv6) are bound;
//! - the real `systemd-socket-activate` tool starts the daemon.

use crate::util::{daemon::Activate, Daemon};
use std::process::{Command, Stdio};
use std::time::Duration;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn activated_sockets_are_classified() {
    let d = Daemon::start();
    let status = d.ctl_json(&["status"]);
    let subs = status["subsystems"].as_array().unwrap();
    let listeners = |name: &str| -> Vec<String> {
        subs.iter().find(|s| s["name"] == name).unwrap()["listeners"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_str().unwrap().to_string())
            .collect()
    };
    let dns = listeners("dns");
    assert!(
        dns.iter().any(|l| l.starts_with("udp ")) && dns.iter().any(|l| l.starts_with("tcp ")),
        "{dns:?}"
    );
    assert!(dns.iter().all(|l| l.ends_with("(socket-activated)")));
    assert_eq!(listeners("http").len(), 1);
    assert_eq!(listeners("control").len(), 1);
}

#[test]
fn bind_fallback_v4_and_v6() {
    let (p4, p6) = (free_port(), free_port());
    let d = Daemon::builder()
        .activate(Activate::none())
        .config(&format!(
            "[http]\nlisten = [\"127.0.0.1:{p4}\", \"[::1]:{p6}\"]\n"
        ))
        .start();
    let listeners = d.ctl_json(&["status"]).to_string();
    assert!(
        listeners.contains(&format!("127.0.0.1:{p4}")),
        "{listeners}"
    );
    for url in [
        format!("http://127.0.0.1:{p4}/health"),
        format!("http://[::1]:{p6}/health"),
    ] {
        assert_eq!(ureq::get(&url).call().unwrap().status(), 200, "{url}");
    }
}

#[test]
fn foreign_listen_pid_falls_back_to_config() {
    let mut cmd = Command::new(crate::util::lancached_bin());
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    let p2 = free_port();
    std::fs::write(
        &cfg,
        format!(
            "[cache]\ndir = {:?}\n[http]\nlisten = [\"127.0.0.1:{p2}\"]\n[dns]\nlisten = []\n[tls]\nlisten = []\n[control]\nsocket = \"\"\n",
            dir.path().join("cache").display().to_string()
        ),
    )
    .unwrap();
    cmd.arg("--config")
        .arg(&cfg)
        .env("LISTEN_PID", "1")
        .env("LISTEN_FDS", "1")
        .env("LISTEN_FDNAMES", "http");
    cmd.stderr(Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let ok = (0..200).any(|_| {
        std::thread::sleep(Duration::from_millis(25));
        ureq::get(&format!("http://127.0.0.1:{p2}/health"))
            .call()
            .is_ok()
    });
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        ok,
        "the daemon ignored a foreign LISTEN_PID and bound its config"
    );
}

#[test]
fn unknown_socket_name_is_refused() {
    use std::os::unix::process::CommandExt;
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[cache]\ndir = {:?}\n",
            dir.path().join("cache").display().to_string()
        ),
    )
    .unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&l);
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", "export LISTEN_PID=$$; exec \"$0\" \"$@\""])
        .arg(crate::util::lancached_bin());
    cmd.arg("--config")
        .arg(&cfg)
        .env("LISTEN_FDS", "1")
        .env("LISTEN_FDNAMES", "gopher");
    unsafe {
        cmd.pre_exec(move || crate::util::daemon::pass_fds(&[fd]));
    }
    let out = cmd.output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("\"gopher\"") && err.contains("FileDescriptorName"),
        "{err}"
    );
}

#[test]
fn under_real_systemd_socket_activate() {
    if !crate::util::require_program("systemd-socket-activate") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[cache]\ndir = {:?}\n[control]\nsocket = \"\"\n",
            dir.path().join("cache").display().to_string()
        ),
    )
    .unwrap();
    let p = free_port();
    let mut child = Command::new("systemd-socket-activate")
        .args(["--listen", &format!("127.0.0.1:{p}"), "--fdname=http"])
        .arg(crate::util::lancached_bin())
        .arg("--config")
        .arg(&cfg)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // systemd-socket-activate execs the daemon on the first connection, handing it the socket.
    let mut ok = false;
    for _ in 0..100 {
        if let Ok(r) = ureq::get(&format!("http://127.0.0.1:{p}/health")).call() {
            ok = r.status() == 200;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(ok, "health over the socket systemd-socket-activate passed");
    assert!(status.success(), "{status:?}");
}
