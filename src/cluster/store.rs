//! The shared tier: an S3-compatible bucket reached through the `object_store` crate, and the
//! names of what lives there (`PREFIX/blobs/sha256-…`, `PREFIX/manifests/…`,
//! `PREFIX/leases/sha256-…`, `PREFIX/nodes/ADDR`).
//!
//! Credentials are read once, from `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` or from
//! `cluster.credentials_file`, and never printed: [`Credentials`]' `Debug` redacts the secret,
//! and no error message here quotes the file's contents.

use anyhow::{anyhow, bail, Context, Result};
use object_store::aws::{AmazonS3, AmazonS3Builder, S3ConditionalPut};
use object_store::path::Path as ObjPath;
use object_store::RetryConfig;
use std::sync::Arc;

use crate::config::ClusterConfig;
use crate::store::Digest;

/// An access key pair. `Debug` shows the key id only.
#[derive(Clone)]
pub struct Credentials {
    pub access_key_id: String,
    secret: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .finish()
    }
}

impl Credentials {
    /// The environment first (the AWS convention), else the credentials file.
    pub fn load(cfg: &ClusterConfig) -> Result<Credentials> {
        if let (Ok(id), Ok(secret)) = (
            std::env::var("AWS_ACCESS_KEY_ID"),
            std::env::var("AWS_SECRET_ACCESS_KEY"),
        ) {
            if !id.is_empty() && !secret.is_empty() {
                return Ok(Credentials {
                    access_key_id: id,
                    secret,
                });
            }
        }
        if cfg.credentials_file.as_os_str().is_empty() {
            bail!("cluster: no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or cluster.credentials_file");
        }
        let path = &cfg.credentials_file;
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read cluster.credentials_file {}", path.display()))?;
        Credentials::parse(&text)
            .map_err(|e| anyhow!("cluster.credentials_file {}: {e}", path.display()))
    }

    /// The `~/.aws/credentials` shape: `aws_access_key_id = …` and `aws_secret_access_key = …`
    /// lines (section headers and comments are ignored; the first pair found wins).
    pub fn parse(text: &str) -> Result<Credentials> {
        let (mut id, mut secret) = (None, None);
        for line in text.lines() {
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            let v = v.trim().to_string();
            match k.trim() {
                "aws_access_key_id" if id.is_none() => id = Some(v),
                "aws_secret_access_key" if secret.is_none() => secret = Some(v),
                _ => {}
            }
        }
        match (id, secret) {
            (Some(access_key_id), Some(secret))
                if !access_key_id.is_empty() && !secret.is_empty() =>
            {
                Ok(Credentials {
                    access_key_id,
                    secret,
                })
            }
            _ => bail!("needs both aws_access_key_id and aws_secret_access_key"),
        }
    }
}

/// The bucket and the prefix every key lives under.
pub struct Store {
    pub s3: Arc<AmazonS3>,
    prefix: String,
}

impl Store {
    pub fn new(cfg: &ClusterConfig) -> Result<Store> {
        let (bucket, prefix) = cfg.bucket_prefix().map_err(|e| anyhow!(e))?;
        let creds = Credentials::load(cfg)?;
        let mut b = AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_region(cfg.region.clone())
            .with_access_key_id(creds.access_key_id.clone())
            .with_secret_access_key(creds.secret.clone())
            // If-Match / If-None-Match on PUT: the lease's election (docs/cluster.md).
            .with_conditional_put(S3ConditionalPut::ETagMatch)
            // A LAN store either answers at once or is sick: object_store's defaults (10
            // retries within 3 minutes) would make every slice of a fill wait seconds on a
            // store that answers 500, where filling alone is the better answer.
            .with_retry(RetryConfig {
                max_retries: 2,
                retry_timeout: std::time::Duration::from_secs(5),
                ..Default::default()
            });
        if !cfg.endpoint.is_empty() {
            b = b
                .with_endpoint(cfg.endpoint.clone())
                .with_allow_http(cfg.endpoint.starts_with("http://"))
                .with_virtual_hosted_style_request(false);
        }
        let s3 = b.build().context("cluster: cannot build the S3 client")?;
        Ok(Store {
            s3: Arc::new(s3),
            prefix,
        })
    }

    fn key(&self, rest: &str) -> ObjPath {
        if self.prefix.is_empty() {
            ObjPath::from(rest)
        } else {
            ObjPath::from(format!("{}/{rest}", self.prefix))
        }
    }

    /// A whole, verified blob.
    pub fn blob(&self, d: &Digest) -> ObjPath {
        self.key(&format!("blobs/{}", d.file_name()))
    }

    /// The lease that elects the one node filling `d` from upstream.
    pub fn lease(&self, d: &Digest) -> ObjPath {
        self.key(&format!("leases/{}", d.file_name()))
    }

    pub fn leases_prefix(&self) -> ObjPath {
        self.key("leases")
    }

    /// A node's heartbeat (src/cluster/members.rs).
    pub fn node(&self, addr: &std::net::SocketAddr) -> ObjPath {
        self.key(&format!("nodes/{addr}"))
    }

    pub fn blobs_prefix(&self) -> ObjPath {
        self.key("blobs")
    }

    /// A manifest, by its path under the cache's `manifests/`.
    pub fn manifest(&self, rel: &str) -> ObjPath {
        self.key(&format!("manifests/{rel}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_file_and_redaction() {
        let c = Credentials::parse(
            "[default]\naws_access_key_id = AKIDEXAMPLE\naws_secret_access_key = s3cr3t\n",
        )
        .unwrap();
        assert_eq!(c.access_key_id, "AKIDEXAMPLE");
        let shown = format!("{c:?}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
        let e = Credentials::parse("aws_access_key_id = x\n").unwrap_err();
        assert!(e.to_string().contains("aws_secret_access_key"), "{e}");
    }
}
