//! Ollama manifests (Docker schema 2 / OCI image manifest JSON): the config blob and the layers,
//! each with digest and size. A manifest's bytes are its identity (the model ID is their sha256),
//! so this parses for the references only and never re-serialises.

use serde::Deserialize;

use super::names::Digest;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub config: Layer,
    pub layers: Vec<Layer>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    config: RawLayer,
    #[serde(default)]
    layers: Vec<RawLayer>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawLayer {
    digest: String,
    size: u64,
    #[serde(default)]
    media_type: String,
}

impl Manifest {
    pub fn parse(bytes: &[u8]) -> Result<Manifest, String> {
        let raw: RawManifest =
            serde_json::from_slice(bytes).map_err(|e| format!("not a manifest: {e}"))?;
        let layer = |l: RawLayer| -> Result<Layer, String> {
            Ok(Layer {
                digest: Digest::parse(&l.digest).map_err(|e| e.to_string())?,
                size: l.size,
                media_type: l.media_type,
            })
        };
        Ok(Manifest {
            config: layer(raw.config)?,
            layers: raw
                .layers
                .into_iter()
                .map(layer)
                .collect::<Result<_, _>>()?,
        })
    }

    /// Config first, then layers: every blob a client needs, in the order Ollama fetches them.
    pub fn blobs(&self) -> impl Iterator<Item = &Layer> {
        std::iter::once(&self.config).chain(self.layers.iter())
    }

    /// Total bytes of all blobs.
    pub fn total_size(&self) -> u64 {
        self.blobs().map(|l| l.size).sum()
    }

    /// "Complete": every referenced blob is published in the cache with its declared size, so
    /// the model can be served without upstream.
    pub fn is_complete(&self, layout: &super::Layout) -> bool {
        self.blobs().all(|l| {
            std::fs::symlink_metadata(layout.blob_path(&l.digest))
                .is_ok_and(|m| m.is_file() && m.len() == l.size)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ollama_manifest() {
        let a = "a".repeat(64);
        let b = "b".repeat(64);
        let json = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"sha256:{a}","size":485}},"layers":[{{"mediaType":"application/vnd.ollama.image.model","digest":"sha256:{b}","size":1000}}]}}"#
        );
        let m = Manifest::parse(json.as_bytes()).unwrap();
        assert_eq!(m.total_size(), 1485);
        assert_eq!(m.blobs().count(), 2);
        assert!(Manifest::parse(br#"{"config":{"digest":"sha256:../x","size":1}}"#).is_err());

        let tmp = tempfile::tempdir().unwrap();
        let layout = crate::store::Layout::new(tmp.path());
        layout.create().unwrap();
        assert!(!m.is_complete(&layout));
        std::fs::write(layout.blob_path(&m.config.digest), vec![0u8; 485]).unwrap();
        std::fs::write(layout.blob_path(&m.layers[0].digest), vec![0u8; 999]).unwrap();
        assert!(
            !m.is_complete(&layout),
            "a blob of the wrong size is not complete"
        );
        std::fs::write(layout.blob_path(&m.layers[0].digest), vec![0u8; 1000]).unwrap();
        assert!(m.is_complete(&layout));
    }
}
