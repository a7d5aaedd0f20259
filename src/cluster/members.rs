//! Which configured nodes are alive, without a protocol of our own: each node keeps a
//! heartbeat object `PREFIX/nodes/ADDR` in the store (`{"node":…,"expires_ms":…}`, rewritten
//! every `lease_ttl / 3` with an expiry of one `lease_ttl` ahead) and reads the other
//! configured nodes' heartbeats on the same beat. A node whose heartbeat is missing or past its
//! expiry is not healthy; a node stopped cleanly deletes its own, so it drops out at once.
//!
//! The outcome is handed to whoever asked (the DNS answers, via the daemon) as a list, this
//! node first and then the healthy others in configured order. This node always counts as
//! healthy: it is the one answering. With the store unreachable the last heartbeats read stay
//! in force until their own expiry, so the others drop out after one TTL, as when they die.

use object_store::{ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use super::lease::now_ms;
use super::Cluster;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Heartbeat {
    pub node: SocketAddr,
    /// Milliseconds since the epoch after which the node counts as gone.
    pub expires_ms: u64,
}

/// Writes this node's heartbeat.
pub async fn beat(c: &Cluster) -> object_store::Result<()> {
    let hb = Heartbeat {
        node: c.me,
        expires_ms: now_ms() + c.ttl.as_millis() as u64,
    };
    let body = PutPayload::from(serde_json::to_vec(&hb).expect("a heartbeat serialises"));
    c.note(c.store.s3.put(&c.store.node(&c.me), body).await)
        .map(|_| ())
}

/// Deletes this node's heartbeat (a clean stop), so the others stop answering with it now.
pub async fn leave(c: &Cluster) {
    let _ = c.store.s3.delete(&c.store.node(&c.me)).await;
}

/// The expiry of `node`'s heartbeat: `Ok(None)` when it has none (never started, stopped
/// cleanly), `Err` when the store did not answer.
async fn read(c: &Cluster, node: &SocketAddr) -> object_store::Result<Option<u64>> {
    match c.note(c.store.s3.get(&c.store.node(node)).await) {
        Ok(g) => {
            let bytes = g.bytes().await?;
            Ok(serde_json::from_slice::<Heartbeat>(&bytes)
                .ok()
                .filter(|h| h.node == *node)
                .map(|h| h.expires_ms))
        }
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// This node first, then the others whose heartbeat has not expired, in configured order.
pub fn healthy(
    me: SocketAddr,
    nodes: &[SocketAddr],
    expiry: &HashMap<SocketAddr, u64>,
) -> Vec<SocketAddr> {
    let now = now_ms();
    let mut out = vec![me];
    out.extend(
        nodes
            .iter()
            .filter(|n| **n != me && expiry.get(n).is_some_and(|e| *e > now)),
    );
    out
}

/// Beats and reads until `cancel`, calling `on_change` with the healthy list (this node first)
/// at start and whenever it changes.
pub async fn run(
    c: Arc<Cluster>,
    on_change: impl Fn(&[SocketAddr]) + Send + 'static,
    cancel: CancellationToken,
) {
    let every = c.ttl / 3;
    let mut expiry: HashMap<SocketAddr, u64> = HashMap::new();
    let mut last: Option<Vec<SocketAddr>> = None;
    loop {
        if let Err(e) = beat(&c).await {
            tracing::debug!("cluster: heartbeat not written: {e}");
        }
        for n in c.nodes.iter().filter(|n| **n != c.me) {
            match read(&c, n).await {
                Ok(Some(e)) => {
                    expiry.insert(*n, e);
                }
                Ok(None) => {
                    expiry.remove(n);
                }
                // Unreachable store: keep what we last read; it expires by itself.
                Err(_) => {}
            }
        }
        let now = healthy(c.me, &c.nodes, &expiry);
        if last.as_ref() != Some(&now) {
            tracing::info!(nodes = ?now, "cluster: healthy nodes");
            c.set_healthy(now.clone());
            on_change(&now);
            last = Some(now);
        }
        tokio::select! {
            // Shutdown: stop beating (the daemon deletes the heartbeat after draining).
            _ = cancel.cancelled() => return,
            // The next beat.
            _ = tokio::time::sleep(every.max(Duration::from_millis(500))) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn healthy_is_me_first_then_live_others_in_order() {
        let a: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:80".parse().unwrap();
        let d: SocketAddr = "10.0.0.3:80".parse().unwrap();
        let nodes = [a, b, d];
        let mut exp = HashMap::new();
        exp.insert(a, now_ms() + 10_000);
        exp.insert(d, now_ms() + 10_000);
        exp.insert(b, now_ms().saturating_sub(1));
        assert_eq!(healthy(d, &nodes, &exp), vec![d, a]);
        assert_eq!(healthy(b, &nodes, &HashMap::new()), vec![b]);
    }
}
