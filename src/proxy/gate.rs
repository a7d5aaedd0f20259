//! The registry's version gate, kept for cached manifests. registry.ollama.ai answers 412
//! "requires a newer version of Ollama" by the client's `User-Agent` (`ollama/<version> (...)`),
//! so a manifest cached for one client must not reach an older one that upstream would turn
//! away. The cache remembers, per cached manifest and per the exact bytes it holds, which client
//! versions upstream has answered 200 for; a client whose version is not among them is checked
//! with upstream first, even while the cached copy is fresh.
//!
//! Only the `ollama/<version>` token is the key (OS, arch and Go version don't change the
//! answer); clients without one (curl, skopeo, the cache's own prefetch) share one key. The
//! memory is in-process: after a restart each version is checked once more, which costs one
//! manifest request and never skips the gate.

use http::{header, HeaderMap};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::store::Digest;

/// The part of a client's `User-Agent` that the registry's gate looks at.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ClientVersion(pub Option<String>);

impl ClientVersion {
    /// `ollama/0.5.4` out of `ollama/0.5.4 (amd64 linux) Go/go1.22.5`; `None` for any other
    /// client (`ollama-transfer/…` is the blob downloader, not a manifest client).
    pub fn of(headers: &HeaderMap) -> ClientVersion {
        let ua = headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        ClientVersion(
            ua.split_whitespace()
                .find(|t| t.starts_with("ollama/") && t.len() > "ollama/".len())
                .map(|t| t.chars().take(64).collect()),
        )
    }
}

impl std::fmt::Display for ClientVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(v) => f.write_str(v),
            None => f.write_str("a non-Ollama client"),
        }
    }
}

#[derive(Default)]
pub struct VersionGate {
    passed: Mutex<HashMap<PathBuf, (Digest, BTreeSet<ClientVersion>)>>,
}

impl VersionGate {
    /// Whether upstream has answered `version` with exactly these manifest bytes.
    pub fn passed(&self, manifest: &Path, bytes: &Digest, version: &ClientVersion) -> bool {
        self.passed
            .lock()
            .unwrap()
            .get(manifest)
            .is_some_and(|(d, seen)| d == bytes && seen.contains(version))
    }

    /// The versions upstream has answered with exactly these bytes.
    pub fn versions(&self, manifest: &Path, bytes: &Digest) -> Vec<ClientVersion> {
        match self.passed.lock().unwrap().get(manifest) {
            Some((d, seen)) if d == bytes => seen.iter().cloned().collect(),
            _ => Vec::new(),
        }
    }

    /// Upstream answered `version` with these bytes: new bytes start a new set, since upstream
    /// may gate a new manifest differently.
    pub fn record(&self, manifest: &Path, bytes: &Digest, version: &ClientVersion) {
        let mut passed = self.passed.lock().unwrap();
        let entry = passed
            .entry(manifest.to_path_buf())
            .or_insert_with(|| (bytes.clone(), BTreeSet::new()));
        if entry.0 != *bytes {
            *entry = (bytes.clone(), BTreeSet::new());
        }
        entry.1.insert(version.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ua(s: &str) -> ClientVersion {
        let mut h = HeaderMap::new();
        h.insert(header::USER_AGENT, s.parse().unwrap());
        ClientVersion::of(&h)
    }

    #[test]
    fn keys_on_the_ollama_token_only() {
        assert_eq!(
            ua("ollama/0.5.4 (amd64 linux) Go/go1.22.5"),
            ua("ollama/0.5.4 (arm64 darwin) Go/go1.24.0")
        );
        assert_ne!(
            ua("ollama/0.5.4 (amd64 linux)"),
            ua("ollama/0.34.2 (amd64 linux)")
        );
        assert_eq!(ua("ollama-transfer/0.34.2").0, None);
        assert_eq!(ua("curl/8.0").0, None);
        assert_eq!(ClientVersion::of(&HeaderMap::new()).0, None);
    }

    #[test]
    fn new_bytes_forget_the_versions_seen() {
        let g = VersionGate::default();
        let p = Path::new("m");
        let (a, b) = (Digest::of(b"a"), Digest::of(b"b"));
        let v1 = ua("ollama/0.5.4");
        let v2 = ua("ollama/0.34.2");
        g.record(p, &a, &v1);
        assert!(g.passed(p, &a, &v1));
        assert!(!g.passed(p, &a, &v2), "another version is checked");
        assert!(!g.passed(p, &b, &v1), "other bytes are checked");
        g.record(p, &b, &v2);
        assert!(g.passed(p, &b, &v2));
        assert!(!g.passed(p, &b, &v1), "a new manifest is checked anew");
    }
}
