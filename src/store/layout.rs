//! The cache directory IS an Ollama models directory: `manifests/<host>/<ns>/<model>/<tag>` and
//! `blobs/sha256-<hex>`, so a local `ollama` can use it as `OLLAMA_MODELS` and an existing models
//! directory can be served as it is. The daemon's own files (fills in progress, the index) live
//! in `.lancached/`, out of reach of Ollama's start-up clean-up of `blobs/`, and on the same
//! filesystem so that publishing a verified blob is one atomic rename.
//!
//! Paths are only ever built from validated [`ModelRef`]s and [`Digest`]s.

use std::path::{Path, PathBuf};

use super::names::{Digest, ModelRef};

#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    pub fn new(root: impl Into<PathBuf>) -> Layout {
        Layout { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs")
    }

    pub fn manifests_dir(&self) -> PathBuf {
        self.root.join("manifests")
    }

    /// The daemon's private area.
    pub fn state_dir(&self) -> PathBuf {
        self.root.join(".lancached")
    }

    /// Fills in progress: sparse data files and their slice maps.
    pub fn partial_dir(&self) -> PathBuf {
        self.state_dir().join("partial")
    }

    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blobs_dir().join(digest.file_name())
    }

    pub fn manifest_path(&self, m: &ModelRef) -> PathBuf {
        self.manifests_dir()
            .join(&m.host)
            .join(&m.namespace)
            .join(&m.model)
            .join(&m.tag)
    }

    /// Creates the directories the daemon writes into. The daemon's own area must be real
    /// directories: a `.lancached` or `.lancached/partial` that is a symlink would have fills
    /// written (and stale ones deleted) wherever it points, so it stops the start instead.
    pub fn create(&self) -> std::io::Result<()> {
        for d in [self.state_dir(), self.partial_dir()] {
            if std::fs::symlink_metadata(&d).is_ok_and(|m| m.file_type().is_symlink()) {
                return Err(std::io::Error::other(format!(
                    "{} is a symlink; lancached keeps its own state in a real directory inside the cache (replace the link with a directory)",
                    d.display()
                )));
            }
        }
        for d in [self.blobs_dir(), self.manifests_dir(), self.partial_dir()] {
            std::fs::create_dir_all(d)?;
        }
        Ok(())
    }

    /// Whether `path` (a manifest path built by [`Layout::manifest_path`]) stays inside
    /// `manifests/` on disk: no existing directory on the way down from `manifests/` is a
    /// symlink. A link planted in the cache must not make the daemon read a file outside it as a
    /// cached manifest, nor write one through it. Components that do not exist yet are fine
    /// (they will be created as real directories).
    pub fn manifest_path_contained(&self, path: &Path) -> bool {
        let top = self.manifests_dir();
        let Ok(rest) = path.strip_prefix(&top) else {
            return false;
        };
        let mut at = top;
        let parts: Vec<_> = rest.components().collect();
        for c in &parts[..parts.len().saturating_sub(1)] {
            at.push(c);
            match std::fs::symlink_metadata(&at) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => return false,
                Err(_) => return true,
            }
        }
        true
    }

    /// Every manifest in the directory, as (model, path). Walks exactly four levels like Ollama
    /// and skips anything whose components are not valid names (so a planted `..` or symlink
    /// name never turns into a model).
    pub fn list_manifests(&self) -> Vec<(ModelRef, PathBuf)> {
        let mut out = Vec::new();
        // Real directories only: `DirEntry::file_type` does not follow symlinks, so a host,
        // namespace or model directory that is a link out of the cache is never walked (prune
        // and eviction would otherwise delete files wherever it points).
        let dirs = |p: &Path| -> Vec<(String, PathBuf)> {
            std::fs::read_dir(p)
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .filter_map(|e| Some((e.file_name().into_string().ok()?, e.path())))
                .collect()
        };
        let files = |p: &Path| -> Vec<(String, PathBuf)> {
            std::fs::read_dir(p)
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| Some((e.file_name().into_string().ok()?, e.path())))
                .collect()
        };
        for (host, hp) in dirs(&self.manifests_dir()) {
            for (ns, np) in dirs(&hp) {
                for (model, mp) in dirs(&np) {
                    for (tag, tp) in files(&mp) {
                        // Not following symlinks: a link planted in the cache must not make us
                        // read (or serve) a file outside it.
                        let Ok(meta) = std::fs::symlink_metadata(&tp) else {
                            continue;
                        };
                        if !meta.is_file() {
                            continue;
                        }
                        let r = ModelRef {
                            host: host.clone(),
                            namespace: ns.clone(),
                            model: model.clone(),
                            tag,
                        };
                        if ModelRef::parse(&r.to_string()).as_ref() == Ok(&r) {
                            out.push((r, tp));
                        }
                    }
                }
            }
        }
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_listing() {
        let tmp = tempfile::tempdir().unwrap();
        let l = Layout::new(tmp.path());
        l.create().unwrap();
        let m = ModelRef::parse("qwen2.5:1.5b").unwrap();
        let p = l.manifest_path(&m);
        assert!(p.ends_with("manifests/registry.ollama.ai/library/qwen2.5/1.5b"));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, b"{}").unwrap();
        let bad = l
            .manifests_dir()
            .join("registry.ollama.ai/library/b@d/latest");
        std::fs::create_dir_all(bad.parent().unwrap()).unwrap();
        std::fs::write(&bad, b"{}").unwrap();
        let link = l
            .manifests_dir()
            .join("registry.ollama.ai/library/qwen2.5/evil");
        std::os::unix::fs::symlink("/etc/passwd", &link).unwrap();
        assert_eq!(l.list_manifests(), vec![(m, p)]);
    }

    #[test]
    fn symlinked_directories_lead_nowhere() {
        let tmp = tempfile::tempdir().unwrap();
        let l = Layout::new(tmp.path().join("cache"));
        l.create().unwrap();
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(outside.join("m")).unwrap();
        std::fs::write(outside.join("m/latest"), b"{}").unwrap();
        let reg = l.manifests_dir().join("registry.ollama.ai");
        std::fs::create_dir_all(&reg).unwrap();
        std::os::unix::fs::symlink(&outside, reg.join("linked")).unwrap();
        assert!(l.list_manifests().is_empty());
        let through = l.manifest_path(&ModelRef::parse("linked/m:latest").unwrap());
        assert!(!l.manifest_path_contained(&through));
        let fresh = l.manifest_path(&ModelRef::parse("other/m:latest").unwrap());
        assert!(l.manifest_path_contained(&fresh), "not yet created is fine");
        assert!(!l.manifest_path_contained(Path::new("/etc/passwd")));
        // The daemon's own area may not be a link.
        std::fs::remove_dir(l.partial_dir()).unwrap();
        std::os::unix::fs::symlink(&outside, l.partial_dir()).unwrap();
        let err = l.create().unwrap_err().to_string();
        assert!(err.contains("partial is a symlink"), "{err}");
    }
}
