//! The real Ollama client as a test peer (`ollama serve` on a port of its own over a models
//! directory, then `ollama list`), and an nginx front that serves `/blobs/sha256:<hex>` straight
//! from the cache directory for tests that need the data plane while it is not in this daemon.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The wrapper `get-ollama.sh` installs (it prints the path).
pub fn ollama_bin() -> PathBuf {
    let default = PathBuf::from(std::env::var("HOME").unwrap_or_default())
        .join(".cache/lancache-test/ollama/ollama");
    if default.exists() {
        return default;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/tools/get-ollama.sh");
    let out = Command::new("bash").arg(&script).output().unwrap();
    assert!(out.status.success(), "get-ollama.sh failed");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// `ollama serve` over `models`, killed on drop.
pub struct Ollama {
    child: Child,
    pub host: String,
    pub home: tempfile::TempDir,
}

impl Ollama {
    pub fn serve(models: &Path) -> Ollama {
        let home = tempfile::tempdir().unwrap();
        let host = format!("127.0.0.1:{}", free_port());
        let child = Command::new(ollama_bin())
            .arg("serve")
            // Its libraries have an empty RPATH entry: never run it from its own directory.
            .current_dir(home.path())
            .env("HOME", home.path())
            .env("OLLAMA_MODELS", models)
            .env("OLLAMA_HOST", &host)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(home.path().join("serve.log")).unwrap())
            .spawn()
            .unwrap();
        let o = Ollama { child, host, home };
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(&o.host).is_ok() && o.try_list().is_some() {
                return o;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("ollama serve did not come up: {}", o.log());
    }

    fn try_list(&self) -> Option<String> {
        let out = Command::new(ollama_bin())
            .arg("list")
            .current_dir(self.home.path())
            .env("HOME", self.home.path())
            .env("OLLAMA_HOST", &self.host)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).to_string())
    }

    /// `ollama list` as (name, id) pairs.
    pub fn list(&self) -> Vec<(String, String)> {
        let text = self.try_list().expect("ollama list failed");
        text.lines()
            .skip(1)
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                Some((w.next()?.to_string(), w.next()?.to_string()))
            })
            .collect()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.home.path().join("serve.log")).unwrap_or_default()
    }
}

impl Drop for Ollama {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// nginx on loopback: `/blobs/sha256:<hex>` from `cache/blobs/sha256-<hex>` (with Range), every
/// other path proxied to the daemon with the client's `Host`.
pub struct NginxFront {
    child: Child,
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl NginxFront {
    pub fn start(cache: &Path, daemon: SocketAddr) -> NginxFront {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let d = dir.path().display();
        let conf = format!(
            r#"daemon off;
master_process off;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{}}
http {{
  access_log off;
  default_type application/octet-stream;
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi;
  uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  server {{
    listen 127.0.0.1:{port};
    location ~ "^/blobs/sha256:([0-9a-f]{{64}})$" {{ alias {cache}/blobs/sha256-$1; }}
    location / {{ proxy_pass http://{daemon}; proxy_set_header Host $http_host; proxy_buffering off; }}
  }}
}}
"#,
            cache = cache.display()
        );
        std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
        let child = Command::new("nginx")
            .arg("-c")
            .arg(dir.path().join("nginx.conf"))
            .arg("-p")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "nginx did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        NginxFront {
            child,
            addr,
            _dir: dir,
        }
    }
}

impl Drop for NginxFront {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
