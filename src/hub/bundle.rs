//! Hub repos in bundles (`lancachectl export hf:org/name[@rev]`, `GET /models/hf:…`,
//! `lancachectl import`). A repo goes into the tar under `hub/` exactly as `huggingface_hub`
//! keeps it in its cache, so `tar -x -C ~/.cache/huggingface` gives a hub cache that
//! `HF_HUB_OFFLINE=1` loads without us:
//!
//! ```text
//! hub/models--org--name/blobs/<sha256 | git sha1>          the files, each once
//! hub/models--org--name/snapshots/<commit>/<path>          symlink -> ../../blobs/<hash>
//! hub/models--org--name/refs/<branch or tag>               the commit (last, after the links)
//! ```
//!
//! Import ([`HubImport`], a [`ForeignMembers`] of the store's import) takes the same members,
//! from a bundle or from a hub cache directory the CLI sends as one. Every blob is verified by
//! its name (sha256 for LFS files, which then go into `blobs/` and are hardlinked; git blob
//! SHA-1 for small files); a snapshot entry must be a relative link of exactly the trusted
//! form (into the same repo's `blobs/`, one `../` per folder); anything else is refused naming
//! the member, except `huggingface_hub`'s housekeeping (`.locks/`, `.no_exist/`,
//! `*.incomplete`, `version.txt`), which is skipped. Nothing is published unless every
//! snapshot is whole.

use sha1::Digest as _;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};

use super::inventory;
use super::layout::HubCache;
use super::repo::{is_commit, valid_path, valid_revision, HubRef, RepoId};
use super::tenant::unit_key;
use crate::store::import::{self, Adopt, ForeignMembers, ImportError, Member, Report};
use crate::store::{Digest, Index, Layout};

/// The members' top folder: extracted in `~/.cache/huggingface`, it is the default hub cache.
pub const TOP: &str = "hub";

/// One member of the hub part of a bundle, in order.
pub enum Entry {
    File {
        path: String,
        file: std::fs::File,
        len: u64,
    },
    Link {
        path: String,
        target: String,
    },
    Data {
        path: String,
        bytes: Vec<u8>,
    },
}

fn is_hash(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64)
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

fn link_target(path: &str, hash: &str) -> String {
    format!(
        "{}blobs/{hash}",
        "../".repeat(2 + path.matches('/').count())
    )
}

/// The entries for these repo revisions (each resolved to a complete snapshot), with the
/// names exported, or why not (worded for the operator).
pub fn export(cache: &HubCache, refs: &[HubRef]) -> Result<(Vec<String>, Vec<Entry>), String> {
    // Per repo folder: the snapshots asked for, in the order first named.
    let mut wanted: Vec<(RepoId, Vec<String>)> = Vec::new();
    let mut names = Vec::new();
    for r in refs {
        let rev = r.rev_or_main();
        let repo = inventory::repo(cache, &r.repo);
        let commit = if is_commit(rev) {
            rev.to_string()
        } else {
            repo.refs.get(rev).cloned().ok_or_else(|| {
                format!(
                    "{}@{rev} is not in this cache (see `lancachectl models`)",
                    r.repo.hub_name()
                )
            })?
        };
        let snap = repo
            .snapshots
            .iter()
            .find(|s| s.commit == commit)
            .ok_or_else(|| {
                format!(
                    "{}@{rev} (commit {commit}) is not in this cache (see `lancachectl models`)",
                    r.repo.hub_name()
                )
            })?;
        if !snap.complete() {
            return Err(format!(
                "{}@{rev} is not complete in this cache ({} file(s) missing); download it through \
                 the cache (or `lancachectl prefetch {}@{rev}`) first",
                r.repo.hub_name(),
                snap.dangling.len().max(1),
                r.repo.hub_name()
            ));
        }
        names.push(format!("{}@{rev}", r.repo.hub_name()));
        match wanted.iter_mut().find(|(id, _)| *id == r.repo) {
            Some((_, cs)) if cs.contains(&commit) => {}
            Some((_, cs)) => cs.push(commit),
            None => wanted.push((r.repo.clone(), vec![commit])),
        }
    }
    let mut blobs = Vec::new();
    let mut links = Vec::new();
    let mut ref_files = Vec::new();
    for (id, commits) in &wanted {
        let repo = inventory::repo(cache, id);
        let base = format!("{TOP}/{}", id.folder());
        let mut seen = BTreeSet::new();
        for commit in commits {
            let snap = repo
                .snapshots
                .iter()
                .find(|s| &s.commit == commit)
                .expect("checked above");
            for (path, hash, size) in &snap.files {
                let found = cache.find(id, commit, path).ok_or_else(|| {
                    format!(
                        "{} {path} left the cache while the bundle was built; export again",
                        id.hub_name()
                    )
                })?;
                if found.size != *size || found.hash != *hash {
                    return Err(format!(
                        "{} {path} changed while the bundle was built; export again",
                        id.hub_name()
                    ));
                }
                if seen.insert(hash.clone()) {
                    blobs.push(Entry::File {
                        path: format!("{base}/blobs/{hash}"),
                        file: found.file,
                        len: *size,
                    });
                }
                links.push(Entry::Link {
                    path: format!("{base}/snapshots/{commit}/{path}"),
                    target: link_target(path, hash),
                });
            }
            for (name, c) in &repo.refs {
                if c == commit {
                    ref_files.push(Entry::Data {
                        path: format!("{base}/refs/{name}"),
                        bytes: c.as_bytes().to_vec(),
                    });
                }
            }
        }
    }
    blobs.extend(links);
    blobs.extend(ref_files);
    Ok((names, blobs))
}

struct BlobIn {
    size: u64,
    /// `None`: already in the hub cache or in `blobs/`, nothing to copy.
    staged: Option<PathBuf>,
}

#[derive(Default)]
struct RepoIn {
    blobs: BTreeMap<String, BlobIn>,
    /// (commit, path) → (hash, member).
    links: BTreeMap<(String, String), (String, String)>,
    /// ref name → (commit, member).
    refs: BTreeMap<String, (String, String)>,
}

/// The hub half of an import (see the module docs).
pub struct HubImport {
    cache: HubCache,
    layout: Layout,
    repos: BTreeMap<String, (RepoId, RepoIn)>,
    /// Called for each repo published: the operator vouched for it (see
    /// [`super::auth::Access::vouch_offline`]).
    vouch: Box<dyn Fn(&RepoId) + Send>,
}

impl HubImport {
    pub fn new(cache: HubCache, layout: Layout, vouch: Box<dyn Fn(&RepoId) + Send>) -> HubImport {
        HubImport {
            cache,
            layout,
            repos: BTreeMap::new(),
            vouch,
        }
    }
}

fn refused<T>(path: &str, why: impl std::fmt::Display) -> Result<T, ImportError> {
    Err(ImportError(format!("member {path:?} refused: {why}")))
}

/// Copies a small file into staging while computing its git blob SHA-1 (`blob <len>\0` and
/// the bytes), and checks it against the name.
fn stage_small(
    staging: &Path,
    path: &str,
    hash: &str,
    size: u64,
    data: &mut dyn Read,
) -> Result<PathBuf, ImportError> {
    let dest = staging.join(format!("hub-{}-{hash}", std::process::id()));
    let dest = if dest.exists() {
        staging.join(format!("hub-{}-{hash}-{}", std::process::id(), nanos()))
    } else {
        dest
    };
    let mut out = std::fs::File::create(&dest)
        .map_err(|e| ImportError(format!("cannot stage member {path:?}: {e}")))?;
    let mut h = sha1::Sha1::new();
    h.update(format!("blob {size}\0").as_bytes());
    let member = format!("member {path:?}");
    let got = import::copy_hashing(data, &mut out, &member, size, &mut |b| h.update(b))?;
    let sum: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    if got != size || sum != hash {
        return Err(ImportError(format!(
            "member {path:?}: corrupt: its {got} bytes have the git blob SHA-1 {sum}, not the one \
             in its name"
        )));
    }
    out.sync_all()
        .map_err(|e| ImportError(format!("cannot stage member {path:?}: fsync: {e}")))?;
    Ok(dest)
}

fn nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// `huggingface_hub`'s own bookkeeping, which a copied hub cache carries and a bundle needs
/// not: skipped, never published.
fn housekeeping(parts: &[&str]) -> bool {
    match parts {
        [".locks", ..] | ["version.txt"] | ["CACHEDIR.TAG"] => true,
        [_, ".no_exist", ..] => true,
        [_, "blobs", name] => name.ends_with(".incomplete") || name.ends_with(".lock"),
        _ => false,
    }
}

impl ForeignMembers for HubImport {
    fn claims(&self, path: &str) -> bool {
        path == TOP || path.starts_with("hub/")
    }

    fn stage(&mut self, staging: &Path, path: &str, member: Member<'_>) -> Result<(), ImportError> {
        let parts: Vec<&str> = path.split('/').skip(1).collect();
        if housekeeping(&parts) {
            return Ok(());
        }
        let Some((folder, rest)) = parts.split_first() else {
            return Ok(()); // `hub/` itself
        };
        let Some(id) = RepoId::from_folder(folder) else {
            return refused(
                path,
                format!(
                    "{folder:?} is not a hub cache repo folder (models--org--name or \
                     datasets--org--name)"
                ),
            );
        };
        let (_, repo) = self
            .repos
            .entry(folder.to_string())
            .or_insert_with(|| (id.clone(), RepoIn::default()));
        match (rest, member) {
            ([] | ["blobs" | "snapshots" | "refs"], Member::Dir) => Ok(()),
            (["snapshots", commit, ..], _) if !is_commit(commit) => {
                refused(path, format!("{commit:?} is not a commit (40 hex digits)"))
            }
            (["snapshots", _, ..], Member::Dir) | (["refs", ..], Member::Dir) => Ok(()),
            (["blobs", hash], Member::File { size, data }) => {
                if !is_hash(hash) {
                    return refused(
                        path,
                        "not a blob name (a sha256 or git SHA-1 in lowercase hex)",
                    );
                }
                if repo.blobs.contains_key(*hash) {
                    return Ok(());
                }
                if self.cache.has_blob(&id, hash) {
                    repo.blobs
                        .insert(hash.to_string(), BlobIn { size, staged: None });
                    return Ok(());
                }
                let staged = if hash.len() == 64 {
                    let d = Digest::from_hex(hash).map_err(|e| ImportError(e.to_string()))?;
                    if import::already_published(&self.layout, &d).is_some() {
                        None
                    } else {
                        Some(
                            import::stage_blob(
                                staging,
                                &d,
                                &format!("member {path:?}"),
                                size,
                                data,
                            )?
                            .0,
                        )
                    }
                } else {
                    Some(stage_small(staging, path, hash, size, data)?)
                };
                repo.blobs.insert(hash.to_string(), BlobIn { size, staged });
                Ok(())
            }
            (["snapshots", commit, file @ ..], Member::Symlink(target)) if !file.is_empty() => {
                let rel = file.join("/");
                if !valid_path(&rel) {
                    return refused(path, "not a file path inside a repo");
                }
                let ups = "../".repeat(2 + file.len() - 1);
                match target
                    .strip_prefix(&ups)
                    .and_then(|t| t.strip_prefix("blobs/"))
                {
                    Some(hash) if is_hash(hash) => {
                        repo.links.insert(
                            (commit.to_string(), rel),
                            (hash.to_string(), path.to_string()),
                        );
                        Ok(())
                    }
                    _ => refused(
                        path,
                        format!(
                            "a link to {target:?}; snapshot links must lead to {ups}blobs/<hash> \
                             in the same repo folder"
                        ),
                    ),
                }
            }
            (["snapshots", _, _, ..], Member::File { .. }) => refused(
                path,
                "a regular file in snapshots/ (huggingface_hub keeps links to ../../blobs/ \
                 there; copy the cache with its symlinks, e.g. `cp -a` or `tar`)",
            ),
            (["refs", name @ ..], Member::File { size, data }) if !name.is_empty() => {
                let rev = name.join("/");
                if !valid_revision(&rev) {
                    return refused(path, "not a revision name");
                }
                if size > 256 {
                    return refused(path, format!("{size} bytes is too big for a ref"));
                }
                let mut text = String::new();
                data.read_to_string(&mut text)
                    .map_err(|e| ImportError(format!("member {path:?}: unreadable: {e}")))?;
                let commit = text.trim();
                if !is_commit(commit) {
                    return refused(path, "a ref holds one commit (40 hex digits)");
                }
                repo.refs
                    .insert(rev, (commit.to_string(), path.to_string()));
                Ok(())
            }
            (_, Member::Symlink(t)) => refused(path, format!("a symlink (to {t:?}) out of place")),
            _ => refused(
                path,
                "not part of a hub cache repo folder (blobs/<hash>, snapshots/<commit>/<path> \
                 links, refs/<name>)",
            ),
        }
    }

    fn is_empty(&self) -> bool {
        self.repos.values().all(|(_, r)| r.links.is_empty())
    }

    fn check(&self, in_blobs: &dyn Fn(&Digest) -> Option<u64>) -> Result<(), ImportError> {
        for (id, repo) in self.repos.values() {
            for ((_, _), (hash, member)) in &repo.links {
                let here = repo.blobs.contains_key(hash)
                    || self.cache.has_blob(id, hash)
                    || (hash.len() == 64
                        && Digest::from_hex(hash)
                            .ok()
                            .and_then(|d| in_blobs(&d))
                            .is_some());
                if !here {
                    return Err(ImportError(format!(
                        "member {member:?} links blobs/{hash}, which is neither in the import nor \
                         in the cache"
                    )));
                }
            }
            for (commit, member) in repo.refs.values() {
                let snapshot_here = repo.links.keys().any(|(c, _)| c == commit)
                    || self
                        .cache
                        .repo_dir(id)
                        .join("snapshots")
                        .join(commit)
                        .is_dir();
                if !snapshot_here {
                    return Err(ImportError(format!(
                        "member {member:?} names commit {commit}, which has no snapshot in the \
                         import or the cache"
                    )));
                }
            }
        }
        Ok(())
    }

    fn publish(
        &mut self,
        adopt: &mut Adopt<'_>,
        index: &Index,
        local: bool,
        report: &mut Report,
    ) -> Result<(), ImportError> {
        let io = |what: &str, id: &RepoId, e: std::io::Error| {
            ImportError(format!("publishing {what} of {}: {e}", id.hub_name()))
        };
        for (id, repo) in self.repos.values() {
            let referenced: BTreeSet<&String> = repo.links.values().map(|(h, _)| h).collect();
            for hash in referenced {
                if self.cache.has_blob(id, hash) {
                    report.blobs_skipped += 1;
                    continue;
                }
                let b = repo.blobs.get(hash);
                if hash.len() == 64 {
                    let d = Digest::from_hex(hash).map_err(|e| ImportError(e.to_string()))?;
                    let staged = b.and_then(|b| b.staged.as_deref());
                    let src = adopt(&d, staged)?;
                    self.cache
                        .link_blob(id, hash, &src)
                        .map_err(|e| io("a blob", id, e))?;
                    match b {
                        Some(b) if b.staged.is_some() => report.bytes_imported += b.size,
                        _ => report.blobs_skipped += 1,
                    }
                } else {
                    let Some(BlobIn {
                        staged: Some(p),
                        size,
                        ..
                    }) = b
                    else {
                        return Err(ImportError(format!(
                            "blob {hash} of {} left the cache during the import; import again",
                            id.hub_name()
                        )));
                    };
                    self.cache
                        .adopt_blob(id, hash, p)
                        .map_err(|e| io("a blob", id, e))?;
                    report.blobs_imported += 1;
                    report.bytes_imported += size;
                }
            }
            let mut commits: BTreeMap<&String, bool> = BTreeMap::new();
            for ((commit, path), (hash, _)) in &repo.links {
                let was = self
                    .cache
                    .find(id, commit, path)
                    .is_some_and(|f| f.hash == *hash);
                if !was {
                    self.cache
                        .link_snapshot(id, commit, path, hash)
                        .map_err(|e| io("a snapshot link", id, e))?;
                }
                *commits.entry(commit).or_insert(true) &= was;
            }
            for (name, (commit, _)) in &repo.refs {
                self.cache
                    .write_ref(id, name, commit)
                    .map_err(|e| io("a ref", id, e))?;
            }
            for (commit, all_there) in commits {
                if !local {
                    index.record_fetched_unit(&unit_key(id, commit));
                }
                let name = format!("{}@{commit}", id.hub_name());
                if all_there {
                    report.others_skipped.push(name);
                } else {
                    report.others_imported.push(name);
                }
            }
            let _ = std::fs::File::open(self.cache.repo_dir(id).join("blobs"))
                .and_then(|d| d.sync_all());
            if !repo.links.is_empty() {
                (self.vouch)(id);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn housekeeping_is_skipped_and_links_have_one_up_per_folder() {
        assert!(housekeeping(&[".locks", "models--a--b", "x.lock"]));
        assert!(housekeeping(&["models--a--b", ".no_exist", "c", "f"]));
        assert!(housekeeping(&["models--a--b", "blobs", "abc.incomplete"]));
        assert!(!housekeeping(&["models--a--b", "blobs", "abc"]));
        assert_eq!(link_target("a.bin", "h"), "../../blobs/h");
        assert_eq!(link_target("d/e/a.bin", "h"), "../../../../blobs/h");
    }
}
