//! Cached Hub metadata at a commit: repo info, tree pages and paths-info answers. What is
//! asked at a commit never changes, so an answer is kept for good (keyed by kind, repo,
//! commit, endpoint, path, query and request body) and served again when upstream is down.
//! Kept in the daemon's state directory, not in the hub cache (whose layout is the client's).

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::path::PathBuf;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Answer {
    pub content_type: String,
    /// Upstream's `Link` (the next tree page), as upstream wrote it.
    pub link: Option<String>,
    pub body: String,
}

pub struct MetaStore {
    dir: PathBuf,
}

impl MetaStore {
    pub fn new(dir: PathBuf) -> MetaStore {
        MetaStore { dir }
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(hex::encode(Sha256::digest(key.as_bytes())))
    }

    pub fn get(&self, key: &str) -> Option<Answer> {
        let bytes = std::fs::read(self.path(key)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    pub fn put(&self, key: &str, a: &Answer) {
        let p = self.path(key);
        let tmp = p.with_extension(format!("tmp{}", std::process::id()));
        let ok = std::fs::create_dir_all(&self.dir)
            .and_then(|()| std::fs::write(&tmp, serde_json::to_vec(a).expect("serialisable")))
            .and_then(|()| std::fs::rename(&tmp, &p));
        if let Err(e) = ok {
            tracing::warn!("hub: cannot keep metadata: {e}");
        }
    }
}
