//! How much the cache holds and how much room the filesystem has left: the two numbers that
//! `[cache] max_size` and `min_free` are compared with. Usage counts published blobs by length
//! and fills in progress by the blocks they really occupy (their files are sparse until landed);
//! manifests are a few hundred bytes each and not counted. Tenants ([`super::tenant`]: the hub
//! cache) add the bytes they hold outside `blobs/` ([`measure_with`]).

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::layout::Layout;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Bytes of published blobs plus fills in progress.
    pub bytes: u64,
    /// Published blobs.
    pub blobs: u64,
    /// Bytes held by fills in progress (included in `bytes`).
    pub partial_bytes: u64,
    /// Bytes available to the daemon on the cache's filesystem (`f_bavail * f_frsize`).
    pub free: u64,
}

/// Walks `blobs/` and `.lancached/partial/` (one `stat` per file: ~10 ms for 10,000 blobs) and
/// asks the filesystem for its free space.
pub fn measure(layout: &Layout) -> Usage {
    let mut u = Usage::default();
    for e in std::fs::read_dir(layout.blobs_dir())
        .into_iter()
        .flatten()
        .flatten()
    {
        if let Ok(m) = e.metadata() {
            if m.is_file() {
                u.bytes += m.len();
                u.blobs += 1;
            }
        }
    }
    for e in std::fs::read_dir(layout.partial_dir())
        .into_iter()
        .flatten()
        .flatten()
    {
        if let Ok(m) = e.metadata() {
            if m.is_file() {
                u.partial_bytes += m.blocks() * 512;
            }
        }
    }
    u.bytes += u.partial_bytes;
    u.free = free_space(layout.root()).unwrap_or(u64::MAX);
    u
}

/// [`measure`], plus what each tenant holds outside `blobs/` (counted in `bytes`).
pub fn measure_with(
    layout: &Layout,
    tenants: &[std::sync::Arc<dyn super::tenant::Tenant>],
) -> Usage {
    let mut u = measure(layout);
    for t in tenants {
        u.bytes += t.own_bytes();
    }
    u
}

/// Bytes an unprivileged writer may still use on the filesystem holding `path`.
pub fn free_space(path: &Path) -> Option<u64> {
    let s = nix::sys::statvfs::statvfs(path).ok()?;
    Some((s.blocks_available() as u64).saturating_mul(s.fragment_size() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_blobs_and_partials() {
        let tmp = tempfile::tempdir().unwrap();
        let l = Layout::new(tmp.path());
        l.create().unwrap();
        std::fs::write(l.blobs_dir().join("sha256-x"), vec![0u8; 1000]).unwrap();
        std::fs::write(l.partial_dir().join("sha256-y"), vec![1u8; 8192]).unwrap();
        let u = measure(&l);
        assert_eq!(u.blobs, 1);
        assert!(u.partial_bytes >= 8192);
        assert_eq!(u.bytes, 1000 + u.partial_bytes);
        assert!(u.free > 0);
    }
}
