//! `[cluster]`: several lancached nodes over one S3-compatible object store (docs/cluster.md).
//!
//! Absent (no `store`), the daemon stands alone exactly as before. The section names where the
//! shared tier lives and which addresses are nodes; it never holds a secret: credentials come
//! from the environment or from `credentials_file`, read when the store client is built.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

use super::units::HumanDuration;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// `s3://BUCKET/PREFIX`; empty = no cluster.
    pub store: String,
    /// `http://HOST:PORT` of an S3-compatible endpoint; empty for AWS.
    pub endpoint: String,
    pub region: String,
    /// Every node's data-plane address, `ADDR` (port 80) or `ADDR:PORT`; this node is the one
    /// whose address is local.
    pub nodes: Vec<String>,
    /// How long a fill lease lives without renewal.
    pub lease_ttl: HumanDuration,
    /// An AWS-style credentials file (`aws_access_key_id = ...`); empty = the environment.
    pub credentials_file: PathBuf,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            store: String::new(),
            endpoint: String::new(),
            region: "us-east-1".into(),
            nodes: Vec::new(),
            lease_ttl: HumanDuration::secs(30),
            credentials_file: PathBuf::new(),
        }
    }
}

impl ClusterConfig {
    pub fn enabled(&self) -> bool {
        !self.store.is_empty()
    }

    /// `s3://BUCKET/PREFIX` -> (bucket, prefix without slashes at either end).
    pub fn bucket_prefix(&self) -> Result<(String, String), String> {
        let rest = self.store.strip_prefix("s3://").ok_or_else(|| {
            format!(
                "`cluster.store` {:?} must look like \"s3://BUCKET/PREFIX\"",
                self.store
            )
        })?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(format!("`cluster.store` {:?} names no bucket", self.store));
        }
        Ok((bucket.to_string(), prefix.trim_matches('/').to_string()))
    }

    /// The configured nodes as socket addresses.
    pub fn node_addrs(&self) -> Result<Vec<std::net::SocketAddr>, String> {
        self.nodes
            .iter()
            .map(|n| {
                n.parse::<std::net::SocketAddr>()
                    .or_else(|_| {
                        n.trim_matches(['[', ']'])
                            .parse::<std::net::IpAddr>()
                            .map(|ip| std::net::SocketAddr::new(ip, 80))
                    })
                    .map_err(|_| {
                        format!(
                            "`cluster.nodes` entry {n:?} is not ADDR or ADDR:PORT (an IP address)"
                        )
                    })
            })
            .collect()
    }

    /// Rules that span the section's keys.
    pub fn check(&self) -> Result<(), String> {
        if !self.enabled() {
            return Ok(());
        }
        self.bucket_prefix()?;
        let e = &self.endpoint;
        if !(e.is_empty() || e.starts_with("http://") || e.starts_with("https://")) {
            return Err(format!(
                "`cluster.endpoint` {:?} must be an http:// or https:// URL",
                self.endpoint
            ));
        }
        if self.node_addrs()?.is_empty() {
            return Err("`cluster.nodes` must list every node's address, this one's too".into());
        }
        if self.lease_ttl.0 < std::time::Duration::from_secs(2) {
            return Err("`cluster.lease_ttl` must be at least 2s".into());
        }
        Ok(())
    }
}
