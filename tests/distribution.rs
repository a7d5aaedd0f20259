//! The distribution endpoints over HTTP, against a cache directory written in Ollama's layout:
//! - zero-config: every model already in the directory is listed and served at once;
//! - `/api/models` is `[]` when empty; each model has canonical and short names, size, the
//!   manifest sha256 as ID, complete/incomplete, layers and URLs; names with dots, namespaces and
//!   hf.co-style hosts all work;
//! - `/api/info` has version, uptime, usage/limits, counts and the public URL, and no absolute path;
//! - models added or removed by another program appear/disappear without a restart;
//! - `/manifests/<name>` returns the bytes unchanged (Docker-Content-Digest = their sha256);
//! - `/models/<name>` is a tar of exactly blobs (first) + manifest (last), Content-Length exact,
//!   extractable by GNU tar; an incomplete model is a 409 that says why;
//! - path tricks (`..`, `%2e%2e`, absolute paths, overlong names, too many levels) are 400;
//!   symlinks planted in the cache never expose a file outside it;
//! - `/install.sh` and `/install.ps1` carry the public URL (config, advertise, validated Host;
//!   a hostile Host is never reflected); `/` is static HTML with a strict CSP;
//! - `/api/sessions` reports the socket's address, `X-Forwarded-For` only from trusted proxies;
//! - `/health` is 503 when the cache directory cannot be written.

use crate::util::models::{prepared_dir, raw_get, write_model, write_sparse_model, TestModel};
use crate::util::Daemon;
use serde_json::Value;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

fn get_json(d: &Daemon, path: &str) -> Value {
    let (status, _, body) = raw_get(d.http.unwrap(), path, "");
    assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).unwrap()
}

fn three_models(cache: &std::path::Path) -> Vec<TestModel> {
    vec![
        write_model(cache, "qwen2.5:1.5b", &[70_000, 1_000]),
        write_model(cache, "someuser/my-model:v1.0", &[5_000]),
        write_model(
            cache,
            "hf.co/bartowski/llama-3.2-1b-instruct-gguf:Q4_K_M",
            &[9_000],
        ),
    ]
}

#[test]
fn empty_cache_is_an_empty_list() {
    let d = Daemon::start();
    let (status, _, body) = raw_get(d.http.unwrap(), "/api/models", "");
    assert_eq!(status, 200);
    assert_eq!(String::from_utf8_lossy(&body).trim(), "[]");
    let (status, _, body) = raw_get(d.http.unwrap(), "/api/models?format=text", "");
    assert_eq!((status, body.len()), (200, 0));
    assert_eq!(get_json(&d, "/api/sessions"), serde_json::json!([]));
    let info = get_json(&d, "/api/info");
    assert_eq!(info["cache"]["models"], 0);
    assert_eq!(info["version"], env!("CARGO_PKG_VERSION"));
    assert!(info["uptime_secs"].is_u64());
    assert!(info["cache"]["max_size"].as_u64().unwrap() > 0);
    let text = info.to_string();
    assert!(
        !text.contains(&*d.cache_dir.to_string_lossy()) && !text.contains("\"/"),
        "no filesystem paths in /api/info: {text}"
    );
}

#[test]
fn every_model_listed_with_its_id() {
    let tmp = prepared_dir(|c| {
        three_models(c);
    });
    let models = three_models(&tmp.path().join("cache"));
    let d = Daemon::builder().dir(tmp).start();
    let list = get_json(&d, "/api/models");
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 3, "{list:?}");
    for m in &models {
        let j = list
            .iter()
            .find(|j| j["name"] == m.name.to_string())
            .unwrap_or_else(|| panic!("{} missing from {list:?}", m.name));
        assert_eq!(j["short_name"], m.name.short_name());
        assert_eq!(j["id"], m.id());
        assert_eq!(
            j["digest"],
            lancached::store::Digest::of(&m.manifest).to_string()
        );
        assert_eq!(j["size"], m.blobs.iter().map(|b| b.1).sum::<u64>());
        assert_eq!(j["complete"], true);
        assert_eq!(j["layers"].as_array().unwrap().len(), m.blobs.len() - 1);
        assert_eq!(j["config"]["digest"], m.blobs[0].0.to_string());
        assert!(j["modified"].as_str().unwrap().ends_with('Z'));
        let tar_url = j["urls"]["tar"].as_str().unwrap();
        assert!(tar_url.starts_with("http://127.0.0.1:"), "{tar_url}");
        assert!(j["commands"]["install_sh"]
            .as_str()
            .unwrap()
            .ends_with(&format!("sh -s -- {}", m.name.short_name())));
    }
    let short: Vec<&str> = list
        .iter()
        .map(|j| j["short_name"].as_str().unwrap())
        .collect();
    assert!(short.contains(&"qwen2.5:1.5b"));
    assert!(short.contains(&"someuser/my-model:v1.0"));
    assert!(short.contains(&"hf.co/bartowski/llama-3.2-1b-instruct-gguf:Q4_K_M"));
    let info = get_json(&d, "/api/info");
    assert_eq!(info["cache"]["models"], 3);
    assert_eq!(info["cache"]["complete_models"], 3);
    assert_eq!(info["cache"]["blobs"], 7);
    let (_, _, text) = raw_get(d.http.unwrap(), "/api/models?format=text", "");
    let text = String::from_utf8(text).unwrap();
    assert!(
        text.lines().any(|l| l.starts_with(&format!(
            "qwen2.5:1.5b\tregistry.ollama.ai/library/qwen2.5:1.5b\t{}\t",
            models[0].id()
        )) && l.ends_with("\tcomplete")),
        "{text}"
    );
}

#[test]
fn manifests_are_served_byte_for_byte() {
    let tmp = prepared_dir(|c| {
        three_models(c);
    });
    let models = three_models(&tmp.path().join("cache"));
    let d = Daemon::builder().dir(tmp).start();
    for m in &models {
        for name in [m.name.to_string(), m.name.short_name()] {
            let (status, head, body) = raw_get(d.http.unwrap(), &format!("/manifests/{name}"), "");
            assert_eq!(status, 200, "{name}: {}", String::from_utf8_lossy(&body));
            assert_eq!(body, m.manifest, "{name}");
            let digest = lancached::store::Digest::of(&m.manifest);
            assert!(
                head.to_ascii_lowercase()
                    .contains(&format!("docker-content-digest: {digest}")),
                "{head}"
            );
        }
    }
    // Default tag.
    let (status, _, _) = raw_get(d.http.unwrap(), "/manifests/qwen2.5", "");
    assert_eq!(status, 404, "qwen2.5:latest is not in the cache");
    let (status, _, body) = raw_get(d.http.unwrap(), "/manifests/nosuch:1b", "");
    assert_eq!(status, 404);
    assert!(String::from_utf8_lossy(&body).contains("nosuch:1b"));
    // HEAD keeps the length.
    let mut s = std::net::TcpStream::connect(d.http.unwrap()).unwrap();
    write!(
        s,
        "HEAD /manifests/qwen2.5:1.5b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut head = String::new();
    s.read_to_string(&mut head).unwrap();
    assert!(
        head.contains(&format!("content-length: {}", models[0].manifest.len())),
        "{head}"
    );
}

#[test]
fn tar_has_blobs_first_then_manifest() {
    let tmp = prepared_dir(|c| {
        three_models(c);
    });
    let models = three_models(&tmp.path().join("cache"));
    let d = Daemon::builder().dir(tmp).start();
    for m in &models {
        let (status, head, body) = raw_get(
            d.http.unwrap(),
            &format!("/models/{}", m.name.short_name()),
            "",
        );
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        assert!(head.contains("content-type: application/x-tar"));
        let mut archive = tar::Archive::new(&body[..]);
        let mut names = Vec::new();
        for e in archive.entries().unwrap() {
            let mut e = e.unwrap();
            let path = e.path().unwrap().to_string_lossy().to_string();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            if let Some(hex) = path.strip_prefix("blobs/sha256-") {
                assert_eq!(lancached::store::Digest::of(&data).hex(), hex);
            } else {
                assert_eq!(data, m.manifest);
            }
            names.push(path);
        }
        let mut want: Vec<String> = m
            .blobs
            .iter()
            .map(|(d, _)| format!("blobs/{}", d.file_name()))
            .collect();
        want.push(format!(
            "manifests/{}/{}/{}/{}",
            m.name.host, m.name.namespace, m.name.model, m.name.tag
        ));
        assert_eq!(names, want);
    }
    // HEAD: the same length, no body, no download session.
    let mut s = std::net::TcpStream::connect(d.http.unwrap()).unwrap();
    write!(
        s,
        "HEAD /models/qwen2.5:1.5b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut head = String::new();
    s.read_to_string(&mut head).unwrap();
    let (_, _, full) = raw_get(d.http.unwrap(), "/models/qwen2.5:1.5b", "");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.contains(&format!("content-length: {}\r\n", full.len())) && head.ends_with("\r\n\r\n"),
        "{head}"
    );
    assert_eq!(get_json(&d, "/api/sessions"), serde_json::json!([]));
    // GNU tar extracts it into exactly an Ollama models directory.
    let out = tempfile::tempdir().unwrap();
    let url = d.http_url("/models/hf.co/bartowski/llama-3.2-1b-instruct-gguf:Q4_K_M");
    let st = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "curl -fsS '{url}' | tar -x -C '{}'",
            out.path().display()
        ))
        .status()
        .unwrap();
    assert!(st.success());
    let m = &models[2];
    assert_eq!(
        std::fs::read(m.manifest_path(out.path())).unwrap(),
        m.manifest
    );
    for (dg, size) in &m.blobs {
        assert_eq!(
            std::fs::metadata(TestModel::blob_path(out.path(), dg))
                .unwrap()
                .len(),
            *size
        );
    }
}

#[test]
fn incomplete_model_is_409() {
    let tmp = prepared_dir(|c| {
        let m = write_model(c, "llama3:8b", &[4_000, 3_000]);
        std::fs::remove_file(TestModel::blob_path(c, &m.blobs[2].0)).unwrap();
        let m = write_model(c, "phi3:3.8b", &[4_000]);
        // Truncated: the right name, the wrong size.
        std::fs::write(TestModel::blob_path(c, &m.blobs[1].0), b"short").unwrap();
    });
    let d = Daemon::builder().dir(tmp).start();
    let list = get_json(&d, "/api/models");
    for j in list.as_array().unwrap() {
        assert_eq!(j["complete"], false, "{j}");
        assert_eq!(j["missing"].as_array().unwrap().len(), 1);
    }
    for name in ["llama3:8b", "phi3:3.8b"] {
        let (status, _, body) = raw_get(d.http.unwrap(), &format!("/models/{name}"), "");
        let msg = String::from_utf8_lossy(&body);
        assert_eq!(status, 409, "{msg}");
        assert!(msg.contains(name) && msg.contains("not complete"), "{msg}");
    }
    // The manifest itself is still there to read.
    assert_eq!(raw_get(d.http.unwrap(), "/manifests/llama3:8b", "").0, 200);
}

#[test]
fn catalog_follows_the_directory() {
    let d = Daemon::start();
    let names = |d: &Daemon| -> Vec<String> {
        get_json(d, "/api/models")
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["short_name"].as_str().unwrap().to_string())
            .collect()
    };
    assert!(names(&d).is_empty());
    let wait_for = |want: &[&str]| {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let got = names(&d);
            if got == want {
                return;
            }
            assert!(Instant::now() < deadline, "wanted {want:?}, have {got:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    // A local `ollama pull` lands a model.
    let m = write_model(&d.cache_dir, "gemma2:2b", &[2_000]);
    wait_for(&["gemma2:2b"]);
    let m2 = write_model(&d.cache_dir, "gemma2:9b", &[2_500]);
    wait_for(&["gemma2:2b", "gemma2:9b"]);
    // `ollama rm`: manifest gone, then its blobs.
    std::fs::remove_file(m2.manifest_path(&d.cache_dir)).unwrap();
    wait_for(&["gemma2:2b"]);
    std::fs::remove_file(TestModel::blob_path(&d.cache_dir, &m.blobs[1].0)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while get_json(&d, "/api/models")[0]["complete"] != false {
        assert!(Instant::now() < deadline, "blob removal not noticed");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn path_tricks_are_refused() {
    let tmp = prepared_dir(|c| {
        write_model(c, "qwen2.5:1.5b", &[1_000]);
        // A symlinked manifest pointing outside the cache, and a symlinked namespace directory.
        let outside = c.parent().unwrap().join("outside");
        std::fs::create_dir_all(outside.join("evil")).unwrap();
        write_model(&outside, "evil:latest", &[10]);
        let lib = c.join("manifests/registry.ollama.ai/library");
        std::fs::create_dir_all(lib.join("passwd")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", lib.join("passwd/latest")).unwrap();
        std::os::unix::fs::symlink(
            outside.join("manifests/registry.ollama.ai/library"),
            c.join("manifests/registry.ollama.ai/linked"),
        )
        .unwrap();
        // A blob that is a symlink to a file of the right size outside the cache.
        let m = write_model(c, "leaky:1b", &[11]);
        let blob = TestModel::blob_path(c, &m.blobs[1].0);
        std::fs::remove_file(&blob).unwrap();
        std::fs::write(outside.join("secret"), b"TOP-SECRET!").unwrap();
        std::os::unix::fs::symlink(outside.join("secret"), &blob).unwrap();
    });
    let d = Daemon::builder().dir(tmp).start();
    let addr = d.http.unwrap();
    let long = "a".repeat(600);
    for path in [
        "/manifests/../../../../etc/passwd",
        "/models/../../../../etc/passwd",
        "/manifests/%2e%2e/%2e%2e/etc/passwd",
        "/models/..%2f..%2fetc%2fpasswd",
        "/manifests//etc/passwd",
        "/models//etc/passwd:latest",
        "/manifests/library/..:latest",
        "/manifests/a/b/c/d:latest",
        "/models/qwen2.5:..",
        "/models/qwen2.5:1.5b\\..",
        &format!("/models/{long}:latest"),
        "/models/",
        "/manifests/qwen2.5:1.5b%00",
    ] {
        let (status, _, body) = raw_get(addr, path, "");
        assert_eq!(status, 400, "{path}: {}", String::from_utf8_lossy(&body));
    }
    for path in [
        "/manifests/passwd:latest",
        "/models/passwd:latest",
        "/manifests/linked/evil:latest",
        "/models/linked/evil:latest",
    ] {
        let (status, _, body) = raw_get(addr, path, "");
        assert_eq!(status, 404, "{path}: {}", String::from_utf8_lossy(&body));
        assert!(!String::from_utf8_lossy(&body).contains("root:"));
    }
    let (status, _, body) = raw_get(addr, "/models/leaky:1b", "");
    assert_eq!(status, 409);
    assert!(!String::from_utf8_lossy(&body).contains("TOP-SECRET"));
    let list = get_json(&d, "/api/models").to_string();
    assert!(!list.contains("passwd") && !list.contains("evil"), "{list}");
}

#[test]
fn scripts_carry_the_public_url() {
    let d = Daemon::start();
    let addr = d.http.unwrap();
    // Derived from a well-formed Host header.
    let (status, head, body) = raw_get(addr, "/install.sh", "Host: cache.lan:8080\r\n");
    assert_eq!(status, 200);
    assert!(head.contains("content-type: text/x-shellscript"));
    let sh = String::from_utf8(body).unwrap();
    assert!(
        sh.contains("server='http://cache.lan:8080'"),
        "{}",
        &sh[..600]
    );
    assert!(!sh.contains("@LANCACHE_URL@"));
    let check = std::process::Command::new("sh")
        .arg("-n")
        .stdin(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(sh.as_bytes())?;
            c.wait()
        })
        .unwrap();
    assert!(check.success(), "served install.sh is not valid sh");
    let (_, _, ps) = raw_get(addr, "/install.ps1", "Host: cache.lan\r\n");
    let ps = String::from_utf8(ps).unwrap();
    assert!(ps.contains("$DefaultServer = 'http://cache.lan'"));
    assert!(ps.contains("$ProgressPreference = 'SilentlyContinue'"));
    // A hostile Host is never reflected: the connection's own address is used instead.
    for evil in ["evil'$(id)", "a.b/<script>", "x\"y"] {
        let (status, _, body) = raw_get(addr, "/install.sh", &format!("Host: {evil}\r\n"));
        assert!(status == 200 || status == 400);
        let body = String::from_utf8_lossy(&body);
        assert!(!body.contains(evil), "{evil} reflected");
        if status == 200 {
            assert!(body.contains(&format!("server='http://{addr}'")));
        }
    }
    // The config wins over everything; then the advertised address.
    d.write_config("[http]\npublic_url = \"http://models.example.lan:8080\"\n");
    d.ctl_json(&["reload"]);
    let (_, _, sh) = raw_get(addr, "/install.sh", "Host: cache.lan\r\n");
    assert!(String::from_utf8_lossy(&sh).contains("server='http://models.example.lan:8080'"));
    let info = get_json(&d, "/api/info");
    assert_eq!(info["public_url"], "http://models.example.lan:8080");
    drop(d);
    let d = Daemon::builder()
        .config("[dns]\nadvertise = [\"192.0.2.10\"]\n")
        .start();
    let (_, _, sh) = raw_get(d.http.unwrap(), "/install.sh", "Host: cache.lan\r\n");
    assert!(String::from_utf8_lossy(&sh).contains("server='http://192.0.2.10'"));
}

#[test]
fn web_ui_is_static_and_locked_down() {
    let d = Daemon::start();
    let (status, head, body) = raw_get(d.http.unwrap(), "/", "Host: <script>alert(1)</script>\r\n");
    assert_eq!(status, 200);
    let page = String::from_utf8(body).unwrap();
    assert!(head.contains("content-type: text/html"));
    assert!(head.contains("content-security-policy: default-src 'none'"));
    assert!(!page.contains("alert(1)"));
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "no external assets"
    );
}

/// Starts a tar download and reads only its first bytes, so the session stays open.
fn slow_download(d: &Daemon, name: &str, headers: &str) -> std::net::TcpStream {
    let mut s = std::net::TcpStream::connect(d.http.unwrap()).unwrap();
    s.set_read_buffer_size_hint();
    write!(s, "GET /models/{name} HTTP/1.1\r\nHost: x\r\n{headers}\r\n").unwrap();
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    s
}

trait Hint {
    fn set_read_buffer_size_hint(&self);
}
impl Hint for std::net::TcpStream {
    /// Small receive buffer: the server blocks on us sooner, so the session stays open.
    fn set_read_buffer_size_hint(&self) {
        use std::os::fd::AsRawFd;
        let v: libc::c_int = 64 * 1024;
        unsafe {
            libc::setsockopt(
                self.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                &v as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
}

fn wait_sessions(d: &Daemon, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = get_json(d, "/api/sessions");
        let s = s.as_array().unwrap().clone();
        if s.len() == n {
            return s;
        }
        assert!(Instant::now() < deadline, "wanted {n} sessions, have {s:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sessions_report_the_socket_address() {
    let tmp = prepared_dir(|c| {
        write_sparse_model(c, "big:1g", 1 << 30);
    });
    let d = Daemon::builder().dir(tmp).start();
    let s = slow_download(&d, "big:1g", "X-Forwarded-For: 6.6.6.6\r\n");
    let local = s.local_addr().unwrap();
    let sessions = wait_sessions(&d, 1);
    let j = &sessions[0];
    assert_eq!(j["client"], local.to_string(), "{j}");
    assert_eq!(j["model"], "big:1g");
    assert!(j["bytes_total"].as_u64().unwrap() > 1 << 30);
    assert!(j["bytes_done"].as_u64().unwrap() > 0);
    assert_eq!(get_json(&d, "/api/info")["sessions"], 1);
    drop(s);
    wait_sessions(&d, 0);
    drop(d);

    // Behind a trusted reverse proxy, its X-Forwarded-For is believed (right-most untrusted hop).
    let tmp = prepared_dir(|c| {
        write_sparse_model(c, "big:1g", 1 << 30);
    });
    let d = Daemon::builder()
        .dir(tmp)
        .config("[http]\ntrusted_proxies = [\"127.0.0.0/8\"]\n")
        .start();
    let s = slow_download(&d, "big:1g", "X-Forwarded-For: 1.2.3.4, 6.6.6.6\r\n");
    let sessions = wait_sessions(&d, 1);
    assert_eq!(sessions[0]["client"], "6.6.6.6:0");
    drop(s);
}

#[test]
fn health_fails_when_the_cache_is_not_writable() {
    let d = Daemon::start();
    let (status, _, body) = raw_get(d.http.unwrap(), "/health", "");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    // Root ignores permission bits, so make the daemon's own area unwritable by replacing it
    // with a plain file (writes into it then fail with ENOTDIR).
    let state = d.cache_dir.join(".lancached");
    std::fs::remove_dir_all(&state).unwrap();
    std::fs::write(&state, b"").unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, _, body) = raw_get(d.http.unwrap(), "/health", "");
        if status == 503 {
            let v: Value = serde_json::from_slice(&body).unwrap();
            assert!(v["cache"].as_str().unwrap().contains("not writable"), "{v}");
            break;
        }
        assert!(Instant::now() < deadline, "health stayed {status}");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::fs::remove_file(&state).unwrap();
    std::fs::create_dir(&state).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while raw_get(d.http.unwrap(), "/health", "").0 != 200 {
        assert!(Instant::now() < deadline, "health did not recover");
        std::thread::sleep(Duration::from_millis(100));
    }
}
