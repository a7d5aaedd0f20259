//! `lancachectl import`: a bundle (`lancachectl export`), a tar from `GET /models/...`, or any
//! Ollama models directory (which the CLI sends as the same tar), verified and published into
//! the cache. The tar comes over the control socket: the packaged daemon cannot read users'
//! files itself.
//!
//! All or nothing, in two phases:
//! 1. **Stage.** Every blob is copied into a private directory under `.lancached/` (same
//!    filesystem as `blobs/`) while its sha256 and size are computed, then fsync'd. A blob whose
//!    bytes do not match the digest in its name, a truncated archive, a member whose path is not
//!    a plain `blobs/sha256-<hex>` or `manifests/<host>/<ns>/<model>/<tag>` (absolute, `..`,
//!    symlink, hard link, device, anything else) stops the import with an error naming the
//!    member. Manifests are held in memory (they are a few KiB) byte for byte.
//! 2. **Publish**, only when staging succeeded and every blob of every manifest is staged or
//!    already in the cache with its declared size: blobs are renamed into `blobs/` (then the
//!    directory is fsync'd), then manifests are written by rename. A blob already in the cache is
//!    never copied again; a manifest already there byte for byte is skipped.
//!
//! The staging directory is removed whatever happens. Blobs in a bundle that no manifest
//! references are not published (Ollama would delete them at start-up anyway).
//!
//! Members outside Ollama's layout belong to an upper layer (the hub cache's `hub/...`): a
//! [`ForeignMembers`] claims them, stages them into the same private directory in the same
//! pass, is checked before anything is published and publishes after the models, so one
//! archive is all or nothing for both halves. The store knows nothing of what they are.

use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use super::names::{Digest, ModelRef};
use super::{Index, Layout, Manifest};

/// Real manifests are a few KiB.
const MAX_MANIFEST: u64 = 1 << 20;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub models_imported: Vec<ModelRef>,
    pub models_skipped: Vec<ModelRef>,
    pub blobs_imported: u64,
    pub bytes_imported: u64,
    pub blobs_skipped: u64,
    pub local: bool,
    /// Units of a [`ForeignMembers`] published, and those already there whole (by name).
    pub others_imported: Vec<String>,
    pub others_skipped: Vec<String>,
}

/// One archive member handed to a [`ForeignMembers`].
pub enum Member<'a> {
    Dir,
    File { size: u64, data: &'a mut dyn Read },
    Symlink(String),
}

/// Publishes a staged, verified blob into `blobs/` (or finds it there) and returns its path.
pub type Adopt<'a> = dyn FnMut(&Digest, Option<&Path>) -> Result<PathBuf, ImportError> + 'a;

/// The members of an archive that an upper layer owns (see the module docs).
pub trait ForeignMembers: Send {
    /// Whether the (cleaned, relative) member path is one of its own.
    fn claims(&self, path: &str) -> bool;
    /// Stages one claimed member into `staging` (the import's private directory), verifying
    /// what it can; an error names the member and stops the import.
    fn stage(&mut self, staging: &Path, path: &str, member: Member<'_>) -> Result<(), ImportError>;
    /// Whether anything was staged (an archive of only such members is not empty).
    fn is_empty(&self) -> bool;
    /// Every unit whole (staged, or already in place): called before anything is published.
    fn check(&self, adopt_check: &dyn Fn(&Digest) -> Option<u64>) -> Result<(), ImportError>;
    /// Publishes, after the models; `adopt` moves its sha256 blobs into `blobs/`.
    fn publish(
        &mut self,
        adopt: &mut Adopt<'_>,
        index: &Index,
        local: bool,
        report: &mut Report,
    ) -> Result<(), ImportError>;
}

/// Why nothing was imported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportError(pub String);

impl std::fmt::Display for ImportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn err<T>(msg: impl Into<String>) -> Result<T, ImportError> {
    Err(ImportError(msg.into()))
}

/// A blob staged (or found already published).
struct Blob {
    /// Where it came from (tar member or file), for error messages.
    member: String,
    size: u64,
    /// `None`: already in the cache, nothing to publish.
    staged: Option<PathBuf>,
}

struct ManifestIn {
    member: String,
    model: ModelRef,
    bytes: Vec<u8>,
    manifest: Manifest,
}

/// The private staging directory, removed on drop.
struct Staging(PathBuf);

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What staging produced: verified blobs in the private directory and the manifests, ready to
/// [`Staged::publish`] (under the lifecycle lock; staging itself needs no lock).
pub struct Staged {
    staging: Staging,
    blobs: BTreeMap<Digest, Blob>,
    manifests: Vec<ManifestIn>,
    foreign: Option<Box<dyn ForeignMembers>>,
}

fn new_staging(layout: &Layout) -> Result<Staging, ImportError> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let dir = layout
        .state_dir()
        .join(format!("import-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir)
        .or_else(|e| err(format!("cannot create {}: {e}", dir.display())))?;
    Ok(Staging(dir))
}

/// Stages a tar stream (a bundle, a `/models/...` tar, or an Ollama models directory as the CLI
/// sends it): every blob verified, every member checked.
pub fn stage_tar_stream(
    layout: &Layout,
    reader: impl Read,
    mut foreign: Option<Box<dyn ForeignMembers>>,
) -> Result<Staged, ImportError> {
    let staging = new_staging(layout)?;
    let mut blobs = BTreeMap::new();
    let mut manifests = Vec::new();
    stage_tar(
        layout,
        &staging,
        reader,
        &mut blobs,
        &mut manifests,
        foreign.as_deref_mut(),
    )?;
    Staged::new(staging, blobs, manifests, foreign, "the archive")
}

impl Staged {
    fn new(
        staging: Staging,
        blobs: BTreeMap<Digest, Blob>,
        manifests: Vec<ManifestIn>,
        foreign: Option<Box<dyn ForeignMembers>>,
        what: &str,
    ) -> Result<Staged, ImportError> {
        if manifests.is_empty() && foreign.as_ref().is_none_or(|f| f.is_empty()) {
            return err(format!(
                "{what} holds no model manifest (expected manifests/<host>/<namespace>/<model>/<tag>{})",
                if foreign.is_some() { ", or a hub/ repo folder" } else { "" }
            ));
        }
        Ok(Staged {
            staging,
            blobs,
            manifests,
            foreign,
        })
    }

    /// Checks that every manifest is complete (blobs staged, or still in the cache), then
    /// publishes. The staging directory goes in any case.
    pub fn publish(
        mut self,
        layout: &Layout,
        index: &Index,
        local: bool,
    ) -> Result<Report, ImportError> {
        check_complete(layout, &self.blobs, &self.manifests)?;
        if let Some(f) = &self.foreign {
            f.check(&|d| already_published(layout, d))?;
        }
        let mut report = publish(
            layout,
            index,
            &self.staging,
            &self.blobs,
            &self.manifests,
            local,
        )?;
        if let Some(f) = &mut self.foreign {
            let mut adopt = |d: &Digest, staged: Option<&Path>| {
                adopt_blob(layout, index, d, staged, local, &mut report.blobs_imported)
            };
            let mut r = Report::default();
            f.publish(&mut adopt, index, local, &mut r)?;
            report.others_imported = r.others_imported;
            report.others_skipped = r.others_skipped;
            report.blobs_imported += r.blobs_imported;
            report.bytes_imported += r.bytes_imported;
            report.blobs_skipped += r.blobs_skipped;
        }
        Ok(report)
    }
}

/// The member path as a relative, normalised string, or why it is refused.
fn clean_member(raw: &[u8]) -> Result<String, String> {
    let s = std::str::from_utf8(raw).map_err(|_| "the path is not UTF-8".to_string())?;
    if s.starts_with('/') {
        return Err("absolute path".into());
    }
    if s.contains('\\') || s.contains('\0') {
        return Err("backslash or NUL in the path".into());
    }
    let mut parts = Vec::new();
    for c in s.split('/') {
        match c {
            "" | "." => continue,
            ".." => return Err("`..` in the path".into()),
            c => parts.push(c),
        }
    }
    Ok(parts.join("/"))
}

enum Kind {
    Dir,
    Blob(Digest),
    Manifest(ModelRef),
}

fn classify(path: &str) -> Result<Kind, String> {
    let parts: Vec<&str> = path.split('/').collect();
    match parts.as_slice() {
        [] | [""] | ["blobs"] | ["manifests"] => Ok(Kind::Dir),
        ["blobs", name] => Digest::from_file_name(name)
            .map(Kind::Blob)
            .ok_or_else(|| "not a blob name (blobs/sha256-<64 hex>)".to_string()),
        ["manifests", host, ns, model, tag] => model_ref(host, ns, model, tag).map(Kind::Manifest),
        ["manifests", rest @ ..] if rest.len() < 4 => Ok(Kind::Dir),
        _ => Err(
            "not part of an Ollama models directory (blobs/sha256-<hex> or \
             manifests/<host>/<namespace>/<model>/<tag>)"
                .into(),
        ),
    }
}

fn model_ref(host: &str, ns: &str, model: &str, tag: &str) -> Result<ModelRef, String> {
    let m = ModelRef::parse(&format!("{host}/{ns}/{model}:{tag}")).map_err(|e| e.to_string())?;
    if m.host != host || m.namespace != ns || m.model != model || m.tag != tag {
        return Err("not a canonical model path".into());
    }
    Ok(m)
}

/// Copies `src` into a new file of the staging directory while hashing, and checks the
/// digest: the one way a blob enters staging, whichever layer's member it is.
pub fn stage_blob(
    staging: &Path,
    digest: &Digest,
    member: &str,
    declared: u64,
    mut src: impl Read,
) -> Result<(PathBuf, u64), ImportError> {
    let path = staging.join(digest.file_name());
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .or_else(|e| err(format!("cannot stage {member}: {e}")))?;
    let mut hasher = Sha256::new();
    let size = copy_hashing(&mut src, &mut out, member, declared, &mut |b| {
        hasher.update(b)
    })?;
    let got = hex(&hasher.finalize());
    if got != digest.hex() {
        return err(format!(
            "{member}: corrupt: its {size} bytes hash to sha256:{got}, not the digest in its name"
        ));
    }
    out.sync_all()
        .or_else(|e| err(format!("cannot stage {member}: fsync: {e}")))?;
    Ok((path, size))
}

/// Copies a member's bytes from `src` to its staging file `out`, feeding each to `hash`, and
/// refuses a member shorter than the `declared` size: the part of staging that is the same
/// whichever hash names the member. Returns the bytes copied; checking the hash is the caller's.
pub fn copy_hashing(
    src: &mut dyn Read,
    out: &mut std::fs::File,
    member: &str,
    declared: u64,
    hash: &mut dyn FnMut(&[u8]),
) -> Result<u64, ImportError> {
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return err(format!("{member}: truncated or unreadable: {e}")),
        };
        hash(&buf[..n]);
        out.write_all(&buf[..n])
            .or_else(|e| err(format!("cannot stage {member}: {e}")))?;
        size += n as u64;
    }
    if size < declared {
        return err(format!(
            "{member}: truncated: the archive ends after {size} of its {declared} bytes"
        ));
    }
    Ok(size)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The blob's size when `blobs/` holds it.
pub fn already_published(layout: &Layout, digest: &Digest) -> Option<u64> {
    std::fs::symlink_metadata(layout.blob_path(digest))
        .ok()
        .filter(|m| m.is_file())
        .map(|m| m.len())
}

fn parse_manifest(
    member: &str,
    model: ModelRef,
    bytes: Vec<u8>,
) -> Result<ManifestIn, ImportError> {
    let manifest = Manifest::parse(&bytes)
        .or_else(|e| err(format!("{member}: not a usable manifest: {e}")))?;
    Ok(ManifestIn {
        member: member.to_string(),
        model,
        bytes,
        manifest,
    })
}

/// Counts bytes read, so the end of the archive can be told from a truncation.
struct Counting<R> {
    inner: R,
    n: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n += n as u64;
        Ok(n)
    }
}

fn stage_tar(
    layout: &Layout,
    staging: &Staging,
    file: impl Read,
    blobs: &mut BTreeMap<Digest, Blob>,
    manifests: &mut Vec<ManifestIn>,
    mut foreign: Option<&mut (dyn ForeignMembers + 'static)>,
) -> Result<(), ImportError> {
    let mut archive = tar::Archive::new(Counting {
        inner: std::io::BufReader::with_capacity(1 << 20, file),
        n: 0,
    });
    // Where the last member's data (padded) ends: a well-formed archive has at least one zero
    // block after it; a reader that ran out of bytes right there was cut short.
    let mut end = 0u64;
    let mut last = String::from("(the first member)");
    {
        let entries = archive
            .entries()
            .or_else(|e| err(format!("not a tar archive: {e}")))?;
        for entry in entries {
            let mut entry = entry.or_else(|e| {
                err(format!(
                    "the archive is truncated or corrupt after {last}: {e}"
                ))
            })?;
            let raw = entry.path_bytes().into_owned();
            let shown = String::from_utf8_lossy(&raw).into_owned();
            let member = clean_member(&raw)
                .or_else(|why| err(format!("member {shown:?} refused: {why}")))?;
            let kind = entry.header().entry_type();
            let size = entry.size();
            end = entry.raw_file_position() + size.div_ceil(512) * 512;
            last = format!("member {shown:?}");
            use tar::EntryType as T;
            if let Some(f) = foreign.as_deref_mut().filter(|f| f.claims(&member)) {
                let m = match kind {
                    T::Regular | T::Continuous => Member::File {
                        size,
                        data: &mut entry,
                    },
                    T::Directory => Member::Dir,
                    T::Symlink => {
                        let target = entry
                            .link_name_bytes()
                            .map(|b| String::from_utf8_lossy(&b).into_owned())
                            .unwrap_or_default();
                        Member::Symlink(target)
                    }
                    T::XGlobalHeader => continue,
                    other => {
                        return err(format!(
                            "member {shown:?} refused: a {other:?} entry has no place here"
                        ))
                    }
                };
                f.stage(&staging.0, &member, m)?;
                continue;
            }
            let is_file = match kind {
                T::Regular | T::Continuous => true,
                T::Directory => false,
                T::XGlobalHeader => continue,
                T::Symlink => return err(format!("member {shown:?} refused: a symlink")),
                T::Link => return err(format!("member {shown:?} refused: a hard link")),
                T::Char | T::Block | T::Fifo => {
                    return err(format!("member {shown:?} refused: a device or FIFO"))
                }
                other => {
                    return err(format!(
                        "member {shown:?} refused: unsupported entry type {other:?}"
                    ))
                }
            };
            let class =
                classify(&member).or_else(|why| err(format!("member {shown:?} refused: {why}")))?;
            match (class, is_file) {
                (Kind::Dir, false) => {}
                (Kind::Dir, true) | (Kind::Blob(_) | Kind::Manifest(_), false) => {
                    return err(format!(
                        "member {shown:?} refused: a {} where Ollama's layout has a {}",
                        if is_file { "file" } else { "directory" },
                        if is_file { "directory" } else { "file" },
                    ))
                }
                (Kind::Blob(d), true) => {
                    if blobs.contains_key(&d) {
                        continue;
                    }
                    if let Some(len) = already_published(layout, &d) {
                        // Already verified and published: read past it.
                        blobs.insert(
                            d,
                            Blob {
                                member: shown,
                                size: len,
                                staged: None,
                            },
                        );
                        continue;
                    }
                    let (path, got) = stage_blob(
                        &staging.0,
                        &d,
                        &format!("member {shown:?}"),
                        size,
                        &mut entry,
                    )?;
                    blobs.insert(
                        d,
                        Blob {
                            member: shown,
                            size: got,
                            staged: Some(path),
                        },
                    );
                }
                (Kind::Manifest(m), true) => {
                    if size > MAX_MANIFEST {
                        return err(format!(
                            "member {shown:?} refused: {size} bytes is too big for a manifest"
                        ));
                    }
                    let mut bytes = Vec::with_capacity(size as usize);
                    entry.read_to_end(&mut bytes).or_else(|e| {
                        err(format!("member {shown:?}: truncated or unreadable: {e}"))
                    })?;
                    if manifests.iter().any(|x: &ManifestIn| x.model == m) {
                        return err(format!("member {shown:?}: the same model twice"));
                    }
                    manifests.push(parse_manifest(&format!("member {shown:?}"), m, bytes)?);
                }
            }
        }
    }
    let read = archive.into_inner().n;
    if read < end + 512 {
        return err(format!(
            "the archive is truncated: it ends right after {last}, without tar's end-of-archive blocks"
        ));
    }
    Ok(())
}

fn check_complete(
    layout: &Layout,
    blobs: &BTreeMap<Digest, Blob>,
    manifests: &[ManifestIn],
) -> Result<(), ImportError> {
    for m in manifests {
        if !layout.manifest_path_contained(&layout.manifest_path(&m.model)) {
            return err(format!(
                "{}: the cache's manifests/ has a symlink on the way to {}",
                m.member, m.model
            ));
        }
        for layer in m.manifest.blobs() {
            let b = blobs.get(&layer.digest);
            if b.is_some_and(|b| b.staged.is_none())
                && already_published(layout, &layer.digest) != Some(layer.size)
            {
                return err(format!(
                    "blob {} left the cache during the import (evicted?); import again",
                    layer.digest
                ));
            }
            match b {
                None => {
                    return err(format!(
                        "{} references blob {}, which is neither in the import nor in the cache",
                        m.member, layer.digest
                    ))
                }
                Some(b) if b.size != layer.size => {
                    return err(format!(
                        "{}: {} bytes, but {} says {} bytes",
                        b.member, b.size, m.member, layer.size
                    ))
                }
                Some(_) => {}
            }
        }
    }
    Ok(())
}

/// Publishes one verified blob: renamed from staging into `blobs/` unless it is already there
/// (then the staged copy is left to go with the staging directory), `blobs/` fsync'd.
fn adopt_blob(
    layout: &Layout,
    index: &Index,
    d: &Digest,
    staged: Option<&Path>,
    local: bool,
    imported: &mut u64,
) -> Result<PathBuf, ImportError> {
    let dest = layout.blob_path(d);
    if already_published(layout, d).is_some() {
        return Ok(dest);
    }
    let Some(path) = staged else {
        return err(format!(
            "blob {d} left the cache during the import (evicted?); import again"
        ));
    };
    std::fs::rename(path, &dest)
        .or_else(|e| err(format!("publishing blob {d}: rename into blobs/: {e}")))?;
    std::fs::File::open(layout.blobs_dir())
        .and_then(|f| f.sync_all())
        .or_else(|e| err(format!("fsync of blobs/: {e}")))?;
    *imported += 1;
    if !local {
        index.record_fetched_blob(d);
    }
    Ok(dest)
}

fn publish(
    layout: &Layout,
    index: &Index,
    staging: &Staging,
    blobs: &BTreeMap<Digest, Blob>,
    manifests: &[ManifestIn],
    local: bool,
) -> Result<Report, ImportError> {
    let mut report = Report {
        local,
        ..Default::default()
    };
    let referenced: std::collections::BTreeSet<&Digest> = manifests
        .iter()
        .flat_map(|m| m.manifest.blobs().map(|l| &l.digest))
        .collect();
    let mut renamed = false;
    for d in referenced {
        let b = &blobs[d];
        match &b.staged {
            Some(path) if already_published(layout, d).is_none() => {
                std::fs::rename(path, layout.blob_path(d)).or_else(|e| {
                    err(format!("publishing {}: rename into blobs/: {e}", b.member))
                })?;
                renamed = true;
                report.blobs_imported += 1;
                report.bytes_imported += b.size;
                if !local {
                    index.record_fetched_blob(d);
                }
            }
            _ => report.blobs_skipped += 1,
        }
    }
    if renamed {
        std::fs::File::open(layout.blobs_dir())
            .and_then(|d| d.sync_all())
            .or_else(|e| err(format!("fsync of blobs/: {e}")))?;
    }
    for m in manifests {
        let dest = layout.manifest_path(&m.model);
        if std::fs::read(&dest).is_ok_and(|b| b == m.bytes) {
            report.models_skipped.push(m.model.clone());
            continue;
        }
        let parent = dest.parent().expect("manifest paths have a parent");
        std::fs::create_dir_all(parent)
            .or_else(|e| err(format!("creating {}: {e}", parent.display())))?;
        let tmp = staging.0.join("manifest.tmp");
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&m.bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &dest)?;
            std::fs::File::open(parent)?.sync_all()
        };
        write().or_else(|e| err(format!("writing the manifest of {}: {e}", m.model)))?;
        if !local {
            index.record_fetched(&m.model);
        }
        report.models_imported.push(m.model.clone());
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_paths() {
        assert_eq!(clean_member(b"./blobs/x").unwrap(), "blobs/x");
        assert!(clean_member(b"/etc/passwd").is_err());
        assert!(clean_member(b"blobs/../../x").is_err());
        assert!(clean_member(b"a\\b").is_err());
        assert!(matches!(classify("manifests/h"), Ok(Kind::Dir)));
        assert!(classify("blobs/sha256-zz").is_err());
        assert!(classify("etc/passwd").is_err());
        assert!(matches!(
            classify("manifests/registry.ollama.ai/library/llama3/8b"),
            Ok(Kind::Manifest(_))
        ));
        assert!(classify("manifests/Registry.ollama.ai/library/llama3/8b").is_err());
    }
}
