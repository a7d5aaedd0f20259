//! nginx on loopback as a stand-in data plane for tests that ran before the daemon served
//! `/blobs/` itself.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::ollama::free_port;

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
