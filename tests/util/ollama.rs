//! The real Ollama client (0.5.4, installed by `../shared/tools/get-ollama.sh`), run as
//! `ollama serve` on a models directory of the test's choosing, optionally inside a test
//! network namespace, and driven with its own CLI (`ollama pull`, `ollama list`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::netns::NetNs;

/// Where get-ollama.sh installs the wrapper script.
pub fn binary() -> Option<PathBuf> {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/root".into());
    let p = home.join(".cache/lancache-test/ollama/ollama");
    p.exists().then_some(p)
}

pub struct Ollama {
    child: Child,
    pub host: String,
    pub models: PathBuf,
    ns: Option<String>,
    log: PathBuf,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Ollama {
    /// `ollama serve` over `models` on a free loopback port in this network namespace.
    pub fn serve_local(models: &Path) -> Ollama {
        Ollama::serve(models, free_port(), None, &[])
    }

    /// Starts `ollama serve` on `models`, listening on 127.0.0.1:`port` (inside `ns` if given),
    /// with extra environment (e.g. `SSL_CERT_FILE`). Waits until it answers.
    pub fn serve(models: &Path, port: u16, ns: Option<&NetNs>, env: &[(&str, &str)]) -> Ollama {
        let bin = binary().expect("the real Ollama client is installed by scripts/test-deps.sh");
        let mut cmd = match ns {
            Some(ns) => ns.command(&bin),
            None => Command::new(&bin),
        };
        let host = format!("127.0.0.1:{port}");
        let log = models.with_extension("ollama.log");
        cmd.arg("serve")
            .env("OLLAMA_HOST", &host)
            .env("OLLAMA_MODELS", models)
            .env("HOME", models.parent().unwrap_or(Path::new("/tmp")))
            // A proxy from the environment would take the client's requests past the cache.
            .env_remove("HTTP_PROXY")
            .env_remove("HTTPS_PROXY")
            .env_remove("http_proxy")
            .env_remove("https_proxy")
            .envs(env.iter().copied())
            // The binary's libraries carry an empty RPATH entry: never run it from its own dir.
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        let child = cmd.spawn().expect("start ollama serve");
        let o = Ollama {
            child,
            host,
            models: models.to_path_buf(),
            ns: ns.map(|n| n.name.clone()),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if o.cli(&["list"]).status.success() {
                return o;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("ollama serve did not come up:\n{}", o.log());
    }

    /// Runs the `ollama` CLI against this server.
    pub fn cli(&self, args: &[&str]) -> Output {
        let bin = binary().unwrap();
        let mut cmd = match &self.ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        cmd.args(args)
            .env("OLLAMA_HOST", &self.host)
            .current_dir("/")
            .output()
            .expect("run ollama")
    }

    /// `ollama pull ARGS`; the client's output on failure.
    pub fn pull(&self, args: &[&str]) -> Result<(), String> {
        let mut a = vec!["pull"];
        a.extend(args);
        let out = self.cli(&a);
        if out.status.success() {
            return Ok(());
        }
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }

    /// `ollama pull ARGS`, which must succeed; a failure shows the client's output, its
    /// server's log and the daemon's.
    pub fn pull_ok(&self, args: &[&str], daemon: &super::Daemon) {
        if let Err(e) = self.pull(args) {
            panic!(
                "ollama pull {args:?} failed: {e}\nserve log:\n{}\ndaemon:\n{}",
                self.log(),
                daemon.stderr()
            );
        }
    }

    /// `ollama list` as (name, id) pairs.
    pub fn list(&self) -> Vec<(String, String)> {
        let out = self.cli(&["list"]);
        assert!(
            out.status.success(),
            "ollama list: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .skip(1)
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                Some((f.next()?.to_string(), f.next()?.to_string()))
            })
            .collect()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Ollama {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
