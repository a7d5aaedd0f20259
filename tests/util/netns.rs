//! Test hosts of our own: a network namespace per test (`ip netns`), with its own loopback and
//! its own `/etc/hosts` and `/etc/resolv.conf` (`/etc/netns/NAME/*`, which `ip netns exec`
//! bind-mounts over `/etc`). Traffic in it never leaves it.
//!
//! `enter()` moves the calling thread into the namespace; threads and processes started from it
//! afterwards are born there, which is how a test puts the daemon, its fake upstream and a real
//! Ollama client on a private network (nextest runs every test in its own process).

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

pub struct NetNs {
    pub name: String,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl NetNs {
    /// Creates a namespace with loopback up. `hosts` lines become its `/etc/hosts`.
    pub fn new(hosts: &[(&str, &str)]) -> NetNs {
        let name = format!(
            "lct-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &name]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        let ns = NetNs { name };
        let mut text = String::from("127.0.0.1 localhost\n::1 localhost\n");
        for (addr, host) in hosts {
            text.push_str(&format!("{addr} {host}\n"));
        }
        std::fs::create_dir_all(ns.etc_dir()).unwrap();
        std::fs::write(ns.etc_dir().join("hosts"), text).unwrap();
        ns
    }

    /// `/etc/netns/NAME`: files here replace `/etc/*` for commands run with [`NetNs::command`].
    pub fn etc_dir(&self) -> PathBuf {
        PathBuf::from("/etc/netns").join(&self.name)
    }

    /// Points the namespace's resolver at `server` (an address inside the namespace).
    pub fn set_resolver(&self, server: &str) {
        std::fs::write(
            self.etc_dir().join("resolv.conf"),
            format!("nameserver {server}\n"),
        )
        .unwrap();
    }

    /// Joins the namespace to the root namespace with a veth pair on a /30 of its own (derived
    /// from the pid and the namespace's counter, so parallel test processes never collide), and
    /// routes everything through it. Returns (root side, namespace side) addresses: the root
    /// side is where a daemon in the root namespace listens for this "LAN client". The pair
    /// goes away with the namespace.
    pub fn veth(&self) -> (String, String) {
        let n = self
            .name
            .rsplit('-')
            .next()
            .unwrap()
            .parse::<u32>()
            .unwrap();
        // 14 bits of pid and 4 of counter pick one /30 out of 10.213.0.0/16.
        let slot = ((std::process::id() & 0x3fff) << 4 | (n & 0xf)) % (1 << 14);
        let base = slot * 4;
        let (root_ip, ns_ip) = (
            format!("10.213.{}.{}", base >> 8, (base & 0xff) + 1),
            format!("10.213.{}.{}", base >> 8, (base & 0xff) + 2),
        );
        let (root_if, ns_if) = (format!("lcv{slot}a"), format!("lcv{slot}b"));
        let _ = Command::new("ip").args(["link", "del", &root_if]).output();
        ip(&[
            "link", "add", &root_if, "type", "veth", "peer", "name", &ns_if, "netns", &self.name,
        ]);
        ip(&["addr", "add", &format!("{root_ip}/30"), "dev", &root_if]);
        ip(&["link", "set", &root_if, "up"]);
        let n = &self.name;
        ip(&[
            "-n",
            n,
            "addr",
            "add",
            &format!("{ns_ip}/30"),
            "dev",
            &ns_if,
        ]);
        ip(&["-n", n, "link", "set", &ns_if, "up"]);
        ip(&["-n", n, "route", "add", "default", "via", &root_ip]);
        (root_ip, ns_ip)
    }

    /// Moves the calling thread into the namespace.
    pub fn enter(&self) {
        let f = std::fs::File::open(format!("/run/netns/{}", self.name)).expect("netns file");
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
    }

    /// A command run inside the namespace with its `/etc/hosts` and `/etc/resolv.conf`.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Processes still inside would keep it alive: kill them first.
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<i32>() {
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = std::fs::remove_dir_all(self.etc_dir());
    }
}

/// A LAN of test hosts: a switch namespace holding a bridge (`br0`, [`Lan::SWITCH_IP`]/24,
/// where the test's shared services listen) and one namespace per host, joined to the bridge
/// by a veth pair (`eth0` at [`Lan::host_ip`]). Every address lives inside namespaces this
/// test created, so parallel tests never collide and nothing reaches the machine's own network.
pub struct Lan {
    pub switch: NetNs,
    pub hosts: Vec<NetNs>,
}

impl Lan {
    pub const SWITCH_IP: &'static str = "10.214.0.1";

    pub fn host_ip(i: usize) -> String {
        format!("10.214.0.{}", 11 + i)
    }

    pub fn new(n: usize) -> Lan {
        let switch = NetNs::new(&[]);
        let sw = switch.name.clone();
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"]);
        ip(&[
            "-n",
            &sw,
            "addr",
            "add",
            &format!("{}/24", Lan::SWITCH_IP),
            "dev",
            "br0",
        ]);
        ip(&["-n", &sw, "link", "set", "br0", "up"]);
        let hosts = (0..n)
            .map(|i| {
                let h = NetNs::new(&[]);
                let port = format!("p{i}");
                ip(&[
                    "-n", &sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                    "netns", &h.name,
                ]);
                ip(&["-n", &sw, "link", "set", &port, "master", "br0"]);
                ip(&["-n", &sw, "link", "set", &port, "up"]);
                let addr = format!("{}/24", Lan::host_ip(i));
                ip(&["-n", &h.name, "addr", "add", &addr, "dev", "eth0"]);
                ip(&["-n", &h.name, "link", "set", "eth0", "up"]);
                h
            })
            .collect();
        Lan { switch, hosts }
    }
}

/// Whether this process may create namespaces (root with iproute2); tests that need it skip
/// loudly otherwise, like any missing program.
pub fn available() -> bool {
    super::require_program("ip") && nix::unistd::Uid::effective().is_root()
}
