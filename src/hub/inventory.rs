//! What the hub cache holds, read from disk (the truth): each repo folder
//! (`models--org--name`, `datasets--org--name`), its refs and its snapshots, each snapshot's
//! files through the links [`HubCache::find`] trusts. A link that does not lead to a blob
//! (evicted, removed by hand, or not of the trusted form) is *dangling*: the snapshot is then
//! not complete, and a request for that file fetches it again.
//!
//! Only real directories are walked (never a symlinked folder), so a link planted in the hub
//! cache leads nowhere outside it (docs/hostile.md).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::UNIX_EPOCH;

use super::layout::HubCache;
use super::repo::{is_commit, RepoId};

/// One snapshot (a commit) of a repo in the hub cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub commit: String,
    /// The refs (branches, tags) that name this commit.
    pub refs: Vec<String>,
    /// Each file: its path in the repo, its hash (sha256 for LFS, git SHA-1 otherwise), size.
    pub files: Vec<(String, String, u64)>,
    /// Entries whose blob is missing or whose link this cache does not trust.
    pub dangling: Vec<String>,
    /// When the snapshot directory last changed (seconds since the epoch).
    pub modified: Option<u64>,
}

impl Snapshot {
    /// The distinct blobs' bytes.
    pub fn size(&self) -> u64 {
        let mut seen = BTreeSet::new();
        self.files
            .iter()
            .filter(|(_, h, _)| seen.insert(h))
            .map(|(_, _, s)| s)
            .sum()
    }

    pub fn complete(&self) -> bool {
        self.dangling.is_empty() && !self.files.is_empty()
    }

    pub fn hashes(&self) -> BTreeSet<&str> {
        self.files.iter().map(|(_, h, _)| h.as_str()).collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repo {
    pub repo: RepoId,
    pub snapshots: Vec<Snapshot>,
    /// Every ref: name → commit.
    pub refs: BTreeMap<String, String>,
}

fn real_dir(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir())
}

fn mtime(p: &Path) -> Option<u64> {
    let t = std::fs::symlink_metadata(p).ok()?.modified().ok()?;
    Some(t.duration_since(UNIX_EPOCH).ok()?.as_secs())
}

/// Every repo folder of the hub cache, sorted by kind and name.
pub fn list(cache: &HubCache) -> Vec<Repo> {
    let mut out = Vec::new();
    let mut names: Vec<String> = std::fs::read_dir(cache.root())
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    for n in names {
        if let Some(r) = RepoId::from_folder(&n) {
            out.push(repo(cache, &r));
        }
    }
    out
}

/// One repo's refs and snapshots.
pub fn repo(cache: &HubCache, r: &RepoId) -> Repo {
    let dir = cache.repo_dir(r);
    let mut refs = BTreeMap::new();
    walk_files(&dir.join("refs"), "", &mut |rel, _| {
        if let Some((c, _)) = cache.read_ref(r, rel) {
            refs.insert(rel.to_string(), c);
        }
    });
    let mut snapshots = Vec::new();
    let snaps = dir.join("snapshots");
    let mut commits: Vec<String> = std::fs::read_dir(&snaps)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|c| is_commit(c))
        .collect();
    commits.sort();
    for commit in commits {
        let sdir = snaps.join(&commit);
        let mut files = Vec::new();
        let mut dangling = Vec::new();
        walk_entries(&sdir, "", &mut |rel| match cache.find(r, &commit, rel) {
            Some(f) => files.push((rel.to_string(), f.hash, f.size)),
            None => dangling.push(rel.to_string()),
        });
        files.sort();
        dangling.sort();
        snapshots.push(Snapshot {
            refs: refs
                .iter()
                .filter(|(_, c)| **c == commit)
                .map(|(n, _)| n.clone())
                .collect(),
            modified: mtime(&sdir),
            commit,
            files,
            dangling,
        });
    }
    Repo {
        repo: r.clone(),
        snapshots,
        refs,
    }
}

/// Calls `f` with every regular file below `dir` (relative path, full path); real dirs only.
fn walk_files(dir: &Path, prefix: &str, f: &mut dyn FnMut(&str, &Path)) {
    if !real_dir(dir) {
        return;
    }
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(name) = e.file_name().into_string() else {
            continue;
        };
        let rel = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        match e.file_type() {
            Ok(t) if t.is_dir() => walk_files(&e.path(), &rel, f),
            Ok(t) if t.is_file() => f(&rel, &e.path()),
            _ => {}
        }
    }
}

/// Calls `f` with every non-directory entry below `dir` (links, files): a snapshot's files.
fn walk_entries(dir: &Path, prefix: &str, f: &mut dyn FnMut(&str)) {
    if !real_dir(dir) {
        return;
    }
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(name) = e.file_name().into_string() else {
            continue;
        };
        // Our own temporary links (`.x.lancached-…tmp`) are not files of the snapshot.
        if name.ends_with(".tmp") && name.contains(".lancached-") {
            continue;
        }
        let rel = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        match e.file_type() {
            Ok(t) if t.is_dir() => walk_entries(&e.path(), &rel, f),
            Ok(_) => f(&rel),
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::repo::Kind;

    #[test]
    fn snapshots_refs_and_dangling_links() {
        let tmp = tempfile::tempdir().unwrap();
        let hub = HubCache::new(tmp.path());
        let r = RepoId::new(Kind::Model, "o/n").unwrap();
        let (c1, c2) = ("1".repeat(40), "2".repeat(40));
        let (a, b) = ("a".repeat(40), "b".repeat(64));
        hub.put_blob(&r, &a, b"hi").unwrap();
        hub.put_blob(&r, &b, b"big").unwrap();
        hub.link_snapshot(&r, &c1, "x.txt", &a).unwrap();
        hub.link_snapshot(&r, &c1, "d/w.bin", &b).unwrap();
        hub.link_snapshot(&r, &c2, "x.txt", &a).unwrap();
        hub.link_snapshot(&r, &c2, "gone.bin", &"c".repeat(64))
            .unwrap();
        hub.write_ref(&r, "main", &c1).unwrap();
        hub.write_ref(&r, "refs/pr/1", &c2).unwrap();
        std::fs::create_dir_all(tmp.path().join("spaces--o--s")).unwrap();
        let all = list(&hub);
        assert_eq!(all.len(), 1);
        let s = &all[0].snapshots;
        assert_eq!(s[0].refs, ["main"]);
        assert_eq!(s[0].files.len(), 2);
        assert_eq!(s[0].size(), 5);
        assert!(s[0].complete());
        assert_eq!(s[1].refs, ["refs/pr/1"]);
        assert_eq!(s[1].dangling, ["gone.bin"]);
        assert!(!s[1].complete());
    }
}
