//! A fill about to ask upstream, with a bucket: claimed fleet-wide first
//! (`store::bucket::lease`). The winner fetches and releases the lease once the blob is
//! uploaded (or the fill fails); a loser waits for the winner's object and fills from it,
//! claims again when the holder gives the lease up, and breaks a lease that expires with no
//! object. A bucket that fails meanwhile ends the wait: the fill fetches. A loser whose
//! holder can be asked as a peer (its lease is signed with this berth's peer token) streams
//! from the holder's fill instead, and waits as before when the holder cannot answer.

use std::sync::Arc;

use super::inflight::every_client_left;
use super::lead::{from_bucket, FromBucket, PartlyShown};
use super::{Fill, FromHolder, Source};
use crate::error::Error;
use crate::oci::digest::Digest;
use crate::store::bucket::lease::now_secs;
use crate::store::bucket::{Bucket, Claimed, Seen};
use crate::store::Store;

/// What the fill does after its claim.
pub(super) enum Turn {
    /// Fetch from the source, holding the fleet's lease when it was won.
    Fetch(Option<LeaseHeld>),
    /// Stream from the lease's holder, as a peer.
    Stream(Source),
    /// The winner's object was read from the bucket and published.
    Published,
    /// The winner's object was shown in part before its read failed (see `lead::PartlyShown`).
    Shown(Box<PartlyShown>),
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

pub(super) async fn claim_or_wait(
    store: &Arc<Store>,
    fill: &Arc<Fill>,
    mut holder_source: Option<FromHolder>,
) -> Result<Turn, Error> {
    let Some(bucket) = store.bucket.clone().filter(|_| fill.claims) else { return Ok(Turn::Fetch(None)) };
    for _ in 0..3 {
        let (holder, expires_at) = match bucket.claim(&fill.digest).await {
            Claimed::Won => return won(store, fill, bucket).await,
            Claimed::Skipped => return Ok(Turn::Fetch(None)),
            Claimed::Lost { holder, .. } if bucket.is_me(&holder) => {
                // Left by this berth's previous run: nobody fills it.
                bucket.release(&fill.digest).await;
                continue;
            }
            Claimed::Lost { holder, expires_at, peer } => {
                // Asked at most once, and only of a holder its lease vouches for.
                let ask = if peer.is_some() { holder_source.take() } else { None };
                if let Some((peer, ask)) = peer.zip(ask) {
                    if let Some(source) = stream_from_holder(fill, peer, ask).await? {
                        return Ok(Turn::Stream(source));
                    }
                }
                (holder, expires_at)
            }
        };
        tracing::info!(digest = %fill.digest, holder, "another berth is filling this blob: waiting for its upload");
        match wait_for_holder(store, fill, &bucket, expires_at).await? {
            Some(turn) => return Ok(turn),
            None => continue,
        }
    }
    Ok(Turn::Fetch(None))
}

/// The holder's answer as the fill's source, or None when it cannot be asked or does not
/// answer with the blob: the loser then waits for its upload.
async fn stream_from_holder(
    fill: &Arc<Fill>,
    peer: String,
    ask: FromHolder,
) -> Result<Option<Source>, Error> {
    let asked = tokio::select! {
        asked = ask(peer.clone()) => asked,
        () = every_client_left(fill) => {
            return Err(Error::Unavailable("every client left before the lease's holder answered".into()));
        }
    };
    let outcome = if asked.is_ok() { "streamed" } else { "failed" };
    metrics::counter!("berth_fleet_streams_total", "outcome" => outcome).increment(1);
    match asked {
        Ok(source) => {
            tracing::info!(digest = %fill.digest, holder = peer, "streaming from the berth that holds the fill lease");
            Ok(Some(source))
        }
        Err(e) => {
            tracing::info!(digest = %fill.digest, holder = peer, error = %e, "the lease's holder cannot be streamed from: waiting for its upload");
            Ok(None)
        }
    }
}

/// Won: the blob may have been uploaded between this fill's look and its claim.
async fn won(store: &Arc<Store>, fill: &Arc<Fill>, bucket: Arc<Bucket>) -> Result<Turn, Error> {
    let lease = LeaseHeld { bucket: bucket.clone(), digest: fill.digest.clone() };
    if bucket.look(&fill.digest, &fill.origin).await != Seen::Blob {
        return Ok(Turn::Fetch(Some(lease)));
    }
    Ok(match from_bucket(store, fill).await? {
        FromBucket::Published => Turn::Published,
        FromBucket::Shown(shown) => Turn::Shown(shown),
        FromBucket::Unused => Turn::Fetch(Some(lease)),
    })
}

/// Polls for the holder's object until its lease expires: the turn once there is one, or
/// None to claim again (the lease expired, and is broken, or its holder gave it up).
async fn wait_for_holder(
    store: &Arc<Store>,
    fill: &Arc<Fill>,
    bucket: &Bucket,
    expires_at: u64,
) -> Result<Option<Turn>, Error> {
    let mut attempt = 0;
    while now_secs() < expires_at {
        tokio::select! {
            () = tokio::time::sleep(Bucket::poll_interval(attempt)) => {}
            () = every_client_left(fill) => {
                return Err(Error::Unavailable("every client left while another berth filled the blob".into()));
            }
        }
        attempt += 1;
        match bucket.look(&fill.digest, &fill.origin).await {
            Seen::Blob => {
                return Ok(Some(match from_bucket(store, fill).await? {
                    FromBucket::Published => Turn::Published,
                    FromBucket::Shown(shown) => Turn::Shown(shown),
                    FromBucket::Unused => Turn::Fetch(None),
                }));
            }
            Seen::Leased => {}
            Seen::Free => return Ok(None),
            Seen::Trouble => return Ok(Some(Turn::Fetch(None))),
        }
    }
    tracing::warn!(digest = %fill.digest, "a fleet fill lease expired with no object: breaking it");
    bucket.release(&fill.digest).await;
    Ok(None)
}
