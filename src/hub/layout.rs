//! The hub cache: the Hugging Face half of the cache directory, laid out exactly as
//! `huggingface_hub`'s own cache so that `HF_HUB_CACHE=<dir> HF_HUB_OFFLINE=1` loads from it
//! and an existing hub cache is served as it is:
//!
//! ```text
//! models--org--name/blobs/<sha256 | git sha1>      the file (LFS blobs hardlinked from blobs/)
//! models--org--name/snapshots/<commit>/<path>      -> ../../blobs/<hash> (one ../ per folder)
//! models--org--name/refs/<branch or tag>           the commit it resolved to (mtime: when)
//! ```
//!
//! Links are the one place the cache follows a symlink: a snapshot entry is used only when it
//! is a relative link of exactly the form above (so it stays inside its repo folder) to a
//! regular file, opened without following anything further (docs/hostile.md).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::repo::{is_commit, RepoId};

#[derive(Debug, Clone)]
pub struct HubCache {
    root: PathBuf,
}

/// A file found in a snapshot: its blob, opened, and the hash it is named by.
pub struct Found {
    pub file: std::fs::File,
    pub size: u64,
    /// sha256 (64 hex, an LFS file) or git blob SHA-1 (40 hex).
    pub hash: String,
}

impl Found {
    pub fn is_lfs(&self) -> bool {
        self.hash.len() == 64
    }
}

fn is_hash(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64)
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

impl HubCache {
    pub fn new(root: impl Into<PathBuf>) -> HubCache {
        HubCache { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn repo_dir(&self, r: &RepoId) -> PathBuf {
        self.root.join(r.folder())
    }

    /// The commit `refs/<rev>` names and when it was last confirmed.
    pub fn read_ref(&self, r: &RepoId, rev: &str) -> Option<(String, SystemTime)> {
        let p = self.repo_dir(r).join("refs").join(rev);
        let f = open_nofollow(&p).ok()?;
        let when = f.metadata().ok()?.modified().ok()?;
        let text = std::io::read_to_string(f).ok()?;
        let commit = text.trim().to_string();
        is_commit(&commit).then_some((commit, when))
    }

    /// Records (or re-confirms, which refreshes its mtime) that `rev` is `commit`.
    pub fn write_ref(&self, r: &RepoId, rev: &str, commit: &str) -> std::io::Result<()> {
        let p = self.repo_dir(r).join("refs").join(rev);
        write_atomic(&p, commit.as_bytes())
    }

    /// The file at `path` in snapshot `commit`, if the snapshot has it as a link this cache
    /// trusts (see the module docs).
    pub fn find(&self, r: &RepoId, commit: &str, path: &str) -> Option<Found> {
        let repo = self.repo_dir(r);
        let link = repo.join("snapshots").join(commit).join(path);
        let target = std::fs::read_link(&link).ok()?;
        let target = target.to_str()?;
        let ups = "../".repeat(2 + path.matches('/').count());
        let hash = target.strip_prefix(&ups)?.strip_prefix("blobs/")?;
        if !is_hash(hash) {
            return None;
        }
        let file = open_nofollow(&repo.join("blobs").join(hash)).ok()?;
        let size = file.metadata().ok()?.len();
        Some(Found {
            file,
            size,
            hash: hash.to_string(),
        })
    }

    /// Whether the repo folder holds blob `hash`.
    pub fn has_blob(&self, r: &RepoId, hash: &str) -> bool {
        open_nofollow(&self.repo_dir(r).join("blobs").join(hash)).is_ok()
    }

    /// Stores a verified small file as `blobs/<hash>`.
    pub fn put_blob(&self, r: &RepoId, hash: &str, bytes: &[u8]) -> std::io::Result<()> {
        write_atomic(&self.repo_dir(r).join("blobs").join(hash), bytes)
    }

    /// Makes `blobs/<hash>` the same file as `src` (a published blob of the Ollama half):
    /// a hardlink, so it is stored once; a copy when they are on different filesystems.
    pub fn link_blob(&self, r: &RepoId, hash: &str, src: &Path) -> std::io::Result<()> {
        let dst = self.repo_dir(r).join("blobs").join(hash);
        if open_nofollow(&dst).is_ok() {
            return Ok(());
        }
        std::fs::create_dir_all(dst.parent().expect("has a parent"))?;
        match std::fs::hard_link(src, &dst) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            Err(_) => {
                let tmp = dst.with_extension(format!("tmp{}", std::process::id()));
                std::fs::copy(src, &tmp)?;
                std::fs::rename(&tmp, &dst)
            }
        }
    }

    /// Moves a verified file (an import's staged copy) in as `blobs/<hash>`.
    pub fn adopt_blob(&self, r: &RepoId, hash: &str, src: &Path) -> std::io::Result<()> {
        let dst = self.repo_dir(r).join("blobs").join(hash);
        std::fs::create_dir_all(dst.parent().expect("has a parent"))?;
        std::fs::rename(src, &dst)
    }

    /// Points `snapshots/<commit>/<path>` at `blobs/<hash>` with a relative link.
    pub fn link_snapshot(
        &self,
        r: &RepoId,
        commit: &str,
        path: &str,
        hash: &str,
    ) -> std::io::Result<()> {
        let link = self.repo_dir(r).join("snapshots").join(commit).join(path);
        std::fs::create_dir_all(link.parent().expect("has a parent"))?;
        let target = format!(
            "{}blobs/{hash}",
            "../".repeat(2 + path.matches('/').count())
        );
        if std::fs::read_link(&link).ok().as_deref() == Some(Path::new(&target)) {
            return Ok(());
        }
        let tmp = tmp_beside(&link);
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&target, &tmp)?;
        std::fs::rename(&tmp, &link)
    }
}

fn tmp_beside(p: &Path) -> PathBuf {
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    p.with_file_name(format!(
        ".{name}.lancached-{}-{:?}.tmp",
        std::process::id(),
        std::thread::current().id()
    ))
}

/// Writes a file whole or not at all (temporary file, then rename).
fn write_atomic(p: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(p.parent().expect("has a parent"))?;
    let tmp = tmp_beside(p);
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_data()?;
    drop(f);
    std::fs::rename(&tmp, p)
}

fn open_nofollow(p: &Path) -> std::io::Result<std::fs::File> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(p)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::repo::Kind;

    #[test]
    fn snapshot_links_are_relative_and_only_in_folder_links_are_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let hub = HubCache::new(tmp.path());
        let r = RepoId::new(Kind::Model, "o/n").unwrap();
        let commit = "c".repeat(40);
        let sha1 = "a".repeat(40);
        hub.put_blob(&r, &sha1, b"hi").unwrap();
        hub.link_snapshot(&r, &commit, "d/x.txt", &sha1).unwrap();
        let link = hub
            .repo_dir(&r)
            .join("snapshots")
            .join(&commit)
            .join("d/x.txt");
        assert_eq!(
            std::fs::read_link(&link).unwrap(),
            Path::new(&format!("../../../blobs/{sha1}"))
        );
        let f = hub.find(&r, &commit, "d/x.txt").unwrap();
        assert_eq!((f.size, f.is_lfs()), (2, false));
        // A link out of the repo folder, or to a link, is not followed.
        std::fs::write(tmp.path().join("secret"), b"s").unwrap();
        let out = hub.repo_dir(&r).join("snapshots").join(&commit).join("out");
        std::os::unix::fs::symlink("../../../../secret", &out).unwrap();
        assert!(hub.find(&r, &commit, "out").is_none());
        let b = hub.repo_dir(&r).join("blobs").join("b".repeat(40));
        std::os::unix::fs::symlink(tmp.path().join("secret"), &b).unwrap();
        hub.link_snapshot(&r, &commit, "y", &"b".repeat(40))
            .unwrap();
        assert!(hub.find(&r, &commit, "y").is_none());
        hub.write_ref(&r, "main", &commit).unwrap();
        assert_eq!(hub.read_ref(&r, "main").unwrap().0, commit);
        assert!(hub.read_ref(&r, "dev").is_none());
    }
}
