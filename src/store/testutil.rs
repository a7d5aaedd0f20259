//! Unit-test helper: writes models into a cache directory the way Ollama lays them out, so the
//! store's tests (index, prune, eviction) build their fixtures one way.

use super::{Digest, Layout, ModelRef};

/// Writes a model whose layers are `blobs`, plus a config blob of its own (its name's bytes),
/// and returns its reference.
pub fn write_model(l: &Layout, name: &str, blobs: &[&[u8]]) -> ModelRef {
    let m = ModelRef::parse(name).unwrap();
    let mut layers = Vec::new();
    for b in blobs {
        let d = Digest::of(b);
        std::fs::write(l.blob_path(&d), b).unwrap();
        layers.push(format!(
            r#"{{"mediaType":"application/vnd.ollama.image.model","digest":"{d}","size":{}}}"#,
            b.len()
        ));
    }
    let cfg = Digest::of(name.as_bytes());
    std::fs::write(l.blob_path(&cfg), name.as_bytes()).unwrap();
    let json = format!(
        r#"{{"schemaVersion":2,"config":{{"digest":"{cfg}","size":{}}},"layers":[{}]}}"#,
        name.len(),
        layers.join(",")
    );
    let p = l.manifest_path(&m);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, json).unwrap();
    m
}
