//! The fleet-wide fill lease: before a berth fills a digest from upstream it creates
//! `v1/fills/<hex>` with a conditional create (`If-None-Match: *`), holding its identity and
//! when the claim expires (`bucket.fill_lease`). One creator wins and fetches; the others wait
//! for the blob object to appear and read it from the bucket, or, once the lease expires with
//! no object, break it and claim again. Inside one cluster the owner/peer path comes first:
//! only a berth about to ask upstream claims.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use object_store::path::Path;
use object_store::{GetOptions, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};

use super::manifests::read_bounded;
use super::{count, labelled_for, Bucket};
use crate::oci::digest::Digest;

/// A lease object larger than this is not read.
const LEASE_MAX: u64 = 4096;

/// What a lease object holds.
#[derive(Debug, Serialize, Deserialize)]
struct Claim {
    holder: String,
    /// Seconds since the epoch.
    expires_at: u64,
}

/// How a claim on a digest went.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Claimed {
    /// This berth fetches; it releases the lease once the blob is uploaded.
    Won,
    /// Another berth holds it until `expires_at` (seconds since the epoch).
    Lost { holder: String, expires_at: u64 },
    /// The bucket could not be asked, or leases are not taken (read-only use): fetch.
    Skipped,
}

/// What a berth waiting on another's lease finds when it looks again.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Seen {
    /// The blob is there for this registry: fill from it.
    Blob,
    /// Still being filled by its holder.
    Leased,
    /// Neither blob nor lease: the holder gave up (its fetch failed, or it could not keep
    /// the blob); claim again.
    Free,
    /// The bucket failed: stop waiting and fetch.
    Trouble,
}

pub(crate) fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Bucket {
    fn lease_path(&self, digest: &Digest) -> Path {
        self.fills.clone().join(digest.hex())
    }

    /// Claims the upstream fetch of `digest` for the fleet.
    pub(crate) async fn claim(&self, digest: &Digest) -> Claimed {
        if !self.uploads || !self.up() {
            return Claimed::Skipped;
        }
        let claim =
            Claim { holder: self.identity.clone(), expires_at: now_secs() + self.fill_lease.as_secs() };
        let Ok(json) = serde_json::to_vec(&claim) else { return Claimed::Skipped };
        let opts = PutOptions { mode: PutMode::Create, ..PutOptions::default() };
        let path = self.lease_path(digest);
        let put = self.store.put_opts(&path, PutPayload::from(json), opts);
        match tokio::time::timeout(self.timeout, put).await {
            Ok(Ok(_)) => {
                count("lease", "won");
                Claimed::Won
            }
            Ok(Err(object_store::Error::AlreadyExists { .. })) => {
                count("lease", "lost");
                match self.read_claim(digest).await {
                    Some(c) => Claimed::Lost { holder: c.holder, expires_at: c.expires_at },
                    // Gone meanwhile (released), or unreadable: waited on for one lease, as
                    // the holder's claim would be.
                    None => Claimed::Lost {
                        holder: String::new(),
                        expires_at: now_secs() + self.fill_lease.as_secs(),
                    },
                }
            }
            Ok(Err(e)) => {
                self.failed("lease", &e.to_string());
                Claimed::Skipped
            }
            Err(_) => {
                self.failed("lease", &format!("no answer within {:?}", self.timeout));
                Claimed::Skipped
            }
        }
    }

    /// The claim on `digest`, when there is a readable one. Its expiry is capped at one
    /// `fill_lease` from now: a hostile or skewed lease cannot hold the fleet back longer.
    async fn read_claim(&self, digest: &Digest) -> Option<Claim> {
        let read = async {
            let got = self.store.get_opts(&self.lease_path(digest), GetOptions::default()).await.ok()?;
            serde_json::from_slice::<Claim>(&read_bounded(got, LEASE_MAX).await.ok()?).ok()
        };
        let mut claim = tokio::time::timeout(self.timeout, read).await.ok().flatten()?;
        claim.expires_at = claim.expires_at.min(now_secs() + self.fill_lease.as_secs());
        Some(claim)
    }

    /// What a berth waiting on a lease finds: the blob for `origin` (one HEAD), else whether
    /// the lease is still there (one more).
    pub(crate) async fn look(&self, digest: &Digest, origin: &str) -> Seen {
        let head = || GetOptions { head: true, ..GetOptions::default() };
        let blob =
            tokio::time::timeout(self.timeout, self.store.get_opts(&self.blob_path(digest), head())).await;
        match blob {
            Ok(Ok(got)) if labelled_for(&got.attributes, origin) => return Seen::Blob,
            Ok(Ok(_) | Err(object_store::Error::NotFound { .. })) => {}
            Ok(Err(e)) => {
                self.failed("lease", &e.to_string());
                return Seen::Trouble;
            }
            Err(_) => {
                self.failed("lease", &format!("no answer within {:?}", self.timeout));
                return Seen::Trouble;
            }
        }
        let lease =
            tokio::time::timeout(self.timeout, self.store.get_opts(&self.lease_path(digest), head())).await;
        match lease {
            Ok(Ok(_)) => Seen::Leased,
            Ok(Err(object_store::Error::NotFound { .. })) => Seen::Free,
            _ => Seen::Trouble,
        }
    }

    /// Whether `holder` is this berth (a lease left by its previous run).
    pub(crate) fn is_me(&self, holder: &str) -> bool {
        holder == self.identity
    }

    /// Removes the lease on `digest` (its fill is uploaded, or it expired): best effort.
    pub(crate) async fn release(&self, digest: &Digest) {
        let path = self.lease_path(digest);
        let deleted = self.store.delete_stream(futures::stream::once(async move { Ok(path) }).boxed());
        let _ = tokio::time::timeout(self.timeout, deleted.collect::<Vec<_>>()).await;
    }

    /// How long a loser waits before looking for the object again: 250 ms, doubling, at most
    /// 2 s (a 2 min lease costs at most about 70 HEADs).
    pub(crate) fn poll_interval(attempt: u32) -> Duration {
        Duration::from_millis(250 << attempt.min(3))
    }
}
