//! `docker-registry` (CNCF distribution 2.8, Debian's package) as a real Registry v2 upstream:
//! an Ollama-style model (config + layers) is pushed with the v2 API (monolithic blob uploads,
//! manifest PUT), then pulled through lancached: the manifest (fetched with the client's
//! `Accept`, which distribution needs) and every blob (filled in ranged slices) come through
//! byte-identical, and a second pull is served from the cache.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::upstream::{blob_bytes, digest, raw_get};
use crate::util::{require_program, Daemon};

const MT: &str = "application/vnd.docker.distribution.manifest.v2+json";

struct Registry {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_registry() -> Registry {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = dir.path().join("config.yml");
    std::fs::write(
        &cfg,
        format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let t = Instant::now();
    while ureq::get(&format!("{url}/v2/")).call().is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "docker-registry did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Registry {
        child,
        url,
        _dir: dir,
    }
}

/// Monolithic upload: POST to start, PUT the bytes with `?digest=`.
fn push_blob(url: &str, repo: &str, bytes: &[u8]) -> String {
    let d = digest(bytes);
    let resp = ureq::post(&format!("{url}/v2/{repo}/blobs/uploads/"))
        .send_empty()
        .unwrap();
    let loc = resp.headers()["location"].to_str().unwrap().to_string();
    let loc = if loc.starts_with("http") {
        loc
    } else {
        format!("{url}{loc}")
    };
    let sep = if loc.contains('?') { '&' } else { '?' };
    ureq::put(&format!("{loc}{sep}digest={d}"))
        .header("Content-Type", "application/octet-stream")
        .send(bytes)
        .unwrap();
    d
}

#[test]
fn docker_registry_upstream_byte_identical() {
    if !require_program("docker-registry") {
        return;
    }
    let reg = start_registry();
    let repo = "library/regmodel";
    let config =
        br#"{"model_format":"gguf","model_family":"llama","architecture":"amd64","os":"linux"}"#;
    let layer = blob_bytes(5 << 20, 11);
    let small = b"{{ .Prompt }}".to_vec();
    let cd = push_blob(&reg.url, repo, config);
    let ld = push_blob(&reg.url, repo, &layer);
    let sd = push_blob(&reg.url, repo, &small);
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{MT}","config":{{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"{cd}","size":{}}},"layers":[{{"mediaType":"application/vnd.ollama.image.model","digest":"{ld}","size":{}}},{{"mediaType":"application/vnd.ollama.image.template","digest":"{sd}","size":{}}}]}}"#,
        config.len(),
        layer.len(),
        small.len()
    );
    ureq::put(&format!("{}/v2/{repo}/manifests/latest", reg.url))
        .header("Content-Type", MT)
        .send(manifest.as_bytes())
        .unwrap();

    let d = Daemon::builder()
        .config(&format!(
            "[upstream]\nresolvers = []\n[upstream.registries]\n\"registry.ollama.ai\" = \"{}\"\n[cache]\nslice_size = \"1MiB\"\n",
            reg.url
        ))
        .start();
    let addr = d.http.unwrap();
    let r = raw_get(
        addr,
        "registry.ollama.ai",
        &format!("/v2/{repo}/manifests/latest"),
        &[("Accept", MT)],
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.body, manifest.as_bytes(), "manifest byte-identical");
    assert_eq!(
        r.headers["docker-content-digest"],
        digest(manifest.as_bytes())
    );
    for (dg, bytes) in [(&cd, &config[..]), (&ld, &layer[..]), (&sd, &small[..])] {
        let r = raw_get(
            addr,
            "registry.ollama.ai",
            &format!("/v2/{repo}/blobs/{dg}"),
            &[],
        );
        assert_eq!(r.status, 200, "no redirect");
        assert!(r.complete && r.body == bytes, "blob {dg} byte-identical");
        let path = &r.headers["location"];
        assert_eq!(*path, format!("/v2/{repo}/blobs/{dg}"), "the direct URL");
        let r = raw_get(addr, &addr.to_string(), path, &[]);
        assert_eq!(r.status, 200);
        assert!(r.complete && r.body == bytes, "blob {dg} byte-identical");
        let file = d.cache_dir.join("blobs").join(dg.replace(':', "-"));
        let t = Instant::now();
        while !file.exists() {
            assert!(t.elapsed() < Duration::from_secs(10), "{dg} not published");
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(std::fs::read(&file).unwrap() == bytes);
    }
    // Upstream gone: the manifest (within its TTL) and blobs still come from the cache.
    drop(reg);
    let r = raw_get(
        addr,
        "registry.ollama.ai",
        &format!("/v2/{repo}/manifests/latest"),
        &[("Accept", MT)],
    );
    assert_eq!(r.body, manifest.as_bytes());
    let r = raw_get(
        addr,
        &addr.to_string(),
        &format!("/blobs/{ld}"),
        &[("Range", "bytes=100-199")],
    );
    assert_eq!((r.status, &r.body[..]), (206, &layer[100..200]));
}
