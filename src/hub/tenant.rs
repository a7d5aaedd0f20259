//! The hub cache as a [`Tenant`] of the store: each snapshot (a repo at a commit) is a unit
//! that prune and eviction plan over beside the Ollama models, in one LRU order.
//!
//! - A unit's key is `hf:org/name@<commit>` (`hf:datasets/...` for datasets); its usage and
//!   whether the daemon fetched it live in the access index under that key.
//! - Its blobs are the LFS files' sha256 (the same file as `blobs/sha256-…`, hardlinked), so a
//!   blob shared with an Ollama model (a GGUF pulled both ways) or another repo stays while
//!   anyone needs it; its own bytes are the files only it holds (small files, LFS blobs that
//!   are not links of `blobs/`, such as an existing hub cache's).
//! - Busy while a fill or prefetch of that repo and commit runs: never chosen, never removed.
//! - Removing a unit removes its snapshot, the refs naming it and the repo's blobs no other
//!   snapshot links (every hardlink the hub holds), the whole folder with its last snapshot.
//!   The store then removes `blobs/sha256-…` once nothing references it: no link is left
//!   holding an evicted blob's bytes.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Weak};

use super::inventory::{self, Repo, Snapshot};
use super::repo::{HubRef, RepoId};
use crate::state::State;
use crate::store::tenant::{Tenant, Unit};
use crate::store::Digest;

/// The index key (and prune's name) of a snapshot.
pub fn unit_key(repo: &RepoId, commit: &str) -> String {
    format!("{}@{commit}", repo.hub_name())
}

/// How reports show a snapshot: by a ref naming it when there is one.
pub fn unit_name(repo: &RepoId, s: &Snapshot) -> String {
    match s.refs.first() {
        Some(r) => format!("{}@{r} ({})", repo.hub_name(), &s.commit[..12]),
        None => format!("{}@{}", repo.hub_name(), s.commit),
    }
}

pub struct HubTenant {
    /// Weak: the tenant lives in `State` itself.
    state: Weak<State>,
}

impl HubTenant {
    pub fn new(state: &Arc<State>) -> HubTenant {
        HubTenant {
            state: Arc::downgrade(state),
        }
    }
}

/// The bytes of `blobs/<hash>` of `repo` when it is that blob's only link.
fn own(state: &State, r: &RepoId, hash: &str) -> u64 {
    std::fs::symlink_metadata(state.hub.cache.repo_dir(r).join("blobs").join(hash))
        .ok()
        .filter(|m| m.is_file() && m.nlink() == 1)
        .map_or(0, |m| m.len())
}

/// Whether a fill or prefetch for `repo` at `commit` is running now.
pub fn busy(state: &State, r: &RepoId, commit: &str) -> bool {
    let origin = format!("{}@{commit}/", r.key());
    state
        .proxy
        .fills
        .snapshot()
        .iter()
        .any(|f| f.origin.registry == super::ORIGIN && f.origin.repository.starts_with(&origin))
        || state.hub.prefetch.running(r, commit)
}

fn units_of(state: &State, repo: &Repo) -> Vec<Unit> {
    let mut out = Vec::new();
    for s in &repo.snapshots {
        let others: BTreeSet<&str> = repo
            .snapshots
            .iter()
            .filter(|o| o.commit != s.commit)
            .flat_map(|o| o.hashes())
            .collect();
        let mine = s.hashes();
        out.push(Unit {
            key: unit_key(&repo.repo, &s.commit),
            name: unit_name(&repo.repo, s),
            blobs: mine
                .iter()
                .filter(|h| h.len() == 64)
                .filter_map(|h| Digest::parse(&format!("sha256:{h}")).ok())
                .collect(),
            own_bytes: mine
                .iter()
                .filter(|h| !others.contains(*h))
                .map(|h| own(state, &repo.repo, h))
                .sum(),
            modified: s.modified,
            busy: busy(state, &repo.repo, &s.commit),
        });
    }
    out
}

/// Removes snapshot `commit` of `r` (see the module docs); returns the own bytes freed.
pub fn remove_snapshot(state: &State, r: &RepoId, commit: &str) -> std::io::Result<u64> {
    let cache = &state.hub.cache;
    let repo = inventory::repo(cache, r);
    let Some(s) = repo.snapshots.iter().find(|s| s.commit == commit) else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{} has no snapshot {commit}", r.hub_name()),
        ));
    };
    let dir = cache.repo_dir(r);
    let mut freed = 0;
    if repo.snapshots.len() == 1 {
        // The last snapshot: the whole folder goes (blobs, refs, `.no_exist`).
        for e in std::fs::read_dir(dir.join("blobs"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if let Ok(m) = e.metadata() {
                if m.is_file() && m.nlink() == 1 {
                    freed += m.len();
                }
            }
        }
        std::fs::remove_dir_all(&dir)?;
        return Ok(freed);
    }
    let others: BTreeSet<&str> = repo
        .snapshots
        .iter()
        .filter(|o| o.commit != commit)
        .flat_map(|o| o.hashes())
        .collect();
    std::fs::remove_dir_all(dir.join("snapshots").join(commit))?;
    for name in &s.refs {
        let _ = std::fs::remove_file(dir.join("refs").join(name));
    }
    for h in s.hashes() {
        if others.contains(h) {
            continue;
        }
        freed += own(state, r, h);
        match std::fs::remove_file(dir.join("blobs").join(h)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(freed)
}

impl Tenant for HubTenant {
    fn units(&self) -> Vec<Unit> {
        let Some(state) = self.state.upgrade() else {
            return vec![];
        };
        inventory::list(&state.hub.cache)
            .iter()
            .flat_map(|r| units_of(&state, r))
            .collect()
    }

    fn remove(&self, key: &str) -> std::io::Result<u64> {
        let state = self
            .state
            .upgrade()
            .ok_or_else(|| std::io::Error::other("the daemon is stopping"))?;
        let h = HubRef::parse(key).map_err(std::io::Error::other)?;
        let commit = h
            .rev
            .ok_or_else(|| std::io::Error::other(format!("{key}: no commit")))?;
        if busy(&state, &h.repo, &commit) {
            return Err(std::io::Error::other(format!("{key} is being filled")));
        }
        let freed = remove_snapshot(&state, &h.repo, &commit)?;
        tracing::info!(unit = %key, freed, "hub: removed snapshot");
        Ok(freed)
    }

    fn own_bytes(&self) -> u64 {
        let Some(state) = self.state.upgrade() else {
            return 0;
        };
        let root = state.hub.cache.root();
        let mut n = 0;
        for e in std::fs::read_dir(root).into_iter().flatten().flatten() {
            let Some(name) = e.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if RepoId::from_folder(&name).is_none() || !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            for b in std::fs::read_dir(e.path().join("blobs"))
                .into_iter()
                .flatten()
                .flatten()
            {
                if let Ok(m) = b.metadata() {
                    if m.is_file() && m.nlink() == 1 {
                        n += m.len();
                    }
                }
            }
        }
        n
    }
}
