//! Names as Ollama and the registry API write them, validated before any of them becomes part
//! of a path: digests (`sha256:` + 64 lowercase hex), repository names (the OCI distribution
//! grammar), tags, and Ollama's model references `[scheme://][host/][namespace/]model[:tag]`
//! with defaults `registry.ollama.ai`, `library`, `latest`.
//!
//! Every component that reaches the filesystem is checked here against a grammar that has no
//! `/`, no `..` and no leading `.`, which is what keeps request input inside the cache directory.

use std::fmt;

pub const DEFAULT_HOST: &str = "registry.ollama.ai";
pub const DEFAULT_NAMESPACE: &str = "library";
pub const DEFAULT_TAG: &str = "latest";

/// A sha256 content digest, always `sha256:` + 64 lowercase hex characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

impl Digest {
    /// Parses `sha256:<hex>` (the registry form).
    pub fn parse(s: &str) -> Result<Digest, NameError> {
        let hex = s
            .strip_prefix("sha256:")
            .ok_or_else(|| NameError::digest(s))?;
        Digest::from_hex(hex).map_err(|_| NameError::digest(s))
    }

    /// Parses a bare 64-hex string.
    pub fn from_hex(hex: &str) -> Result<Digest, NameError> {
        if hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            Ok(Digest(format!("sha256:{hex}")))
        } else {
            Err(NameError::digest(hex))
        }
    }

    /// Parses Ollama's on-disk blob file name `sha256-<hex>`.
    pub fn from_file_name(name: &str) -> Option<Digest> {
        Digest::from_hex(name.strip_prefix("sha256-")?).ok()
    }

    /// The digest of some bytes.
    pub fn of(bytes: &[u8]) -> Digest {
        use sha2::Digest as _;
        Digest(format!(
            "sha256:{}",
            hex::encode(sha2::Sha256::digest(bytes))
        ))
    }

    pub fn hex(&self) -> &str {
        &self.0[7..]
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Ollama's blob file name: `sha256-<hex>`.
    pub fn file_name(&self) -> String {
        format!("sha256-{}", self.hex())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a name was refused; the message is safe to show to the client that sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameError {
    pub what: &'static str,
    pub message: String,
}

impl NameError {
    fn digest(s: &str) -> NameError {
        NameError {
            what: "digest",
            message: format!(
                "invalid digest {:?}: expected sha256: followed by 64 lowercase hex digits",
                truncate(s)
            ),
        }
    }
    fn new(what: &'static str, message: String) -> NameError {
        NameError { what, message }
    }
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for NameError {}

fn truncate(s: &str) -> String {
    if s.len() > 80 {
        format!(
            "{}…",
            &s[..s
                .char_indices()
                .take_while(|(i, _)| *i < 80)
                .last()
                .map(|(i, c)| i + c.len_utf8())
                .unwrap_or(0)]
        )
    } else {
        s.to_string()
    }
}

/// One path component of a repository name: `[a-zA-Z0-9]+((\.|_|__|-+)[a-zA-Z0-9]+)*`. The OCI
/// grammar is lower-case only, but Ollama keeps the case of names such as
/// `hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF`, and so must we to find them on disk.
pub fn valid_path_component(c: &str) -> bool {
    if c.is_empty() || c.len() > 128 {
        return false;
    }
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_alphanumeric();
    if !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: ".", "_", "__" or "-"+, always between alphanumerics.
        let start = i;
        match b[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < b.len() && b[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < b.len() && b[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
        if i == start || i >= b.len() || !alnum(b[i]) {
            return false;
        }
    }
    true
}

/// A tag: `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}` (so `1.5b`, `8b-instruct-q4_K_M`; never `..`).
pub fn valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|&x| x.is_ascii_alphanumeric() || matches!(x, b'_' | b'.' | b'-'))
}

/// A registry host as it appears in a model name (`registry.ollama.ai`, `hf.co`, `cache.lan:8080`).
pub fn valid_host(h: &str) -> bool {
    let (name, port) = match h.rsplit_once(':') {
        Some((n, p)) => (n, Some(p)),
        None => (h, None),
    };
    if let Some(p) = port {
        if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
    }
    valid_dns_name(name)
}

/// A DNS host name (or dotted IPv4 address), one trailing dot allowed: labels of letters,
/// digits and inner hyphens, 63 bytes each, 253 in all. The one check behind every host name
/// the daemon accepts (configuration, model names, Host headers put into scripts).
pub fn valid_dns_name(h: &str) -> bool {
    let name = h.strip_suffix('.').unwrap_or(h);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// A fully qualified model: `host/namespace/model:tag`, stored by Ollama as
/// `manifests/<host>/<namespace>/<model>/<tag>` (exactly four levels).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModelRef {
    pub host: String,
    pub namespace: String,
    pub model: String,
    pub tag: String,
}

impl ModelRef {
    /// Parses any name form Ollama accepts: `llama3`, `llama3:8b`, `user/model:tag`,
    /// `hf.co/user/repo:Q4_K_M`, `http://cache.lan/library/llama3`.
    pub fn parse(name: &str) -> Result<ModelRef, NameError> {
        let bad = |why: &str| {
            NameError::new(
                "name",
                format!("invalid model name {:?}: {why}", truncate(name)),
            )
        };
        if name.len() > 512 {
            return Err(bad("too long"));
        }
        let rest = name.split_once("://").map(|(_, r)| r).unwrap_or(name);
        let (path, tag) = match rest.rsplit_once(':') {
            // A colon after the last slash is the tag; one before it is a host's port.
            Some((p, t)) if !t.contains('/') => (p, t),
            _ => (rest, DEFAULT_TAG),
        };
        let parts: Vec<&str> = path.split('/').collect();
        let (host, namespace, model) = match parts.as_slice() {
            [m] => (DEFAULT_HOST, DEFAULT_NAMESPACE, *m),
            [ns, m] => (DEFAULT_HOST, *ns, *m),
            [h, ns, m] => (*h, *ns, *m),
            _ => return Err(bad("expected [host/][namespace/]model[:tag]")),
        };
        let r = ModelRef {
            host: host.to_ascii_lowercase(),
            namespace: namespace.to_string(),
            model: model.to_string(),
            tag: tag.to_string(),
        };
        r.validate().map_err(|e| bad(&e))?;
        Ok(r)
    }

    /// From the registry API's `<name>` (`library/llama3`, `user/repo`) and a tag, on `host`.
    pub fn from_repository(host: &str, repository: &str, tag: &str) -> Result<ModelRef, NameError> {
        let (namespace, model) = repository.split_once('/').ok_or_else(|| {
            NameError::new(
                "name",
                format!(
                    "repository {:?} must be namespace/model",
                    truncate(repository)
                ),
            )
        })?;
        let r = ModelRef {
            host: host.to_ascii_lowercase(),
            namespace: namespace.into(),
            model: model.into(),
            tag: tag.into(),
        };
        r.validate().map_err(|e| {
            NameError::new(
                "name",
                format!("invalid repository {:?}: {e}", truncate(repository)),
            )
        })?;
        Ok(r)
    }

    fn validate(&self) -> Result<(), String> {
        if !valid_host(&self.host) {
            return Err(format!("bad host {:?}", truncate(&self.host)));
        }
        if !valid_path_component(&self.namespace) {
            return Err(format!("bad namespace {:?}", truncate(&self.namespace)));
        }
        if !valid_path_component(&self.model) {
            return Err(format!("bad model {:?}", truncate(&self.model)));
        }
        if !valid_tag(&self.tag) {
            return Err(format!("bad tag {:?}", truncate(&self.tag)));
        }
        Ok(())
    }

    /// `namespace/model`: the repository in registry API paths.
    pub fn repository(&self) -> String {
        format!("{}/{}", self.namespace, self.model)
    }

    /// The short form `ollama list` shows: host and `library/` dropped when default.
    pub fn short_name(&self) -> String {
        let mut s = String::new();
        if self.host != DEFAULT_HOST {
            s.push_str(&self.host);
            s.push('/');
        }
        if self.host != DEFAULT_HOST || self.namespace != DEFAULT_NAMESPACE {
            s.push_str(&self.namespace);
            s.push('/');
        }
        s.push_str(&self.model);
        s.push(':');
        s.push_str(&self.tag);
        s
    }
}

impl fmt::Display for ModelRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{}:{}",
            self.host, self.namespace, self.model, self.tag
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests() {
        let hex = "a".repeat(64);
        let d = Digest::parse(&format!("sha256:{hex}")).unwrap();
        assert_eq!(d.file_name(), format!("sha256-{hex}"));
        assert_eq!(Digest::from_file_name(&d.file_name()), Some(d));
        for bad in [
            "sha256:",
            "sha256:ABC",
            &format!("sha256:{}", "A".repeat(64)),
            &format!("sha512:{hex}"),
            &format!("sha256:{}/..", "a".repeat(61)),
        ] {
            assert!(Digest::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            Digest::of(b"").hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn model_names() {
        let r = ModelRef::parse("llama3").unwrap();
        assert_eq!(r.to_string(), "registry.ollama.ai/library/llama3:latest");
        assert_eq!(r.short_name(), "llama3:latest");
        assert_eq!(ModelRef::parse("qwen2.5:1.5b").unwrap().tag, "1.5b");
        assert_eq!(ModelRef::parse("phi3:3.8b").unwrap().model, "phi3");
        let u = ModelRef::parse("user/model:tag").unwrap();
        assert_eq!(
            (u.namespace.as_str(), u.short_name().as_str()),
            ("user", "user/model:tag")
        );
        let hf = ModelRef::parse("hf.co/bartowski/llama-3.2-1b-instruct-gguf:Q4_K_M").unwrap();
        assert_eq!(hf.host, "hf.co");
        assert_eq!(
            hf.short_name(),
            "hf.co/bartowski/llama-3.2-1b-instruct-gguf:Q4_K_M"
        );
        let port = ModelRef::parse("http://cache.lan:8080/library/llama3").unwrap();
        assert_eq!(
            (port.host.as_str(), port.tag.as_str()),
            ("cache.lan:8080", "latest")
        );
        for bad in [
            "../etc/passwd",
            "library/..",
            "a/b/c/d",
            "llama3:..",
            "llama3:",
            "x:/etc",
            ".hidden",
            "a//b",
            "%2e%2e/x",
            "/abs",
        ] {
            assert!(ModelRef::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn path_components() {
        for ok in [
            "llama3",
            "qwen2.5",
            "llama-3.2-1b",
            "a__b",
            "a--b",
            "x",
            "Llama-3.2-1B-Instruct-GGUF",
        ] {
            assert!(valid_path_component(ok), "{ok}");
        }
        for bad in [
            "", ".", "..", "a.", ".a", "a..b", "a___b", "a/b", "a b", "-a", "a%2e",
        ] {
            assert!(!valid_path_component(bad), "{bad}");
        }
        assert!(
            valid_tag("8b-instruct-q4_K_M")
                && valid_tag("1.5b")
                && !valid_tag("..")
                && !valid_tag(".x")
        );
    }
}
