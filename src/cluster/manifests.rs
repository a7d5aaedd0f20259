//! Manifests in the shared tier, so that a model one node pulled is pulled through another
//! with no request upstream at all. The object is the manifest's exact bytes (its bytes are its
//! identity); beside them, as object metadata, go when upstream last confirmed them
//! (`x-amz-meta-confirmed-ms`) and which client versions upstream answered 200 for those bytes
//! (`x-amz-meta-versions`, the version gate of src/proxy/gate.rs shared across the cluster).
//!
//! A node with no fresh copy of its own takes the store's when it is younger than
//! `upstream.manifest_ttl` and upstream has passed the asking client's version; otherwise it
//! asks upstream as a standalone node does, and publishes what upstream answered. Every
//! confirmation by upstream is published again, which moves the confirmation time: that time is
//! also what `prune --cluster --older-than` reads as "last used in the cluster".

use object_store::{
    Attribute, AttributeValue, Attributes, ObjectStore, ObjectStoreExt, PutOptions, PutPayload,
};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::Cluster;

/// How long a manifest request waits for the store before going upstream as if it had none.
const STORE_WAIT: Duration = Duration::from_secs(5);
const CONFIRMED: &str = "confirmed-ms";
const VERSIONS: &str = "versions";
/// The version key of clients without an `ollama/<version>` token (src/proxy/gate.rs).
const NO_VERSION: &str = "-";

/// A manifest as the store keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct SharedManifest {
    pub bytes: Vec<u8>,
    /// When upstream last answered these bytes.
    pub confirmed: SystemTime,
    /// The client versions upstream answered 200 for these bytes (`None`: a non-Ollama client).
    pub versions: Vec<Option<String>>,
}

/// Where a manifest lives under `PREFIX/manifests/`: a tag by its cache path
/// (`host/namespace/model/tag`), a manifest asked for by digest under `@digests/` (no host
/// name starts with `@`).
#[derive(Debug, Clone)]
pub enum ManifestKey {
    Tag(String),
    Digest(String),
}

impl ManifestKey {
    fn rel(&self) -> String {
        match self {
            ManifestKey::Tag(t) => t.clone(),
            ManifestKey::Digest(d) => format!("@digests/{d}"),
        }
    }
}

fn encode_versions(v: &[Option<String>]) -> String {
    let ok = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"./+-_~".contains(&b))
    };
    let mut out: Vec<&str> = v
        .iter()
        .filter_map(|v| match v {
            None => Some(NO_VERSION),
            // A version that would not survive a header is left out: that client is checked
            // with upstream once more, which never skips the gate.
            Some(s) if ok(s) => Some(s.as_str()),
            Some(_) => None,
        })
        .collect();
    out.sort();
    out.dedup();
    out.join(",")
}

fn decode_versions(s: &str) -> Vec<Option<String>> {
    s.split(',')
        .filter(|t| !t.is_empty())
        .map(|t| (t != NO_VERSION).then(|| t.to_string()))
        .collect()
}

fn ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The store's copy, if it has one and answers in time. A store that fails is recorded as
/// unreachable (the caller then asks upstream).
pub async fn fetch(c: &Cluster, key: &ManifestKey) -> Option<SharedManifest> {
    if !c.reachable() {
        return None;
    }
    let path = c.store.manifest(&key.rel());
    let got = tokio::time::timeout(STORE_WAIT, async {
        let g = c.note(c.store.s3.get(&path).await)?;
        let attrs = g.attributes.clone();
        let bytes = g.bytes().await?;
        object_store::Result::Ok((attrs, bytes))
    })
    .await;
    let (attrs, bytes) = match got {
        Ok(Ok(x)) => x,
        Ok(Err(object_store::Error::NotFound { .. })) => return None,
        Ok(Err(e)) => {
            tracing::debug!(%path, "cluster store: manifest not read: {e}");
            return None;
        }
        Err(_) => {
            tracing::warn!(%path, "cluster store: no answer in {STORE_WAIT:?}; asking upstream");
            return None;
        }
    };
    let meta = |k: &'static str| {
        attrs
            .get(&Attribute::Metadata(k.into()))
            .map(|v| v.as_ref().to_string())
    };
    // Without its confirmation time an object is not one of ours: never served.
    let confirmed = meta(CONFIRMED)?.parse::<u64>().ok()?;
    Some(SharedManifest {
        bytes: bytes.to_vec(),
        confirmed: UNIX_EPOCH + Duration::from_millis(confirmed),
        versions: decode_versions(&meta(VERSIONS).unwrap_or_default()),
    })
}

/// Puts upstream's latest answer into the store. Best effort: a store that fails only costs the
/// other nodes one manifest request upstream.
pub async fn publish(c: &Cluster, key: &ManifestKey, m: &SharedManifest) {
    let mut attributes = Attributes::new();
    attributes.insert(
        Attribute::Metadata(CONFIRMED.into()),
        AttributeValue::from(ms(m.confirmed).to_string()),
    );
    attributes.insert(
        Attribute::Metadata(VERSIONS.into()),
        AttributeValue::from(encode_versions(&m.versions)),
    );
    let opts = PutOptions {
        attributes,
        ..Default::default()
    };
    let path = c.store.manifest(&key.rel());
    let put = c
        .store
        .s3
        .put_opts(&path, PutPayload::from(m.bytes.clone()), opts);
    match tokio::time::timeout(STORE_WAIT, put).await {
        Ok(r) => {
            if let Err(e) = c.note(r) {
                tracing::warn!(%path, "cluster store: manifest not published: {e}");
            }
        }
        Err(_) => tracing::warn!(%path, "cluster store: manifest not published in {STORE_WAIT:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_round_trip_and_odd_ones_are_left_out() {
        let v = vec![
            Some("ollama/0.5.4".to_string()),
            None,
            Some("ollama/0.34.2".to_string()),
            Some("ollama/x,y".to_string()),
            Some("ollama/0.5.4".to_string()),
        ];
        let s = encode_versions(&v);
        assert_eq!(s, "-,ollama/0.34.2,ollama/0.5.4");
        assert_eq!(
            decode_versions(&s),
            vec![
                None,
                Some("ollama/0.34.2".to_string()),
                Some("ollama/0.5.4".to_string())
            ]
        );
        assert!(decode_versions("").is_empty());
    }
}
