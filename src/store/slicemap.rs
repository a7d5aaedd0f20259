//! The persisted slice map of a fill in progress: which slices of the sparse data file were
//! fully written and fsync'd. It sits next to the data file in `.lancached/partial/` and is
//! replaced atomically (write temp, fsync, rename) by the fill's persister after each
//! `fdatasync` of the data file (a batch of landed slices), so after a restart or
//! `kill -9` the map names only slices whose bytes are known to be on disk: a slice that was
//! being written when the process died is simply missing and fetched again.

use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SliceMap {
    pub digest: String,
    pub size: u64,
    pub slice_size: u64,
    /// Registry host and repository the blob was being fetched from (for automatic resume).
    pub registry: String,
    pub repository: String,
    /// Indices of landed slices.
    pub landed: Vec<u64>,
}

impl SliceMap {
    /// Reads a map; `None` when it is missing or unreadable (then nothing is trusted).
    pub fn load(path: &Path) -> Option<SliceMap> {
        let bytes = std::fs::read(path).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Writes the map durably: a crash leaves either the old map or the new one.
    pub fn store(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("map.tmp");
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&serde_json::to_vec(self).map_err(std::io::Error::other)?)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("x.map");
        assert_eq!(SliceMap::load(&p), None);
        let m = SliceMap {
            digest: "sha256:00".into(),
            size: 10,
            slice_size: 4,
            registry: "r".into(),
            repository: "library/x".into(),
            landed: vec![0, 2],
        };
        m.store(&p).unwrap();
        assert_eq!(SliceMap::load(&p), Some(m));
        std::fs::write(&p, b"{garbage").unwrap();
        assert_eq!(SliceMap::load(&p), None);
    }
}
