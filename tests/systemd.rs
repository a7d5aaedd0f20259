//! The systemd units (systemd/) checked with systemd's own tools, and the daemon run the way
//! they run it (systemd.service(5), systemd.socket(5), sd_listen_fds(3), sd_notify(3)):
//! - `systemd-analyze verify` accepts the service and the four socket units, with the binaries
//!   at the paths ExecStart=/ExecReload= name;
//! - `systemd-analyze security --offline=yes` rates lancached.service at most 1.5 (fail above);
//! - the units agree with the code: TimeoutStopSec= above the daemon's drain deadline, the
//!   FileDescriptorName= values are the names the daemon classifies, the control socket path,
//!   the config path, the directories and the user/group are the configuration's defaults;
//! - the real `systemd-socket-activate` (nested: one for the UDP socket, one for the stream
//!   sockets, the inner passing the outer's through) hands lancached all five sockets of the four
//!   units with their names, with NOTIFY_SOCKET and WATCHDOG_USEC: READY=1, WATCHDOG=1, a
//!   `lancachectl reload` (bracketed by RELOADING=1/READY=1), a rejected bad reload that leaves
//!   the daemon serving, and SIGTERM (STOPPING=1, exit 0).

use std::collections::BTreeMap;
use std::net::{TcpListener, UdpSocket};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The unit files, as shipped.
pub const UNITS: [&str; 5] = [
    "lancached.service",
    "lancached-dns.socket",
    "lancached-http.socket",
    "lancached-https.socket",
    "lancached-control.socket",
];

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `[Section] Key=Value` lines of a unit file, comments dropped; repeated keys keep every value.
fn unit(name: &str) -> BTreeMap<String, Vec<String>> {
    let text = std::fs::read_to_string(repo().join("systemd").join(name)).unwrap();
    let mut section = String::new();
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if line.starts_with('[') {
            section = line.trim_matches(['[', ']']).to_string();
            continue;
        }
        let (k, v) = line.split_once('=').expect("Key=Value");
        out.entry(format!("{section}.{k}"))
            .or_default()
            .push(v.to_string());
    }
    out
}

fn one(u: &BTreeMap<String, Vec<String>>, key: &str) -> String {
    let v = u.get(key).unwrap_or_else(|| panic!("{key} missing"));
    assert_eq!(v.len(), 1, "{key} set more than once: {v:?}");
    v[0].clone()
}

/// A root directory holding the units where a package installs them, the binaries at the paths
/// the units name, and the host's targets (sysinit.target etc., which the default dependencies
/// of every unit pull in), for `systemd-analyze --root`.
fn unit_root() -> tempfile::TempDir {
    let root = tempfile::Builder::new()
        .prefix("lancache-units")
        .tempdir()
        .unwrap();
    let sys = root.path().join("usr/lib/systemd/system");
    std::fs::create_dir_all(&sys).unwrap();
    std::fs::create_dir_all(root.path().join("usr/bin")).unwrap();
    for u in UNITS {
        std::fs::copy(repo().join("systemd").join(u), sys.join(u)).unwrap();
    }
    for b in [crate::util::lancached_bin(), crate::util::lancachectl_bin()] {
        std::fs::copy(&b, root.path().join("usr/bin").join(b.file_name().unwrap())).unwrap();
    }
    for dir in ["/lib/systemd/system", "/usr/lib/systemd/system"] {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            if name.to_string_lossy().ends_with(".target") && !sys.join(&name).exists() {
                // Targets only: no unit of ours may depend on anything else of the host's.
                let _ = std::fs::copy(e.path(), sys.join(&name));
            }
        }
    }
    root
}

#[test]
fn systemd_analyze_verify_accepts_the_units() {
    if !crate::util::require_program("systemd-analyze") {
        return;
    }
    let root = unit_root();
    let sys = root.path().join("usr/lib/systemd/system");
    // --man=no: the man pages are checked in the installed package (tests/packaging.rs), and
    // `man` would look on the host, not in --root.
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.path().display()))
        .arg("--man=no")
        .args(UNITS.iter().map(|u| sys.join(u)))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{stderr}"
    );
    // verify exits 0 on some warnings; any line about our units is a finding.
    let findings: Vec<&str> = stderr.lines().filter(|l| l.contains("lancached")).collect();
    assert!(findings.is_empty(), "systemd-analyze verify:\n{stderr}");
}

/// The "Overall exposure level" figure of `systemd-analyze security --offline=yes`.
pub fn exposure(root: &Path) -> (f64, String) {
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(format!("--root={}", root.display()))
        .arg("lancached.service")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level for lancached.service"))
        .unwrap_or_else(|| {
            panic!(
                "no exposure figure:\n{text}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let figure: f64 = line
        .split(':')
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cannot parse {line:?}"));
    (figure, text)
}

#[test]
fn security_exposure_is_at_most_1_5() {
    if !crate::util::require_program("systemd-analyze") {
        return;
    }
    let root = unit_root();
    let (figure, report) = exposure(root.path());
    eprintln!("systemd-analyze security: lancached.service exposure {figure}");
    assert!(figure <= 1.5, "exposure {figure} > 1.5:\n{report}");
}

#[test]
fn units_agree_with_the_daemon() {
    let svc = unit("lancached.service");
    let defaults = lancached::config::Config::default();

    assert_eq!(one(&svc, "Service.Type"), "notify");
    assert_eq!(
        one(&svc, "Service.ExecStart"),
        format!(
            "/usr/bin/lancached --config {}",
            lancached::config::DEFAULT_CONFIG_PATH
        )
    );
    assert_eq!(
        one(&svc, "Service.ExecReload"),
        "/usr/bin/lancachectl reload"
    );
    let stop = humantime::parse_duration(&one(&svc, "Service.TimeoutStopSec")).unwrap();
    assert!(
        stop >= lancached::daemon::DRAIN_DEADLINE + Duration::from_secs(5),
        "TimeoutStopSec={stop:?} leaves no margin over the drain deadline {:?}",
        lancached::daemon::DRAIN_DEADLINE
    );
    assert!(svc.contains_key("Service.WatchdogSec"));
    assert_eq!(one(&svc, "Service.Restart"), "on-failure");
    assert_eq!(one(&svc, "Service.CapabilityBoundingSet"), "");
    assert!(!svc.contains_key("Service.DynamicUser"));

    // The directories systemd creates are the ones the default configuration uses.
    let dir = |key: &str, base: &str| PathBuf::from(base).join(one(&svc, key));
    assert_eq!(
        dir("Service.CacheDirectory", "/var/cache"),
        defaults.cache.dir
    );
    assert!(
        defaults
            .tls
            .ca_dir
            .starts_with(dir("Service.StateDirectory", "/var/lib")),
        "{:?}",
        defaults.tls.ca_dir
    );
    assert_eq!(
        dir("Service.ConfigurationDirectory", "/etc"),
        Path::new(lancached::config::DEFAULT_CONFIG_PATH)
            .parent()
            .unwrap()
    );
    assert_eq!(
        Some(dir("Service.RuntimeDirectory", "/run").as_path()),
        defaults.control.socket.parent()
    );

    // The user: the sysusers.d line, the service's User= and the control group all agree.
    let sysusers = std::fs::read_to_string(repo().join("systemd/lancached.sysusers")).unwrap();
    let user_line = sysusers
        .lines()
        .find(|l| l.starts_with("u "))
        .expect("a `u` line");
    let user = user_line.split_whitespace().nth(1).unwrap();
    assert_eq!(one(&svc, "Service.User"), user);
    assert_eq!(one(&svc, "Service.Group"), user);
    assert_eq!(defaults.control.group, user);

    // Each socket unit hands its sockets to the service under a name the daemon takes.
    let mut names = Vec::new();
    for u in &UNITS[1..] {
        let s = unit(u);
        assert_eq!(one(&s, "Socket.Service"), "lancached.service", "{u}");
        let name = one(&s, "Socket.FileDescriptorName");
        assert!(
            svc["Service.Sockets"][0]
                .split_whitespace()
                .any(|x| x == *u),
            "{u} not in Sockets="
        );
        assert!(svc["Unit.Wants"][0].contains(u), "{u} not in Wants=");
        names.push((u.to_string(), name, s));
    }
    use lancached::listeners::{classify, SocketKind};
    for (u, name, s) in &names {
        let kinds: Vec<SocketKind> = s
            .iter()
            .flat_map(|(k, v)| {
                let kind = match k.as_str() {
                    "Socket.ListenDatagram" => Some(SocketKind::Udp),
                    "Socket.ListenStream" if v[0].starts_with('/') => Some(SocketKind::Unix),
                    "Socket.ListenStream" => Some(SocketKind::Tcp),
                    _ => None,
                };
                kind.into_iter()
            })
            .collect();
        assert!(!kinds.is_empty(), "{u} listens on nothing");
        for kind in kinds {
            classify(name, kind).unwrap_or_else(|e| panic!("{u}: {e}"));
        }
    }
    let control = unit("lancached-control.socket");
    assert_eq!(
        PathBuf::from(one(&control, "Socket.ListenStream")),
        defaults.control.socket
    );
    assert_eq!(
        PathBuf::from(one(&control, "Socket.ListenStream")),
        PathBuf::from(lancache_protocol::DEFAULT_SOCKET)
    );
    assert_eq!(one(&control, "Socket.SocketGroup"), user);
    assert_eq!(one(&control, "Socket.SocketMode"), "0660");
    let dns = unit("lancached-dns.socket");
    assert_eq!(one(&dns, "Socket.ListenDatagram"), "53");
    assert_eq!(one(&dns, "Socket.ListenStream"), "53");
    assert_eq!(
        one(&unit("lancached-http.socket"), "Socket.ListenStream"),
        "80"
    );
    assert_eq!(
        one(&unit("lancached-https.socket"), "Socket.ListenStream"),
        "443"
    );
}

/// A port free for both UDP and TCP on 127.0.0.1 (the DNS unit listens on both).
fn free_udp_tcp_port() -> u16 {
    for _ in 0..50 {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no port free for UDP and TCP");
}

fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Notifications(Arc<Mutex<Vec<String>>>);

impl Notifications {
    fn listen(path: &Path) -> Notifications {
        let sock = UnixDatagram::bind(path).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = sock.recv(&mut buf) {
                s.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        });
        Notifications(seen)
    }

    fn count(&self, line: &str) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|m| m.lines().any(|l| l == line))
            .count()
    }

    fn wait(&self, line: &str, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.count(line) >= n {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

#[test]
fn runs_under_systemd_socket_activate_like_the_units() {
    if !crate::util::require_program("systemd-socket-activate") {
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("lancache-units-run")
        .tempdir()
        .unwrap();
    let d = dir.path();
    let (dns, http, https) = (free_udp_tcp_port(), free_tcp_port(), free_tcp_port());
    let control = d.join("control.sock");

    // The shipped configuration, with only the paths a test cannot use moved into the temp dir.
    let shipped = std::fs::read_to_string(repo().join("packaging/lancached.toml")).unwrap();
    let cfg_text = shipped
        .replace(
            "\"/var/cache/lancached\"",
            &format!("{:?}", d.join("cache")),
        )
        .replace("\"/var/lib/lancached/ca\"", &format!("{:?}", d.join("ca")))
        .replace("\"/run/lancached/control.sock\"", &format!("{control:?}"));
    assert_ne!(cfg_text, shipped);
    let cfg = d.join("lancached.toml");
    std::fs::write(&cfg, &cfg_text).unwrap();

    let notify_path = d.join("notify.sock");
    let notes = Notifications::listen(&notify_path);
    // systemd-socket-activate passes only PATH/TERM/USER/HOME and -E variables to its child,
    // so both levels forward what systemd would set for a Type=notify service with WatchdogSec=.
    let env = [
        format!("-ENOTIFY_SOCKET={}", notify_path.display()),
        "-EWATCHDOG_USEC=1000000".to_string(),
        "-ERUST_LOG=info".to_string(),
    ];
    // Outer: lancached-dns.socket's ListenDatagram=. Inner: its ListenStream= plus the http,
    // https and control units; the inner passes the outer's UDP socket through first, so the
    // names cover all five descriptors in order.
    let mut child = Command::new("systemd-socket-activate")
        .args([
            "--datagram",
            "--listen",
            &format!("127.0.0.1:{dns}"),
            "--fdname=dns",
        ])
        .args(&env)
        .arg("systemd-socket-activate")
        .args(["--listen", &format!("127.0.0.1:{dns}")])
        .args(["--listen", &format!("127.0.0.1:{http}")])
        .args(["--listen", &format!("127.0.0.1:{https}")])
        .args(["--listen", &control.display().to_string()])
        .arg("--fdname=dns:dns:http:https:control")
        .args(&env)
        .arg(crate::util::lancached_bin())
        .arg("--config")
        .arg(&cfg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = Arc::new(Mutex::new(String::new()));
    {
        let stderr = stderr.clone();
        let mut pipe = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            use std::io::Read;
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                stderr
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
    }
    let log = || stderr.lock().unwrap().clone();

    // Like systemd, systemd-socket-activate starts the service on the first traffic: a DNS
    // datagram on the UDP socket wakes the outer, which execs the inner, which sees the same
    // datagram still queued and execs lancached (same pid all along).
    // The tool binds only after it started, so knock until the daemon is up.
    let q = UdpSocket::bind("127.0.0.1:0").unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while notes.count("READY=1") == 0 && Instant::now() < deadline {
        let _ = q.send_to(&dns_query(0x4c41, "registry.ollama.ai"), ("127.0.0.1", dns));
        notes.wait("READY=1", 1, Duration::from_millis(200));
    }
    assert!(
        notes.count("READY=1") >= 1,
        "no READY=1; notifications {:?}; stderr:\n{}",
        notes.all(),
        log()
    );

    let ctl = |args: &[&str]| {
        Command::new(crate::util::lancachectl_bin())
            .arg("--socket")
            .arg(&control)
            .args(args)
            .output()
            .unwrap()
    };
    // Every socket arrived and was classified by its name.
    let status = ctl(&["status", "--json"]);
    assert!(status.status.success(), "{status:?}\n{}", log());
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let listeners = |name: &str| -> Vec<String> {
        status["subsystems"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .map(|s| {
                s["listeners"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|l| l.as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    let want = [
        ("dns", format!("udp 127.0.0.1:{dns} (socket-activated)")),
        ("dns", format!("tcp 127.0.0.1:{dns} (socket-activated)")),
        ("http", format!("tcp 127.0.0.1:{http} (socket-activated)")),
        ("https", format!("tcp 127.0.0.1:{https} (socket-activated)")),
        (
            "control",
            format!("unix {} (socket-activated)", control.display()),
        ),
    ];
    for (sub, l) in &want {
        assert!(
            listeners(sub).contains(l),
            "{sub}: {l:?} not in {:?}",
            listeners(sub)
        );
    }
    let health = ureq::get(&format!("http://127.0.0.1:{http}/health"))
        .call()
        .unwrap();
    assert_eq!(health.status(), 200);

    // WatchdogSec= -> WATCHDOG_USEC=1s: pings at half the interval.
    assert!(
        notes.wait("WATCHDOG=1", 2, Duration::from_secs(5)),
        "{:?}",
        notes.all()
    );

    // ExecReload=/usr/bin/lancachectl reload: blocks, succeeds, bracketed for systemd.
    let reload = ctl(&["reload"]);
    assert!(
        reload.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&reload.stderr),
        log()
    );
    // The reply can overtake the reader thread that collects the notifications: wait, not count.
    assert!(
        notes.wait("RELOADING=1", 1, Duration::from_secs(5)),
        "{:?}",
        notes.all()
    );
    assert!(notes.wait("READY=1", 2, Duration::from_secs(5)));

    // A broken file makes ExecReload fail (systemctl reload reports it) and changes nothing.
    std::fs::write(&cfg, format!("{cfg_text}\n[cache]\nnot_a_key = 1\n")).unwrap();
    let bad = ctl(&["reload"]);
    assert!(!bad.status.success(), "a bad config was accepted");
    let health = ureq::get(&format!("http://127.0.0.1:{http}/health"))
        .call()
        .unwrap();
    assert_eq!(
        health.status(),
        200,
        "daemon stopped serving after a bad reload"
    );

    // systemctl stop: SIGTERM, STOPPING=1, clean exit well inside TimeoutStopSec=30s.
    let started = Instant::now();
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "not stopped within TimeoutStopSec"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}\n{}", log());
    assert!(notes.count("STOPPING=1") >= 1, "{:?}", notes.all());
}

/// A minimal DNS query (RFC 1035 §4.1): header with RD, one IN A question.
fn dns_query(id: u16, name: &str) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        m.push(label.len() as u8);
        m.extend_from_slice(label.as_bytes());
    }
    m.extend_from_slice(&[0, 0, 1, 0, 1]);
    m
}
