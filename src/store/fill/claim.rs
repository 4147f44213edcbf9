//! A fill about to ask upstream, with a bucket: claimed fleet-wide first
//! (`store::bucket::lease`). The winner fetches and releases the lease once the blob is
//! uploaded (or the fill fails); a loser waits for the winner's object and fills from it,
//! and when the lease expires with no object, breaks it and claims once more.

use std::sync::Arc;

use super::inflight::every_client_left;
use super::lead::from_bucket;
use super::Fill;
use crate::error::Error;
use crate::oci::digest::Digest;
use crate::store::bucket::lease::now_secs;
use crate::store::bucket::{Bucket, Claimed};
use crate::store::Store;

/// What the fill does after its claim.
pub(super) enum Turn {
    /// Fetch from the source, holding the fleet's lease when it was won.
    Fetch(Option<LeaseHeld>),
    /// The winner's object was read from the bucket and published.
    Published,
}

/// A won lease, released when dropped (after the upload, or when the fill fails).
pub(crate) struct LeaseHeld {
    bucket: Arc<Bucket>,
    digest: Digest,
}

impl Drop for LeaseHeld {
    fn drop(&mut self) {
        let (bucket, digest) = (self.bucket.clone(), self.digest.clone());
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { bucket.release(&digest).await });
        }
    }
}

pub(super) async fn claim_or_wait(store: &Arc<Store>, fill: &Arc<Fill>) -> Result<Turn, Error> {
    let Some(bucket) = store.bucket.clone().filter(|_| fill.claims) else { return Ok(Turn::Fetch(None)) };
    for _ in 0..2 {
        let expires_at = match bucket.claim(&fill.digest).await {
            Claimed::Won => return Ok(Turn::Fetch(Some(LeaseHeld { bucket, digest: fill.digest.clone() }))),
            Claimed::Skipped => return Ok(Turn::Fetch(None)),
            Claimed::Lost { holder, expires_at } => {
                tracing::info!(digest = %fill.digest, holder, "another berth is filling this blob: waiting for its upload");
                expires_at
            }
        };
        let mut attempt = 0;
        while now_secs() < expires_at {
            tokio::select! {
                () = tokio::time::sleep(Bucket::poll_interval(attempt)) => {}
                () = every_client_left(fill) => {
                    return Err(Error::Unavailable("every client left while another berth filled the blob".into()));
                }
            }
            attempt += 1;
            if bucket.has_blob(&fill.digest).await {
                let published = from_bucket(store, fill).await?;
                return Ok(if published { Turn::Published } else { Turn::Fetch(None) });
            }
        }
        tracing::warn!(digest = %fill.digest, "a fleet fill lease expired with no object: breaking it");
        bucket.release(&fill.digest).await;
    }
    Ok(Turn::Fetch(None))
}
