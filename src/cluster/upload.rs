//! The lease holder's side: keep the lease alive while the local fill runs, then put the
//! verified blob into the store and release the lease. Large blobs go up as a multipart upload,
//! which S3 makes visible only when completed, so the store never shows a partial object; a
//! blob the store already has is not uploaded again.

use object_store::{ObjectStoreExt, PutPayload, UpdateVersion, WriteMultipart};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;

use super::{lease, Cluster};
use crate::state::State;
use crate::store::fill::Joined;
use crate::store::Digest;

/// Blobs up to this size go up in one PUT; larger ones in parts of this size.
const PART: usize = 16 << 20;

/// Renews the lease of `digest` while this node's fill of it runs; then uploads what it
/// published and releases the lease. A fill that failed releases it at once, so another node
/// need not wait for the TTL.
pub async fn keep_lease(state: Arc<State>, c: Arc<Cluster>, digest: Digest) {
    let renew_every = c.ttl / 3;
    let mut renewed = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if !matches!(
            state.proxy.fills.existing(&digest),
            Some(Joined::Filling(_))
        ) {
            break;
        }
        if renewed.elapsed() < renew_every {
            continue;
        }
        let e_tag = c.e_tag(&digest).flatten();
        let version = UpdateVersion {
            e_tag,
            version: None,
        };
        match c.note(lease::update(&c.store, &digest, c.me, c.ttl, version).await) {
            Ok(e_tag) => {
                c.hold(&digest, e_tag);
                renewed = Instant::now();
            }
            Err(e) => {
                // Lost (taken over after we stalled past the TTL) or store down: the fill
                // goes on; its bytes are verified whoever else fills too.
                tracing::warn!(%digest, "cluster: cannot renew the fill lease: {e}");
            }
        }
    }
    let path = state.layout.blob_path(&digest);
    if path.exists() {
        match upload(&c, &digest, &path).await {
            Ok(true) => tracing::info!(%digest, "cluster: uploaded to the store"),
            Ok(false) => {}
            Err(e) => tracing::warn!(%digest, "cluster: upload failed: {e}"),
        }
    }
    if let Err(e) = c.note(lease::release(&c.store, &digest).await) {
        tracing::warn!(%digest, "cluster: cannot release the fill lease: {e}");
    }
    c.drop_hold(&digest);
}

/// Puts the published (verified) blob at `path` into the store; `false` if it was there.
pub async fn upload(c: &Cluster, digest: &Digest, path: &std::path::Path) -> anyhow::Result<bool> {
    let key = c.store.blob(digest);
    if c.note(c.store.s3.head(&key).await).is_ok() {
        return Ok(false);
    }
    let mut file = tokio::fs::File::open(path).await?;
    let len = file.metadata().await?.len();
    if len <= PART as u64 {
        let mut buf = Vec::with_capacity(len as usize);
        file.read_to_end(&mut buf).await?;
        c.note(c.store.s3.put(&key, PutPayload::from(buf)).await)?;
        return Ok(true);
    }
    let up = c.note(c.store.s3.put_multipart(&key).await)?;
    let mut w = WriteMultipart::new_with_chunk_size(up, PART);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        w.wait_for_capacity(4).await?;
        w.write(&buf[..n]);
    }
    // An error aborts the multipart upload: nothing becomes visible.
    c.note(w.finish().await)?;
    Ok(true)
}
