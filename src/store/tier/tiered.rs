//! Tiers composed: memory in front of a lower tier (the disk). Owns the look-up order, the
//! promotion of lower hits small enough for memory, the first-hit hash check of a durable
//! lower tier, and the rule that a lower tier's error is a miss (and a warning).

use std::collections::HashSet;
use std::sync::Mutex;

use bytes::Bytes;

use super::BlobTier;
use crate::digest::Digest;
use crate::store::memory::MemoryTier;
use crate::store::{Hit, Tier};

pub(crate) struct Tiered<L> {
    memory: MemoryTier,
    lower: L,
    /// Lower-tier objects whose content was checked against the digest since startup
    /// (written here, or hashed on their first hit).
    checked: Mutex<HashSet<Digest>>,
}

impl<L: BlobTier> Tiered<L> {
    pub(crate) fn new(memory: MemoryTier, lower: L) -> Self {
        Tiered { memory, lower, checked: Mutex::new(HashSet::new()) }
    }

    /// Notes that the lower tier's copy of `digest` is known to match it.
    pub(crate) fn mark_checked(&self, digest: &Digest) {
        self.checked.lock().expect("checked lock").insert(digest.clone());
    }

    fn is_checked(&self, digest: &Digest) -> bool {
        !L::DURABLE || self.checked.lock().expect("checked lock").contains(digest)
    }

    /// Whether a tier holds `digest` (without reading it).
    pub(crate) async fn holds(&self, digest: &Digest) -> bool {
        self.memory.contains(digest) || matches!(self.lower.len(digest).await, Ok(Some(_)))
    }

    /// Looks in memory (no disk I/O on a hit), then below. A lower hit small enough for
    /// memory is promoted; a durable lower tier's object is hashed on its first hit, and one
    /// that does not match its digest (damaged) is removed and answered as a miss.
    pub(crate) async fn get(&self, digest: &Digest) -> Option<Hit> {
        if let Some(bytes) = self.memory.get(digest).await {
            return Some(Hit { tier: Tier::Memory, bytes });
        }
        match self.lookup_lower(digest).await {
            Ok(Some(bytes)) => Some(Hit { tier: Tier::Disk, bytes }),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(%digest, error = %e, "disk tier read failed; treating as a miss");
                None
            }
        }
    }

    /// The lower tier's object, checked once and promoted when memory admits it.
    async fn lookup_lower(&self, digest: &Digest) -> std::io::Result<Option<Bytes>> {
        let Some(found) = self.lower.read(digest).await? else { return Ok(None) };
        let checked = self.is_checked(digest);
        let admits = BlobTier::admits(&self.memory, found.len() as u64);
        if checked && !admits {
            return Ok(Some(found));
        }
        let Some((found, copy)) = check_and_copy(digest, found, checked, admits).await? else {
            self.lower.remove(digest).await?;
            return Ok(None);
        };
        if !checked {
            self.mark_checked(digest);
        }
        if let Some(copy) = copy {
            self.memory.insert(digest.clone(), copy.clone()).await;
            return Ok(Some(copy));
        }
        Ok(Some(found))
    }
}

/// On a blocking thread: hashes `found` unless `checked` (None when it does not match the
/// digest), and copies it for the memory tier when `admits`, so that the copy does not
/// keep a mapping alive.
async fn check_and_copy(
    digest: &Digest,
    found: Bytes,
    checked: bool,
    admits: bool,
) -> std::io::Result<Option<(Bytes, Option<Bytes>)>> {
    let d = digest.clone();
    tokio::task::spawn_blocking(move || {
        if !checked && Digest::of(&found) != d {
            tracing::warn!(digest = %d, "damaged blob on disk: deleted, will be fetched again");
            return None;
        }
        let copy = admits.then(|| Bytes::copy_from_slice(&found));
        Some((found, copy))
    })
    .await
    .map_err(std::io::Error::other)
}
