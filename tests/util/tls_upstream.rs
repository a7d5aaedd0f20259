//! An upstream registry behind TLS with a test root of its own: nginx terminating TLS for a
//! host name (leaf signed by a throwaway CA made with openssl) in front of a plain-HTTP
//! server, and a tiny DNS responder that answers that name with 127.0.0.1. The daemon reaches
//! it only through `[upstream] resolvers` and trusts it only through `[upstream] ca_file`, the
//! way a real registry is reached through real DNS and the public roots.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Answers every A query with 127.0.0.1 and every other type with no records; counts queries.
pub fn dns_responder() -> (SocketAddr, Arc<AtomicU64>) {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = sock.local_addr().unwrap();
    let count = Arc::new(AtomicU64::new(0));
    let c = count.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            if n < 12 {
                continue;
            }
            let q = &buf[..n];
            let mut i = 12;
            while i < n && q[i] != 0 {
                i += 1 + q[i] as usize;
            }
            if i + 5 > n {
                continue;
            }
            let qend = i + 5;
            let qtype = u16::from_be_bytes([q[i + 1], q[i + 2]]);
            c.fetch_add(1, Ordering::SeqCst);
            let mut r = Vec::with_capacity(64);
            r.extend_from_slice(&q[..2]);
            r.extend_from_slice(&[0x81, 0x80, 0, 1]);
            r.extend_from_slice(&[0, if qtype == 1 { 1 } else { 0 }, 0, 0, 0, 0]);
            r.extend_from_slice(&q[12..qend]);
            if qtype == 1 {
                r.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 127, 0, 0, 1]);
            }
            let _ = sock.send_to(&r, from);
        }
    });
    (addr, count)
}

fn openssl(dir: &Path, args: &[&str]) {
    let ok = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success();
    assert!(ok, "openssl {args:?}");
}

/// nginx serving `https://NAME:port` (127.0.0.1) as a reverse proxy to a plain-HTTP backend.
pub struct TlsFront {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl TlsFront {
    /// Makes a test CA and a leaf for `name`, and starts nginx proxying to `backend` (a base URL).
    pub fn start(name: &str, backend: &str) -> TlsFront {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let mut ca = vec!["req", "-x509"];
        ca.extend(ec);
        ca.extend(["-keyout", "ca.key", "-out", "ca.pem", "-days", "2"]);
        ca.extend(["-subj", "/CN=lancache test CA"]);
        openssl(p, &ca);
        let subj = format!("/CN={name}");
        let mut leaf = vec!["req"];
        leaf.extend(ec);
        leaf.extend(["-keyout", "leaf.key", "-out", "leaf.csr", "-subj", &subj]);
        openssl(p, &leaf);
        std::fs::write(
            p.join("ext"),
            format!("subjectAltName=DNS:{name}\nbasicConstraints=CA:FALSE\n"),
        )
        .unwrap();
        openssl(
            p,
            &[
                "x509",
                "-req",
                "-in",
                "leaf.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "leaf.pem",
                "-days",
                "2",
                "-extfile",
                "ext",
            ],
        );
        let port = super::ollama::free_port();
        let d = p.display();
        std::fs::write(
            p.join("nginx.conf"),
            format!(
                "worker_processes 1; daemon off; pid {d}/nginx.pid; error_log {d}/err.log;\n\
                 events {{ worker_connections 64; }}\n\
                 http {{ access_log off;\n\
                   server {{ listen 127.0.0.1:{port} ssl; server_name {name};\n\
                     ssl_certificate {d}/leaf.pem; ssl_certificate_key {d}/leaf.key;\n\
                     location / {{ proxy_pass {backend}; proxy_set_header Host $host; proxy_buffering off; }} }} }}\n"
            ),
        )
        .unwrap();
        let child = Command::new("nginx")
            .args(["-c", &format!("{d}/nginx.conf"), "-p", &d.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let front = TlsFront { child, port, dir };
        let t = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(t.elapsed() < Duration::from_secs(10), "nginx did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        front
    }

    /// The test root that signed the leaf (for `[upstream] ca_file`).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        // TERM, not KILL: the master takes its workers down with it.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let _ = self.child.wait();
    }
}
