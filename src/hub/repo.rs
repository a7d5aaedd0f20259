//! Names on the Hub, checked before any of them reaches a path on disk or a URL upstream: a
//! repository (`models` or `datasets`, `org/name` or a legacy `name`), a revision (a branch,
//! tag, `refs/pr/N` or a commit) and a file path inside a repository. Anything that could
//! climb out of its folder (`..`, empty or `.` segments, NUL, a backslash) is refused here.

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Model,
    Dataset,
}

impl Kind {
    /// The `/api/{models,datasets}` segment, also the hub cache's folder prefix.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Model => "models",
            Kind::Dataset => "datasets",
        }
    }
    /// What precedes a repository in a `resolve` URL.
    pub fn url_prefix(self) -> &'static str {
        match self {
            Kind::Model => "",
            Kind::Dataset => "datasets/",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RepoId {
    pub kind: Kind,
    /// `org/name` or `name`.
    pub id: String,
}

impl RepoId {
    pub fn new(kind: Kind, id: &str) -> Result<RepoId, String> {
        let segs: Vec<&str> = id.split('/').collect();
        if segs.is_empty() || segs.len() > 2 || !segs.iter().all(|s| valid_name(s)) {
            return Err(format!("invalid repository name {id:?}"));
        }
        Ok(RepoId {
            kind,
            id: id.to_string(),
        })
    }

    /// `models--org--name`: the hub cache's folder for it.
    pub fn folder(&self) -> String {
        format!("{}--{}", self.kind.plural(), self.id.replace('/', "--"))
    }

    /// `models/org/name`: how logs, origins and the access cache name it.
    pub fn key(&self) -> String {
        format!("{}/{}", self.kind.plural(), self.id)
    }
}

/// How the operator names a Hub repo (`lancachectl`, `/api/models`, bundles):
/// `hf:org/name[@rev]` for a model, `hf:datasets/org/name[@rev]` for a dataset
/// (`hf:models/org/name` is accepted too). `rev` is a branch, tag, `refs/pr/N` or commit;
/// without it, `main` (for prefetch and export) or every revision held (for prune).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HubRef {
    pub repo: RepoId,
    pub rev: Option<String>,
}

/// The operator's prefix for Hub repos (Ollama's names never start with it).
pub const SCHEME: &str = "hf:";

impl HubRef {
    pub fn is_hub_name(s: &str) -> bool {
        s.starts_with(SCHEME)
    }

    pub fn parse(s: &str) -> Result<HubRef, String> {
        let rest = s
            .strip_prefix(SCHEME)
            .ok_or_else(|| format!("{s:?} is not a Hub name (hf:org/name[@rev])"))?;
        let (id, rev) = match rest.split_once('@') {
            Some((id, rev)) => (id, Some(rev)),
            None => (rest, None),
        };
        let (kind, id) = if let Some(id) = id.strip_prefix("datasets/") {
            (Kind::Dataset, id)
        } else {
            (Kind::Model, id.strip_prefix("models/").unwrap_or(id))
        };
        let repo = RepoId::new(kind, id).map_err(|e| {
            format!("{s:?}: {e} (write hf:org/name[@rev] or hf:datasets/org/name[@rev])")
        })?;
        if let Some(r) = rev {
            if !valid_revision(r) {
                return Err(format!("{s:?}: invalid revision {r:?}"));
            }
        }
        Ok(HubRef {
            repo,
            rev: rev.map(str::to_string),
        })
    }

    /// The revision, `main` when none was named.
    pub fn rev_or_main(&self) -> &str {
        self.rev.as_deref().unwrap_or("main")
    }
}

impl RepoId {
    /// `hf:org/name` or `hf:datasets/org/name`: the operator's name for the repo.
    pub fn hub_name(&self) -> String {
        format!("{SCHEME}{}{}", self.kind.url_prefix(), self.id)
    }

    /// The repo a hub cache folder (`models--org--name`) holds, if it is one.
    pub fn from_folder(folder: &str) -> Option<RepoId> {
        let (kind, rest) = folder.split_once("--")?;
        let kind = match kind {
            "models" => Kind::Model,
            "datasets" => Kind::Dataset,
            _ => return None,
        };
        let id = rest.replacen("--", "/", 1);
        let r = RepoId::new(kind, &id).ok()?;
        (r.folder() == folder).then_some(r)
    }
}

impl std::fmt::Display for HubRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.repo.hub_name(), self.rev_or_main())
    }
}

/// A repository name segment as the Hub allows them: letters, digits, `-`, `_`, `.`, not
/// starting with `.` or `-` (so never `.` or `..`), at most 96 bytes.
fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 96
        && !s.starts_with(['.', '-'])
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// A revision: `main`, `v1.0`, `refs/pr/1`, or a commit. Also a path under `refs/`.
pub fn valid_revision(rev: &str) -> bool {
    !rev.is_empty() && rev.len() <= 256 && valid_path(rev)
}

/// A file path inside a repository: relative, no empty, `.` or `..` segment, no NUL or `\`.
pub fn valid_path(p: &str) -> bool {
    !p.is_empty()
        && !p.contains(['\0', '\\'])
        && p.split('/').all(|s| !s.is_empty() && s != "." && s != "..")
}

/// A 40-hex commit id (immutable: what it names never changes).
pub fn is_commit(rev: &str) -> bool {
    rev.len() == 40
        && rev
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// Percent-decodes one URL segment (or a path) into UTF-8.
pub fn decode(s: &str) -> Result<String, String> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| format!("{s:?} is not UTF-8 once decoded"))
}

/// What `huggingface_hub` escapes in a file path (everything but unreserved and `/`).
const PATH: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'/');

/// [`PATH`] with `/` escaped as well.
const SEGMENT: &AsciiSet = &PATH.add(b'/');

/// A file path for an upstream URL.
pub fn encode_path(p: &str) -> String {
    utf8_percent_encode(p, PATH).to_string()
}

/// A revision for an upstream URL: `/` is escaped too (`refs%2Fpr%2F1`).
pub fn encode_segment(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_could_escape_are_refused() {
        assert!(RepoId::new(Kind::Model, "org/name-1.5_b").is_ok());
        assert!(RepoId::new(Kind::Model, "gpt2").is_ok());
        for bad in ["", "a/b/c", "../x", "a/..", "a/.x", "a//b", "a/b c", "a/-b"] {
            assert!(RepoId::new(Kind::Model, bad).is_err(), "{bad}");
        }
        assert_eq!(
            RepoId::new(Kind::Dataset, "o/n").unwrap().folder(),
            "datasets--o--n"
        );
        assert!(valid_path("a/b.txt") && valid_path("spaced name.bin"));
        for bad in ["", "/a", "a/", "a/../b", "./a", "a\\b", "a\0"] {
            assert!(!valid_path(bad), "{bad:?}");
        }
        assert!(is_commit(&"a".repeat(40)) && !is_commit(&"A".repeat(40)));
        assert_eq!(encode_segment("refs/pr/1"), "refs%2Fpr%2F1");
        assert_eq!(encode_path("d/a b.txt"), "d/a%20b.txt");
        assert_eq!(decode("refs%2Fpr%2F1").unwrap(), "refs/pr/1");
    }

    #[test]
    fn operator_names() {
        let r = HubRef::parse("hf:org/name").unwrap();
        assert_eq!(
            (r.repo.kind, r.repo.id.as_str(), r.rev.clone()),
            (Kind::Model, "org/name", None)
        );
        assert_eq!(r.to_string(), "hf:org/name@main");
        let r = HubRef::parse("hf:datasets/o/d@refs/pr/1").unwrap();
        assert_eq!(r.repo.kind, Kind::Dataset);
        assert_eq!(r.to_string(), "hf:datasets/o/d@refs/pr/1");
        assert_eq!(
            HubRef::parse("hf:models/gpt2@v1").unwrap().repo.hub_name(),
            "hf:gpt2"
        );
        for bad in [
            "org/name",
            "hf:",
            "hf:a/b/c",
            "hf:o/n@",
            "hf:o/n@../x",
            "hf:../x",
        ] {
            assert!(HubRef::parse(bad).is_err(), "{bad}");
        }
        assert!(HubRef::is_hub_name("hf:x") && !HubRef::is_hub_name("hf.co/u/r:q"));
        let f = RepoId::new(Kind::Dataset, "o/n").unwrap();
        assert_eq!(RepoId::from_folder(&f.folder()), Some(f));
        assert_eq!(RepoId::from_folder("models--gpt2").unwrap().id, "gpt2");
        for bad in ["spaces--o--n", "models--..", "models--a--.b", "models"] {
            assert_eq!(RepoId::from_folder(bad), None, "{bad}");
        }
    }
}
