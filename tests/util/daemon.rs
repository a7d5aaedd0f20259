//! Starts the real `lancached` the way systemd does: the harness binds every socket itself
//! (TCP/UDP on 127.0.0.1 port 0, the control socket in a temporary directory), passes them as
//! `LISTEN_FDS` (moved onto fd 3.. in `pre_exec`, `LISTEN_PID` set to the child's own pid),
//! listens on a `NOTIFY_SOCKET` of its own and waits for `READY=1`.

use std::io::Read;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Which sockets the harness activates (the rest come from the config file, if listed).
#[derive(Clone, Copy, Debug)]
pub struct Activate {
    pub dns: bool,
    pub http: bool,
    pub https: bool,
    pub control: bool,
}

impl Activate {
    /// Nothing socket-activated: the daemon binds every `listen` address of its config itself.
    pub fn none() -> Activate {
        Activate {
            dns: false,
            http: false,
            https: false,
            control: false,
        }
    }
}

impl Default for Activate {
    fn default() -> Self {
        Activate {
            dns: true,
            http: true,
            https: false,
            control: true,
        }
    }
}

pub struct DaemonBuilder {
    extra_config: String,
    activate: Activate,
    env: Vec<(String, String)>,
    watchdog_usec: Option<u64>,
    dir: Option<tempfile::TempDir>,
    uid: Option<u32>,
    http_addr: Option<SocketAddr>,
    https_addr: Option<SocketAddr>,
}

pub struct Daemon {
    pub child: Child,
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    pub config_path: PathBuf,
    pub cache_dir: PathBuf,
    pub http: Option<SocketAddr>,
    pub https: Option<SocketAddr>,
    pub dns: Option<SocketAddr>,
    pub control: PathBuf,
    notifications: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
}

impl Default for DaemonBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl DaemonBuilder {
    pub fn new() -> Self {
        DaemonBuilder {
            extra_config: String::new(),
            activate: Activate::default(),
            env: vec![],
            watchdog_usec: None,
            dir: None,
            uid: None,
            http_addr: None,
            https_addr: None,
        }
    }

    /// TOML appended to the harness's base configuration (which sets only `cache.dir`, `cache.min_free`,
    /// `tls.ca_dir`, and empty `listen` lists so nothing but the activated sockets is bound).
    /// Sections named here must not repeat a key the base sets.
    pub fn config(mut self, toml: &str) -> Self {
        self.extra_config.push_str(toml);
        self.extra_config.push('\n');
        self
    }

    pub fn activate(mut self, a: Activate) -> Self {
        self.activate = a;
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    pub fn watchdog_usec(mut self, usec: u64) -> Self {
        self.watchdog_usec = Some(usec);
        self
    }

    /// Reuse a directory (for restarts over the same cache).
    pub fn dir(mut self, dir: tempfile::TempDir) -> Self {
        self.dir = Some(dir);
        self
    }

    /// Runs the daemon as another user (tests of the control socket's authorisation).
    pub fn uid(mut self, uid: u32) -> Self {
        self.uid = Some(uid);
        self
    }

    /// Binds the activated HTTP socket at this address (e.g. `0.0.0.0:80` inside a test
    /// namespace, where `ollama pull --insecure` expects the registry) instead of 127.0.0.1:0.
    pub fn http_addr(mut self, addr: SocketAddr) -> Self {
        self.http_addr = Some(addr);
        self
    }

    /// Same for the activated HTTPS socket.
    pub fn https_addr(mut self, addr: SocketAddr) -> Self {
        self.https_addr = Some(addr);
        self
    }

    pub fn start(self) -> Daemon {
        let d = self.spawn();
        d.wait_ready();
        d
    }

    /// Starts without waiting for READY (tests of start-up failures).
    pub fn spawn(self) -> Daemon {
        let tmp = self.dir.unwrap_or_else(|| {
            tempfile::Builder::new()
                .prefix("lancached-test")
                .tempdir()
                .unwrap()
        });
        let dir = tmp.path().to_path_buf();
        let cache_dir = dir.join("cache");
        let control = dir.join("control.sock");
        let config_path = dir.join("lancached.toml");
        let a = self.activate;
        // min_free = 0: the default (10 GiB) would make a daemon on a nearly full test machine
        // evict what its test just fetched; tests of min_free set it themselves.
        let base = format!(
            "[cache]\ndir = {cache:?}\nmin_free = 0\n\n[tls]\nca_dir = {ca:?}\nlisten = []\n\n[http]\nlisten = []\n\n[dns]\nlisten = []\n\n[control]\nsocket = {ctl:?}\n\n",
            cache = cache_dir.display().to_string(),
            ca = dir.join("ca").display().to_string(),
            ctl = if a.control { String::new() } else { control.display().to_string() },
        );
        let text = merge_toml(&base, &self.extra_config);
        std::fs::write(&config_path, text).unwrap();

        // Sockets the harness binds and hands over, in LISTEN_FDS order.
        let mut fds: Vec<(std::os::fd::OwnedFd, &str)> = Vec::new();
        let (mut http, mut https, mut dns) = (None, None, None);
        if a.dns {
            let (udp, tcp) = bind_udp_tcp_pair();
            dns = Some(udp.local_addr().unwrap());
            fds.push((udp.into(), "dns"));
            fds.push((tcp.into(), "dns"));
        }
        if a.http {
            let l =
                TcpListener::bind(self.http_addr.unwrap_or(([127, 0, 0, 1], 0).into())).unwrap();
            http = Some(l.local_addr().unwrap());
            fds.push((l.into(), "http"));
        }
        if a.https {
            let l =
                TcpListener::bind(self.https_addr.unwrap_or(([127, 0, 0, 1], 0).into())).unwrap();
            https = Some(l.local_addr().unwrap());
            fds.push((l.into(), "https"));
        }
        if a.control {
            // A restart over the same directory finds the previous run's socket file.
            let _ = std::fs::remove_file(&control);
            let l = UnixListener::bind(&control).unwrap();
            fds.push((l.into(), "control"));
        }

        let notify_path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&notify_path);
        let notify = UnixDatagram::bind(&notify_path).unwrap();
        let notifications = Arc::new(Mutex::new(Vec::new()));
        {
            let notifications = notifications.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 4096];
                while let Ok(n) = notify.recv(&mut buf) {
                    let msg = String::from_utf8_lossy(&buf[..n]).to_string();
                    notifications.lock().unwrap().push(msg);
                }
            });
        }

        // LISTEN_PID must be the daemon's own pid, known only after fork; the environment block
        // is fixed before fork, so a shell sets it and execs the daemon (same pid), as
        // systemd-socket-activate does.
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg("[ -n \"$LISTEN_FDS\" ] && export LISTEN_PID=$$; exec \"$0\" \"$@\"");
        cmd.arg(super::lancached_bin())
            .arg("--config")
            .arg(&config_path);
        cmd.env_remove("LANCACHED_CONFIG")
            .env_remove("JOURNAL_STREAM");
        cmd.env("NOTIFY_SOCKET", &notify_path);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info,lancached=debug");
        }
        if let Some(w) = self.watchdog_usec {
            cmd.env("WATCHDOG_USEC", w.to_string());
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let raw: Vec<RawFd> = fds.iter().map(|(fd, _)| fd.as_raw_fd()).collect();
        let names: Vec<&str> = fds.iter().map(|(_, n)| *n).collect();
        if !raw.is_empty() {
            cmd.env("LISTEN_FDS", raw.len().to_string());
            cmd.env("LISTEN_FDNAMES", names.join(":"));
        }
        let uid = self.uid;
        unsafe {
            cmd.pre_exec(move || {
                if !raw.is_empty() {
                    pass_fds(&raw)?;
                }
                if let Some(uid) = uid {
                    if libc::setgid(uid) != 0 || libc::setuid(uid) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().expect("spawn lancached");
        drop(fds);
        let stderr = Arc::new(Mutex::new(String::new()));
        {
            let stderr = stderr.clone();
            let mut pipe = child.stderr.take().unwrap();
            std::thread::spawn(move || {
                let mut buf = [0u8; 8192];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let s = String::from_utf8_lossy(&buf[..n]).to_string();
                    if std::env::var_os("LANCACHE_TEST_LOG").is_some() {
                        eprint!("{s}");
                    }
                    stderr.lock().unwrap().push_str(&s);
                }
            });
        }
        Daemon {
            child,
            dir,
            _tmp: Some(tmp),
            config_path,
            cache_dir,
            http,
            https,
            dns,
            control,
            notifications,
            stderr,
        }
    }
}

/// Appends `extra` to `base`, merging tables that both name (so a test can add keys to
/// `[http]` without repeating the header, which TOML forbids).
fn merge_toml(base: &str, extra: &str) -> String {
    let mut doc: toml::Table = base.parse().unwrap();
    let extra: toml::Table = extra.parse().expect("test config is valid TOML");
    fn merge(into: &mut toml::Table, from: toml::Table) {
        for (k, v) in from {
            match (into.get_mut(&k), v) {
                (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge(a, b),
                (_, v) => {
                    into.insert(k, v);
                }
            }
        }
    }
    merge(&mut doc, extra);
    toml::to_string(&doc).unwrap()
}

/// Moves `fds` onto 3, 4, ... (async-signal-safe: only dup/dup2/fcntl).
pub unsafe fn pass_fds(fds: &[RawFd]) -> std::io::Result<()> {
    // First lift every fd above the target range so dup2 never clobbers one still needed.
    let base = 3 + fds.len() as RawFd + 100;
    let mut lifted = Vec::with_capacity(fds.len());
    for &fd in fds {
        let n = libc::fcntl(fd, libc::F_DUPFD, base);
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        lifted.push(n);
    }
    for (i, &fd) in lifted.iter().enumerate() {
        let target = 3 + i as RawFd;
        if libc::dup2(fd, target) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        libc::close(fd);
    }
    Ok(())
}

/// A UDP and a TCP socket on the same loopback port, as the DNS socket unit provides.
fn bind_udp_tcp_pair() -> (UdpSocket, TcpListener) {
    for _ in 0..50 {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        if let Ok(tcp) = TcpListener::bind(udp.local_addr().unwrap()) {
            return (udp, tcp);
        }
    }
    panic!("no free port for both UDP and TCP");
}

impl Daemon {
    pub fn builder() -> DaemonBuilder {
        DaemonBuilder::new()
    }

    pub fn start() -> Daemon {
        DaemonBuilder::new().start()
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn notifications(&self) -> Vec<String> {
        self.notifications.lock().unwrap().clone()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until a notification containing `needle` has arrived `count` times in all.
    pub fn wait_notify(&self, needle: &str, count: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self
                .notifications()
                .iter()
                .filter(|m| m.lines().any(|l| l == needle))
                .count()
                >= count
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    pub fn wait_ready(&self) {
        if !self.wait_notify("READY=1", 1, Duration::from_secs(20)) {
            panic!(
                "lancached did not report READY=1 within 20s; stderr:\n{}",
                self.stderr()
            );
        }
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http.expect("http is activated"))
    }

    /// Runs `lancachectl ARGS` against this daemon.
    pub fn ctl(&self, args: &[&str]) -> Output {
        Command::new(super::lancachectl_bin())
            .args(args)
            .env("LANCACHE_SOCKET", &self.control)
            .output()
            .unwrap()
    }

    /// Runs `lancachectl ARGS --json` and parses its answer.
    pub fn ctl_json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.push("--json");
        let out = self.ctl(&a);
        assert!(
            out.status.success(),
            "lancachectl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    pub fn signal(&self, sig: i32) {
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    /// SIGTERM and wait (at most `timeout`) for the exit status.
    pub fn stop(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.signal(libc::SIGTERM);
        self.wait_exit(timeout)
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// kill -9: no clean-up of any kind.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Keeps the directory (cache, config) for a restart with `DaemonBuilder::dir`.
    pub fn into_dir(mut self) -> tempfile::TempDir {
        self.kill9();
        self._tmp.take().unwrap()
    }

    pub fn write_config(&self, extra: &str) {
        let base = std::fs::read_to_string(&self.config_path).unwrap();
        std::fs::write(&self.config_path, merge_toml(&base, extra)).unwrap();
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    pub fn control_path(&self) -> &Path {
        &self.control
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
