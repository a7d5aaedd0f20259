//! Arbitrary strings into the name checks that stand between a client-supplied model name or
//! digest and a path in the cache directory. Whatever they accept must be safe to join onto a
//! path: no component holds `/`, `\`, NUL, is `..` or starts with `.` (hosts, namespaces and
//! models hold no `..` at all; a tag may, as in `v1..2`, which the OCI grammar allows and which
//! is one plain name), a manifest path is always exactly
//! `<root>/manifests/<host>/<ns>/<model>/<tag>`, and a digest is always `sha256:` and 64
//! lowercase hex digits. Accepted names also print back to a string that parses to them.

#![no_main]

use lancached::store::names::{valid_host, valid_path_component, valid_tag};
use lancached::store::{Digest, Layout, ModelRef};
use libfuzzer_sys::fuzz_target;
use std::path::{Component, Path};

/// What makes a string safe as one path component: not empty, no separator or NUL, and not
/// `.`/`..` nor hidden (no leading dot). Inner `..` (tag `v1..2`) is harmless in one component
/// and allowed by the OCI tag grammar, so only `strict` components must not contain it at all.
fn safe_component(what: &str, c: &str, strict: bool) {
    assert!(!c.is_empty(), "{what} accepted empty");
    for bad in ["/", "\\", "\0"] {
        assert!(!c.contains(bad), "{what} {c:?} contains {bad:?}");
    }
    assert!(!c.starts_with('.'), "{what} {c:?} starts with a dot");
    assert!(c != "." && c != "..", "{what} {c:?} is a dot component");
    if strict {
        assert!(!c.contains(".."), "{what} {c:?} contains \"..\"");
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };

    if let Ok(m) = ModelRef::parse(s) {
        safe_component("host", &m.host, true);
        safe_component("namespace", &m.namespace, true);
        safe_component("model", &m.model, true);
        safe_component("tag", &m.tag, false);
        let path = Layout::new("/cache").manifest_path(&m);
        let below = path
            .strip_prefix("/cache/manifests/")
            .unwrap_or_else(|_| panic!("{path:?} escapes /cache/manifests"));
        let comps: Vec<_> = below.components().collect();
        assert_eq!(comps.len(), 4, "{path:?} is not host/ns/model/tag");
        assert!(
            comps.iter().all(|c| matches!(c, Component::Normal(_))),
            "{path:?} has a non-plain component"
        );
        assert_eq!(
            below,
            Path::new(&m.host).join(&m.namespace).join(&m.model).join(&m.tag)
        );
        let again = ModelRef::parse(&m.to_string())
            .unwrap_or_else(|e| panic!("{m} does not parse back: {e}"));
        assert_eq!(again, m, "{s:?} -> {m} does not round-trip");
    }

    if let Ok(d) = Digest::parse(s) {
        let hex = d.as_str().strip_prefix("sha256:").expect("sha256: prefix");
        assert_eq!(hex.len(), 64, "{d} is not 64 hex digits");
        assert!(
            hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "{d} is not lowercase hex"
        );
        assert_eq!(d.as_str(), s);
        assert_eq!(d.hex(), hex);
        assert_eq!(d.file_name(), format!("sha256-{hex}"));
        assert_eq!(Digest::from_file_name(&d.file_name()), Some(d.clone()));
        assert_eq!(
            Layout::new("/cache").blob_path(&d),
            Path::new("/cache/blobs").join(d.file_name())
        );
    }

    if valid_tag(s) {
        safe_component("tag", s, false);
        assert!(s.len() <= 128);
    }
    if valid_path_component(s) {
        safe_component("path component", s, true);
        assert!(s.len() <= 128);
    }
    if valid_host(s) {
        safe_component("host", s, true);
    }
});
