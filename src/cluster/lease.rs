//! The fill lease: one small JSON object per digest (`leases/sha256-…`) naming the node that
//! fills the blob from upstream and until when. Created with `If-None-Match: *`
//! (`PutMode::Create`), so of several nodes missing the same blob exactly one wins; renewed and
//! taken over with `If-Match` on the ETag the node last saw (`PutMode::Update`), so a takeover
//! of an expired lease also has exactly one winner. Expiry is the holder's wall clock plus
//! `cluster.lease_ttl`: nodes are assumed to keep time (NTP), and the TTL is what absorbs skew.

use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::store::Store;
use crate::store::Digest;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LeaseBody {
    /// The holder's data plane, where others stream the blob from while it fills.
    pub holder: SocketAddr,
    /// Milliseconds since the epoch after which the lease is void.
    pub expires_ms: u64,
}

/// How an attempt to take the lease ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Acquired {
    /// This node holds it; the ETag is what the next renewal must match.
    Mine { e_tag: Option<String> },
    /// Another node holds a live lease.
    Held { holder: SocketAddr },
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn body(me: SocketAddr, ttl: Duration) -> PutPayload {
    let b = LeaseBody {
        holder: me,
        expires_ms: now_ms() + ttl.as_millis() as u64,
    };
    PutPayload::from(serde_json::to_vec(&b).expect("a lease serialises"))
}

/// Takes the lease of `digest` for `me`, or says who has it. A lease of ours (an earlier
/// attempt, a restart) or an expired one is taken by a conditional update.
pub async fn acquire(
    store: &Store,
    digest: &Digest,
    me: SocketAddr,
    ttl: Duration,
) -> object_store::Result<Acquired> {
    let path = store.lease(digest);
    for attempt in 0..8u64 {
        if attempt > 0 {
            // A store whose listing lags its writes can answer the read of a lease that was
            // just refused as existing with "not found"; give it a moment.
            tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
        }
        let opts = PutOptions::from(PutMode::Create);
        match store.s3.put_opts(&path, body(me, ttl), opts).await {
            Ok(r) => return Ok(Acquired::Mine { e_tag: r.e_tag }),
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => {}
            Err(e) => return Err(e),
        }
        let got = match store.s3.get(&path).await {
            Ok(g) => g,
            // Released between our create and our read: try the create again.
            Err(object_store::Error::NotFound { .. }) => continue,
            Err(e) => return Err(e),
        };
        let version = UpdateVersion {
            e_tag: got.meta.e_tag.clone(),
            version: got.meta.version.clone(),
        };
        let bytes = got.bytes().await?;
        // An unreadable lease is treated as expired: whoever wrote it cannot be streamed from.
        let current: Option<LeaseBody> = serde_json::from_slice(&bytes).ok();
        if let Some(l) = &current {
            if l.holder != me && l.expires_ms > now_ms() {
                return Ok(Acquired::Held { holder: l.holder });
            }
        }
        match update(store, digest, me, ttl, version).await {
            Ok(e_tag) => return Ok(Acquired::Mine { e_tag }),
            // Someone else renewed or took it over first: read again.
            Err(object_store::Error::Precondition { .. })
            | Err(object_store::Error::NotFound { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(object_store::Error::Generic {
        store: "cluster",
        source: format!("lease of {digest} kept changing under us").into(),
    })
}

/// Renews (or takes over) the lease if it is still at `version`; the new ETag on success.
pub async fn update(
    store: &Store,
    digest: &Digest,
    me: SocketAddr,
    ttl: Duration,
    version: UpdateVersion,
) -> object_store::Result<Option<String>> {
    let opts = PutOptions::from(PutMode::Update(version));
    let r = store
        .s3
        .put_opts(&store.lease(digest), body(me, ttl), opts)
        .await?;
    Ok(r.e_tag)
}

/// Gives the lease up (the blob is in the store, or the fill failed).
pub async fn release(store: &Store, digest: &Digest) -> object_store::Result<()> {
    match store.s3.delete(&store.lease(digest)).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}
