//! Cluster mode: several lancached nodes over one S3-compatible object store, one upstream
//! fill per digest for the whole cluster (docs/cluster.md).
//!
//! The store is the cluster's copy of every verified blob; each node's cache directory stays
//! its hot tier. A local miss becomes an ordinary fill (src/store/fill.rs) whose [`Fetcher`]
//! ([`fetcher::ClusterFetcher`]) picks, slice by slice, the cheapest source that is there: the
//! store, else the node holding the digest's lease (its ordinary HTTP data plane, as a child
//! cache asks its parent), else upstream once this node holds the lease. A published blob is
//! uploaded (multipart when large, so never a partial object) and the lease released.
//!
//! Store lost: the node fills alone from upstream (and keeps serving local hits); `status`,
//! `/health` and `/metrics` say the store is unreachable.
//!
//! [`Fetcher`]: crate::store::fill::Fetcher

pub mod fetcher;
pub mod lease;
pub mod manifests;
pub mod members;
pub mod peer;
pub mod prune;
pub mod store;
pub mod upload;

use anyhow::{anyhow, Result};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::config::ClusterConfig;
use crate::store::Digest;

pub struct Cluster {
    pub store: store::Store,
    /// This node's data-plane address, as written into leases.
    pub me: SocketAddr,
    pub nodes: Vec<SocketAddr>,
    pub ttl: Duration,
    /// Leases this node holds, with the ETag the next renewal must match.
    held: Mutex<HashMap<Digest, Option<String>>>,
    /// Whether the last store request got an answer.
    reachable: AtomicBool,
    /// The nodes whose heartbeat is live, this one first (src/cluster/members.rs).
    healthy: Mutex<Vec<SocketAddr>>,
}

impl Cluster {
    /// Builds the store client and finds which configured node is this one: the one an HTTP
    /// listener of ours is bound to, else the first whose address is local here (a socket
    /// can bind to it). `None` when `[cluster]` is absent.
    pub fn from_config(cfg: &ClusterConfig, http: &[SocketAddr]) -> Result<Option<Cluster>> {
        if !cfg.enabled() {
            return Ok(None);
        }
        let nodes = cfg.node_addrs().map_err(|e| anyhow!(e))?;
        let me = *nodes
            .iter()
            .find(|a| http.contains(a))
            .or_else(|| {
                nodes
                    .iter()
                    .find(|a| std::net::UdpSocket::bind(SocketAddr::new(a.ip(), 0)).is_ok())
            })
            .ok_or_else(|| {
                anyhow!(
                    "cluster.nodes: none of {:?} is an address of this host",
                    cfg.nodes
                )
            })?;
        Ok(Some(Cluster {
            store: store::Store::new(cfg)?,
            me,
            nodes,
            ttl: cfg.lease_ttl.0,
            held: Mutex::new(HashMap::new()),
            reachable: AtomicBool::new(true),
            healthy: Mutex::new(vec![me]),
        }))
    }

    pub fn reachable(&self) -> bool {
        self.reachable.load(Ordering::Relaxed)
    }

    /// Records how a store request went, and passes its result on.
    pub fn note<T>(&self, r: object_store::Result<T>) -> object_store::Result<T> {
        let up = !matches!(
            &r,
            Err(e) if !matches!(
                e,
                object_store::Error::NotFound { .. }
                    | object_store::Error::AlreadyExists { .. }
                    | object_store::Error::Precondition { .. }
            )
        );
        if up != self.reachable.swap(up, Ordering::Relaxed) {
            if up {
                tracing::info!("cluster store reachable again");
            } else {
                tracing::warn!("cluster store unreachable: filling alone from upstream");
            }
        }
        r
    }

    /// The nodes seen alive at the last heartbeat round, this one first.
    pub fn healthy(&self) -> Vec<SocketAddr> {
        self.healthy.lock().unwrap().clone()
    }

    pub(crate) fn set_healthy(&self, nodes: Vec<SocketAddr>) {
        *self.healthy.lock().unwrap() = nodes;
    }

    /// Leases this node holds now.
    pub fn leases_held(&self) -> Vec<Digest> {
        self.held.lock().unwrap().keys().cloned().collect()
    }

    pub(crate) fn hold(&self, d: &Digest, e_tag: Option<String>) -> bool {
        self.held.lock().unwrap().insert(d.clone(), e_tag).is_none()
    }

    pub(crate) fn holds(&self, d: &Digest) -> bool {
        self.held.lock().unwrap().contains_key(d)
    }

    pub(crate) fn e_tag(&self, d: &Digest) -> Option<Option<String>> {
        self.held.lock().unwrap().get(d).cloned()
    }

    pub(crate) fn drop_hold(&self, d: &Digest) {
        self.held.lock().unwrap().remove(d);
    }
}
