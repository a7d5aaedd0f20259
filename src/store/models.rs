//! The models in the cache as `lancachectl models` shows them: name, size, whether every blob
//! is present with its declared size, when it was last used and whether the daemon fetched it.
//! Read from the directory (the truth) and the access index (usage); the distribution
//! endpoints' catalog can be built on the same listing. The listing is the store's own
//! [`CachedModel`]; the control layer maps it to the protocol's `ModelInfo`.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::index::Entry;
use super::layout::Layout;
use super::manifest::Manifest;
use super::names::{Digest, ModelRef};

/// One model in the cache directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedModel {
    pub model: ModelRef,
    /// The config and every layer, as the manifest declares them (0 when it does not parse).
    pub size: u64,
    /// sha256 of the manifest bytes: Ollama's model ID.
    pub digest: Digest,
    /// Every blob is present with its declared size.
    pub complete: bool,
    /// The last access the index recorded, else the manifest's mtime.
    pub last_used: Option<SystemTime>,
    /// Fetched by the daemon (false: found in the directory, e.g. a user's own Ollama model).
    pub fetched: bool,
}

/// Every model in `layout`, by name; `entries` is [`super::Index::manifests`].
pub fn list(layout: &Layout, entries: &HashMap<String, Entry>) -> Vec<CachedModel> {
    let mut out = Vec::new();
    for (model, path) in layout.list_manifests() {
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        let entry = entries.get(&model.to_string());
        // Truncated to whole seconds, as the index keeps times: both sources of `last_used`
        // then compare and show alike.
        let mtime = std::fs::metadata(&path)
            .ok()
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| UNIX_EPOCH + Duration::from_secs(d.as_secs()));
        let (size, complete) = match Manifest::parse(&bytes) {
            Ok(m) => (
                m.total_size(),
                m.blobs().all(|l| {
                    std::fs::metadata(layout.blob_path(&l.digest))
                        .is_ok_and(|meta| meta.is_file() && meta.len() == l.size)
                }),
            ),
            Err(_) => (0, false),
        };
        out.push(CachedModel {
            size,
            digest: Digest::of(&bytes),
            complete,
            last_used: entry
                .map(|e| e.last_access)
                .filter(|&t| t > 0)
                .map(|t| UNIX_EPOCH + Duration::from_secs(t))
                .or(mtime),
            fetched: entry.is_some_and(|e| e.fetched),
            model,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn complete_and_partial() {
        let tmp = tempfile::tempdir().unwrap();
        let l = Layout::new(tmp.path());
        l.create().unwrap();
        let blob = b"weights";
        let d = Digest::of(blob);
        let cfg = Digest::of(b"{}");
        std::fs::write(l.blob_path(&cfg), b"{}").unwrap();
        let json = format!(
            r#"{{"config":{{"digest":"{cfg}","size":2}},"layers":[{{"digest":"{d}","size":7}}]}}"#
        );
        let m = ModelRef::parse("x:1b").unwrap();
        std::fs::create_dir_all(l.manifest_path(&m).parent().unwrap()).unwrap();
        std::fs::write(l.manifest_path(&m), &json).unwrap();
        let listed = list(&l, &HashMap::new());
        assert_eq!(listed.len(), 1);
        assert!(!listed[0].complete && listed[0].size == 9 && !listed[0].fetched);
        assert_eq!(listed[0].model, m);
        assert_eq!(listed[0].digest, Digest::of(json.as_bytes()));
        std::fs::write(l.blob_path(&d), blob).unwrap();
        assert!(list(&l, &HashMap::new())[0].complete);
    }
}
