//! The fill source in cluster mode. For every slice the fill engine asks for, in this order:
//! the store (a ranged GET of the whole, verified object), else the live lease holder's data
//! plane, else upstream once this node holds the lease (winning it, or taking over an expired
//! one). Deciding per slice is what lets a fill survive its holder: a holder killed mid-fill
//! stops renewing, its lease expires, and the next slice attempt of some other node takes it
//! over and continues from upstream; slices already landed stay.

use futures_util::future::BoxFuture;
use futures_util::{StreamExt, TryStreamExt};
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt};
use std::sync::Arc;

use super::lease::{self, Acquired};
use super::Cluster;
use crate::proxy::fetch::RegistryFetcher;
use crate::state::State;
use crate::store::fill::{ByteStream, FetchError, Fetcher};
use crate::store::Digest;

pub struct ClusterFetcher {
    pub state: Arc<State>,
    pub cluster: Arc<Cluster>,
    pub upstream: Arc<RegistryFetcher>,
    pub registry: String,
    pub repository: String,
    pub digest: Digest,
    pub size: u64,
}

fn store_err(e: object_store::Error) -> FetchError {
    FetchError::new("store", e.to_string())
}

impl Fetcher for ClusterFetcher {
    fn fetch(&self, start: u64, end: u64) -> BoxFuture<'static, Result<ByteStream, FetchError>> {
        let c = self.cluster.clone();
        let state = self.state.clone();
        let upstream = self.upstream.clone();
        let (registry, repository, digest, size) = (
            self.registry.clone(),
            self.repository.clone(),
            self.digest.clone(),
            self.size,
        );
        let hops = crate::proxy::upstream::hop_value();
        Box::pin(async move {
            // Holding the lease already: upstream, as a standalone node would. A store that
            // failed its last request is not asked again slice by slice: the node fills alone
            // until the heartbeat (src/cluster/members.rs) finds the store answering again.
            if c.holds(&digest) || !c.reachable() {
                return upstream.fetch(start, end).await;
            }
            let opts = GetOptions {
                range: Some(GetRange::Bounded(start..end + 1)),
                ..Default::default()
            };
            match c.note(c.store.s3.get_opts(&c.store.blob(&digest), opts).await) {
                Ok(got) if got.meta.size == size => {
                    return Ok(got.into_stream().map_err(store_err).boxed());
                }
                Ok(got) => {
                    return Err(FetchError::new(
                        "store",
                        format!(
                            "store object of {digest} is {} bytes, not {size}",
                            got.meta.size
                        ),
                    ))
                }
                Err(object_store::Error::NotFound { .. }) => {}
                // Store lost: fill alone (docs/cluster.md).
                Err(e) => {
                    tracing::warn!(%digest, "cluster store: {e}; filling from upstream");
                    return upstream.fetch(start, end).await;
                }
            }
            let mut got = c.note(lease::acquire(&c.store, &digest, c.me, c.ttl).await);
            // A store that answers but whose lease will not settle: ask again rather than
            // fill from upstream beside the holder (that would cost upstream twice).
            for _ in 0..10 {
                if got.is_ok() || !c.reachable() {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                got = c.note(lease::acquire(&c.store, &digest, c.me, c.ttl).await);
            }
            match got {
                Ok(Acquired::Mine { e_tag }) => {
                    // The previous holder uploads before it releases: a lease freed between
                    // our store read and our create may mean the blob is there now.
                    let key = c.store.blob(&digest);
                    if c.note(c.store.s3.head(&key).await).is_ok() {
                        let _ = lease::release(&c.store, &digest).await;
                        let opts = GetOptions {
                            range: Some(GetRange::Bounded(start..end + 1)),
                            ..Default::default()
                        };
                        let got = c.store.s3.get_opts(&key, opts).await.map_err(store_err)?;
                        return Ok(got.into_stream().map_err(store_err).boxed());
                    }
                    if c.hold(&digest, e_tag) {
                        tracing::info!(%digest, "cluster: holding the fill lease");
                        tokio::spawn(super::upload::keep_lease(state, c.clone(), digest.clone()));
                    }
                    upstream.fetch(start, end).await
                }
                Ok(Acquired::Held { holder }) => {
                    super::peer::fetch(
                        holder,
                        &registry,
                        &repository,
                        &digest,
                        size,
                        start,
                        end,
                        hops,
                    )
                    .await
                }
                Err(e) => {
                    tracing::warn!(%digest, "cluster lease: {e}; filling from upstream");
                    upstream.fetch(start, end).await
                }
            }
        })
    }
}
