//! The upstream client: the registry is named by a host name that only the configured
//! `[upstream] resolvers` know (a DNS responder of the test's own; the system resolver would
//! fail), reached over HTTPS (nginx terminating TLS with a certificate from a test CA, trusted
//! only through `[upstream] ca_file`), and its 307 to the CDN host is followed by the cache.
//! Without the CA the TLS handshake is refused and nothing is served as if it worked.

use std::net::UdpSocket;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::util::upstream::{blob_bytes, digest, raw_get, FakeUpstream};
use crate::util::{require_program, Daemon};

const NAME: &str = "upstream.lancache-test";

/// Answers every A query with 127.0.0.1 and every other type with no records.
fn dns_responder() -> (std::net::SocketAddr, Arc<AtomicU64>) {
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

struct Nginx(Child);

impl Drop for Nginx {
    fn drop(&mut self) {
        // TERM, not KILL: the master takes its workers down with it.
        unsafe {
            libc::kill(self.0.id() as i32, libc::SIGTERM);
        }
        let _ = self.0.wait();
    }
}

fn openssl(dir: &std::path::Path, args: &[&str]) {
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

#[test]
fn upstream_over_tls_via_configured_resolvers() {
    if !require_program("nginx") || !require_program("openssl") {
        return;
    }
    let up = FakeUpstream::start();
    let layer = blob_bytes(2 << 20, 21);
    let manifest = up.add_model("library/tls", "latest", &[&layer[..]]);

    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    openssl(
        p,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=lancache test CA",
        ],
    );
    openssl(
        p,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "leaf.key",
            "-out",
            "leaf.csr",
            "-subj",
            &format!("/CN={NAME}"),
        ],
    );
    std::fs::write(
        p.join("ext"),
        format!("subjectAltName=DNS:{NAME}\nbasicConstraints=CA:FALSE\n"),
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
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let d = p.display();
    std::fs::write(
        p.join("nginx.conf"),
        format!(
            "worker_processes 1; daemon off; pid {d}/nginx.pid; error_log {d}/err.log;\n\
             events {{ worker_connections 64; }}\n\
             http {{ access_log off;\n\
               server {{ listen 127.0.0.1:{port} ssl; server_name {NAME};\n\
                 ssl_certificate {d}/leaf.pem; ssl_certificate_key {d}/leaf.key;\n\
                 location / {{ proxy_pass {}; proxy_set_header Host $host; proxy_buffering off; }} }} }}\n",
            up.url()
        ),
    )
    .unwrap();
    let _nginx = Nginx(
        Command::new("nginx")
            .args(["-c", &format!("{d}/nginx.conf"), "-p", &d.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(t.elapsed() < Duration::from_secs(10), "nginx did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (dns, queries) = dns_responder();
    let config = |ca: &str| {
        format!(
            "[upstream]\nresolvers = [\"{dns}\"]\nca_file = \"{ca}\"\n[upstream.registries]\n\"registry.ollama.ai\" = \"https://{NAME}:{port}\"\n[cache]\nslice_size = \"1MiB\"\n"
        )
    };

    // Without the CA: the handshake fails and the client gets a clear 502, not a manifest.
    let d0 = Daemon::builder().config(&config("")).start();
    let r = raw_get(
        d0.http.unwrap(),
        "registry.ollama.ai",
        "/v2/library/tls/manifests/latest",
        &[],
    );
    assert_eq!(r.status, 502, "{}", String::from_utf8_lossy(&r.body));
    assert!(
        queries.load(Ordering::SeqCst) >= 1,
        "the configured resolver was asked"
    );
    drop(d0);

    let d = Daemon::builder()
        .config(&config(&p.join("ca.pem").display().to_string()))
        .start();
    let addr = d.http.unwrap();
    let r = raw_get(
        addr,
        "registry.ollama.ai",
        "/v2/library/tls/manifests/latest",
        &[],
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.body, manifest);
    let dg = digest(&layer);
    let r = raw_get(
        addr,
        "registry.ollama.ai",
        &format!("/v2/library/tls/blobs/{dg}"),
        &[],
    );
    let loc = &r.headers["location"];
    let r = raw_get(
        addr,
        &addr.to_string(),
        &loc[loc.find("/blobs/").unwrap()..],
        &[],
    );
    assert!(r.complete && r.body == layer);
    assert_eq!(up.cdn_bytes(), layer.len() as u64);
}
