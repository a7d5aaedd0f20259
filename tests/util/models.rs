//! Builds Ollama-layout model directories for tests: random layer blobs, a config blob that
//! the real `ollama list` accepts, and a manifest at `manifests/<host>/<ns>/<model>/<tag>`.

use lancached::store::{Digest, ModelRef};
use std::path::{Path, PathBuf};

/// A model written into a directory.
#[derive(Debug, Clone)]
pub struct TestModel {
    pub name: ModelRef,
    pub manifest: Vec<u8>,
    /// Config first, then layers: (digest, size).
    pub blobs: Vec<(Digest, u64)>,
}

impl TestModel {
    /// The ID `ollama list` shows: the first 12 hex of the manifest's sha256.
    pub fn id(&self) -> String {
        Digest::of(&self.manifest).hex()[..12].to_string()
    }

    pub fn manifest_path(&self, root: &Path) -> PathBuf {
        root.join("manifests")
            .join(&self.name.host)
            .join(&self.name.namespace)
            .join(&self.name.model)
            .join(&self.name.tag)
    }

    pub fn blob_path(root: &Path, d: &Digest) -> PathBuf {
        root.join("blobs").join(d.file_name())
    }
}

/// Deterministic pseudo-random bytes (xorshift), distinct per seed.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn write_blob(root: &Path, data: &[u8]) -> (Digest, u64) {
    let d = Digest::of(data);
    std::fs::create_dir_all(root.join("blobs")).unwrap();
    std::fs::write(TestModel::blob_path(root, &d), data).unwrap();
    (d, data.len() as u64)
}

/// Writes `name` with layers of the given sizes into `root` (an Ollama models directory).
pub fn write_model(root: &Path, name: &str, layer_sizes: &[usize]) -> TestModel {
    let name = ModelRef::parse(name).unwrap();
    let config = format!(
        r#"{{"model_format":"gguf","model_family":"llama","model_families":["llama"],"model_type":"1B","file_type":"Q4_0","architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":[]}},"name":"{name}"}}"#
    );
    let mut blobs = vec![write_blob(root, config.as_bytes())];
    let seed = name.to_string().bytes().map(u64::from).sum::<u64>();
    for (i, &size) in layer_sizes.iter().enumerate() {
        blobs.push(write_blob(root, &noise(seed * 31 + i as u64, size)));
    }
    let layer = |(d, s): &(Digest, u64), t: &str| {
        format!(r#"{{"mediaType":"{t}","digest":"{d}","size":{s}}}"#)
    };
    let layers: Vec<String> = blobs[1..]
        .iter()
        .map(|b| layer(b, "application/vnd.ollama.image.model"))
        .collect();
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{},"layers":[{}]}}"#,
        layer(&blobs[0], "application/vnd.docker.container.image.v1+json"),
        layers.join(",")
    )
    .into_bytes();
    let m = TestModel {
        name,
        manifest,
        blobs,
    };
    let p = m.manifest_path(root);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, &m.manifest).unwrap();
    m
}

/// A model whose single layer is a sparse file of `size` bytes (for slow, long downloads). Its
/// digest is made up: the catalog checks sizes, not hashes.
pub fn write_sparse_model(root: &Path, name: &str, size: u64) -> TestModel {
    let name = ModelRef::parse(name).unwrap();
    let config = write_blob(
        root,
        br#"{"model_format":"gguf","rootfs":{"type":"layers"}}"#,
    );
    let fake = Digest::from_hex(&format!("{:064x}", size)).unwrap();
    let f = std::fs::File::create(TestModel::blob_path(root, &fake)).unwrap();
    f.set_len(size).unwrap();
    let manifest = format!(
        r#"{{"schemaVersion":2,"config":{{"digest":"{}","size":{}}},"layers":[{{"mediaType":"application/vnd.ollama.image.model","digest":"{fake}","size":{size}}}]}}"#,
        config.0, config.1
    )
    .into_bytes();
    let m = TestModel {
        name,
        manifest,
        blobs: vec![config, (fake, size)],
    };
    let p = m.manifest_path(root);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, &m.manifest).unwrap();
    m
}

/// A fresh daemon directory whose cache already holds the models `build` writes.
pub fn prepared_dir(build: impl FnOnce(&Path)) -> tempfile::TempDir {
    let tmp = tempfile::Builder::new()
        .prefix("lancached-test")
        .tempdir()
        .unwrap();
    let cache = tmp.path().join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    build(&cache);
    tmp
}

/// One raw HTTP/1.1 exchange (no client-side path normalisation): (status, headers, body).
pub fn raw_get(
    addr: std::net::SocketAddr,
    path: &str,
    extra_headers: &str,
) -> (u16, String, Vec<u8>) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let host = if extra_headers.to_ascii_lowercase().contains("host:") {
        String::new()
    } else {
        format!("Host: {addr}\r\n")
    };
    write!(
        s,
        "GET {path} HTTP/1.1\r\n{host}{extra_headers}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete response head");
    let head = String::from_utf8_lossy(&buf[..split]).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap();
    (status, head, buf[split + 4..].to_vec())
}

/// Imports each hostile bundle `(what, tar bytes, needle)` into `d` with `lancachectl import`,
/// and checks it is refused as a whole: exit status 1, the error naming `needle` and saying
/// nothing was imported, `published()` still equal to `before`, no `import-` staging left in
/// the daemon's area. The tar files are written under `work`.
pub fn refused_imports(
    d: &super::Daemon,
    work: &Path,
    cases: Vec<(&str, Vec<u8>, String)>,
    published: impl Fn() -> Vec<PathBuf>,
    before: &[PathBuf],
) {
    for (what, bytes, needle) in cases {
        let f = work.join(format!("{what}.tar"));
        std::fs::write(&f, &bytes).unwrap();
        let out = d.ctl(&["import", f.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{what}: {err}");
        assert!(err.contains(&needle), "{what}: {needle:?} not in {err}");
        assert!(err.contains("nothing imported"), "{what}: {err}");
        assert_eq!(published(), before, "{what}: something was published");
        let staging: Vec<_> = std::fs::read_dir(d.path("cache/.lancached"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("import-"))
            .collect();
        assert!(staging.is_empty(), "{what}: staging left behind");
    }
}
