//! The fleet-wide fill lease: before a berth fills a digest from upstream it creates
//! `v1/fills/<hex>` with a conditional create (`If-None-Match: *`), holding its identity and
//! when the claim expires (`bucket.fill_lease`). One creator wins and fetches; the others wait
//! for the blob object to appear and read it from the bucket, or, once the lease expires with
//! no object, break it and claim again. Inside one cluster the owner/peer path comes first:
//! only a berth about to ask upstream claims.
//!
//! A berth with `[peers]` signs its lease with the peer token (HMAC-SHA-256 over the digest,
//! holder and expiry). A loser holding the same token may stream the blob from the holder
//! as a peer while it is filled; a lease it cannot verify names nobody it will contact, so
//! whoever can write to the bucket cannot send a berth, or its token, anywhere.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use hmac::{Hmac, Mac};
use object_store::path::Path;
use object_store::{GetOptions, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::manifests::read_bounded;
use super::{count, labelled_for, Bucket};
use crate::config::Secret;
use crate::oci::digest::Digest;

/// A lease object larger than this is not read.
const LEASE_MAX: u64 = 4096;

/// What a lease object holds.
#[derive(Debug, Serialize, Deserialize)]
struct Claim {
    holder: String,
    /// Seconds since the epoch.
    expires_at: u64,
    /// The signature under the peer token (hex), when the holder has peers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mac: Option<String>,
}

/// How far past one `fill_lease` from now a lease's expiry may lie and still be believed
/// (clocks of the fleet that disagree).
const CLOCK_SKEW: u64 = 60;

/// The signature of a lease at `path` (which names the digest, under the bucket's prefix).
fn lease_mac(key: &Secret, path: &Path, holder: &str, expires_at: u64) -> Hmac<Sha256> {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(key.expose().as_bytes()).expect("HMAC takes keys of any length");
    for field in [b"berth fill lease".as_slice(), path.as_ref().as_bytes(), holder.as_bytes()] {
        mac.update(field);
        mac.update(b"\0");
    }
    mac.update(expires_at.to_string().as_bytes());
    mac
}

impl Claim {
    fn signed(key: Option<&Secret>, path: &Path, holder: String, expires_at: u64) -> Claim {
        let mac = key.map(|k| hex::encode(lease_mac(k, path, &holder, expires_at).finalize().into_bytes()));
        Claim { holder, expires_at, mac }
    }

    /// The holder as a peer to stream from: its lease at `path` verifies under `key`, is
    /// live (it expires after now and within `lease` of it, give or take `CLOCK_SKEW`: an old
    /// signed lease put back is not believed), and names a plain base URL
    /// (`http://10.0.0.7:5000/`), spelled as a peer's identity.
    fn peer(&self, key: Option<&Secret>, path: &Path, lease: Duration) -> Option<String> {
        let now = now_secs();
        if self.expires_at <= now || self.expires_at > now + lease.as_secs() + CLOCK_SKEW {
            return None;
        }
        let mac = hex::decode(self.mac.as_deref()?).ok()?;
        lease_mac(key?, path, &self.holder, self.expires_at).verify_slice(&mac).ok()?;
        let url = url::Url::parse(&self.holder).ok()?;
        let plain = matches!(url.scheme(), "http" | "https")
            && url.host().is_some()
            && url.username().is_empty()
            && url.password().is_none()
            && url.path() == "/"
            && url.query().is_none()
            && url.fragment().is_none();
        plain.then(|| url.origin().ascii_serialization())
    }
}

/// How a claim on a digest went.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Claimed {
    /// This berth fetches; it releases the lease once the blob is uploaded.
    Won,
    /// Another berth holds it until `expires_at` (seconds since the epoch); `peer` is the
    /// holder's URL when its lease is signed with this berth's peer token.
    Lost { holder: String, expires_at: u64, peer: Option<String> },
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
        let expires_at = now_secs() + self.fill_lease.as_secs();
        let path = self.lease_path(digest);
        let claim = Claim::signed(self.lease_key.as_ref(), &path, self.identity.clone(), expires_at);
        let Ok(json) = serde_json::to_vec(&claim) else { return Claimed::Skipped };
        let opts = PutOptions { mode: PutMode::Create, ..PutOptions::default() };
        let put = self.store.put_opts(&path, PutPayload::from(json), opts);
        match tokio::time::timeout(self.timeout, put).await {
            Ok(Ok(_)) => {
                count("lease", "won");
                Claimed::Won
            }
            Ok(Err(object_store::Error::AlreadyExists { .. })) => {
                count("lease", "lost");
                match self.read_claim(digest).await {
                    Some((c, peer)) => Claimed::Lost { holder: c.holder, expires_at: c.expires_at, peer },
                    // Gone meanwhile (released), or unreadable: waited on for one lease, as
                    // the holder's claim would be.
                    None => Claimed::Lost {
                        holder: String::new(),
                        expires_at: now_secs() + self.fill_lease.as_secs(),
                        peer: None,
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

    /// The claim on `digest`, when there is a readable one, and its holder as a peer when the
    /// claim verifies. Its expiry is capped at one `fill_lease` from now: a hostile or skewed
    /// lease cannot hold the fleet back longer.
    async fn read_claim(&self, digest: &Digest) -> Option<(Claim, Option<String>)> {
        let read = async {
            let got = self.store.get_opts(&self.lease_path(digest), GetOptions::default()).await.ok()?;
            serde_json::from_slice::<Claim>(&read_bounded(got, LEASE_MAX).await.ok()?).ok()
        };
        let mut claim = tokio::time::timeout(self.timeout, read).await.ok().flatten()?;
        let peer = claim.peer(self.lease_key.as_ref(), &self.lease_path(digest), self.fill_lease);
        claim.expires_at = claim.expires_at.min(now_secs() + self.fill_lease.as_secs());
        Some((claim, peer))
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

/// A lease object as a berth holding `key` writes it, for tests that put leases by hand.
#[cfg(test)]
pub(crate) fn signed_lease(key: &str, path: &Path, holder: &str, expires_at: u64) -> String {
    let claim = Claim::signed(Some(&Secret::new(key)), path, holder.to_owned(), expires_at);
    serde_json::to_string(&claim).expect("a claim serializes")
}
