//! Tiers composed: memory in front of a lower tier (the disk). Owns the look-up order, the
//! promotion of lower hits small enough for memory, the first-hit hash check of a durable
//! lower tier, and the rule that a lower tier's error is a miss (and a warning).

use std::collections::HashSet;
use std::sync::Mutex;

use bytes::Bytes;

use super::BlobTier;
use crate::oci::digest::Digest;
use crate::store::memory::MemoryTier;
use crate::store::{Hit, ServedBy};

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
            return Some(Hit { served_by: ServedBy::Memory, bytes });
        }
        match self.lookup_lower(digest).await {
            Ok(Some(bytes)) => Some(Hit { served_by: ServedBy::Disk, bytes }),
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

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    use std::sync::Arc;

    use bytes::Bytes;

    use super::Tiered;
    use crate::oci::digest::Digest;
    use crate::store::memory::MemoryTier;
    use crate::store::tier::memory::MemoryWriter;
    use crate::store::tier::{BlobTier, Usage};
    use crate::store::ServedBy;

    /// A durable lower tier that counts its reads and fails them on demand.
    #[derive(Clone)]
    struct Spy {
        inner: MemoryTier,
        reads: Arc<AtomicU32>,
        failing: Arc<AtomicBool>,
    }

    impl Spy {
        fn new() -> Spy {
            Spy { inner: MemoryTier::new(64 << 20, 64 << 20), reads: Arc::default(), failing: Arc::default() }
        }

        fn reads(&self) -> u32 {
            self.reads.load(Ordering::Relaxed)
        }

        fn check(&self) -> io::Result<()> {
            if self.failing.load(Ordering::Relaxed) {
                return Err(io::Error::other("the tier is down"));
            }
            Ok(())
        }
    }

    impl BlobTier for Spy {
        type Writer = MemoryWriter;
        const DURABLE: bool = true;

        async fn len(&self, digest: &Digest) -> io::Result<Option<u64>> {
            self.check()?;
            self.inner.len(digest).await
        }

        async fn read(&self, digest: &Digest) -> io::Result<Option<Bytes>> {
            self.check()?;
            self.reads.fetch_add(1, Ordering::Relaxed);
            BlobTier::read(&self.inner, digest).await
        }

        async fn begin_write(&self, digest: &Digest, len: Option<u64>) -> io::Result<MemoryWriter> {
            self.inner.begin_write(digest, len).await
        }

        async fn remove(&self, digest: &Digest) -> io::Result<u64> {
            BlobTier::remove(&self.inner, digest).await
        }

        async fn scan(&self) -> io::Result<Vec<(Digest, u64)>> {
            self.inner.scan().await
        }

        async fn usage(&self) -> Usage {
            self.inner.usage().await
        }

        fn admits(&self, _len: u64) -> bool {
            true
        }
    }

    /// Memory admitting objects up to 1000 bytes, in front of a spy.
    fn tiers() -> (Tiered<Spy>, Spy) {
        let spy = Spy::new();
        (Tiered::new(MemoryTier::new(1 << 20, 1000), spy.clone()), spy)
    }

    async fn below(spy: &Spy, bytes: &[u8]) -> Digest {
        let digest = Digest::of(bytes);
        spy.inner.insert(digest.clone(), Bytes::copy_from_slice(bytes)).await;
        digest
    }

    #[tokio::test]
    async fn a_small_lower_hit_is_promoted_and_then_served_from_memory_alone() {
        let (tiers, spy) = tiers();
        let d = below(&spy, &[7; 600]).await;
        let first = tiers.get(&d).await.unwrap();
        assert_eq!((first.served_by, first.bytes.len()), (ServedBy::Disk, 600));
        let again = tiers.get(&d).await.unwrap();
        assert_eq!(again.served_by, ServedBy::Memory);
        assert_eq!(spy.reads(), 1, "a memory hit reads nothing below");
    }

    #[tokio::test]
    async fn a_lower_hit_too_large_for_memory_stays_below() {
        let (tiers, spy) = tiers();
        let d = below(&spy, &[8; 5000]).await;
        for _ in 0..2 {
            assert_eq!(tiers.get(&d).await.unwrap().served_by, ServedBy::Disk);
        }
        assert_eq!(spy.reads(), 2);
        assert!(!tiers.memory.contains(&d));
    }

    #[tokio::test]
    async fn a_damaged_lower_object_is_removed_and_missed_and_a_good_one_hashed_once() {
        let (tiers, spy) = tiers();
        let damaged = Digest::of(b"what was meant");
        spy.inner.insert(damaged.clone(), Bytes::from_static(b"what is there")).await;
        assert!(tiers.get(&damaged).await.is_none());
        assert!(spy.inner.get(&damaged).await.is_none(), "removed below");

        let good = below(&spy, &[9; 5000]).await;
        assert!(tiers.get(&good).await.is_some());
        spy.inner.insert(good.clone(), Bytes::from(vec![0u8; 5000])).await;
        assert!(tiers.get(&good).await.is_some(), "checked on its first hit only");
    }

    #[tokio::test]
    async fn a_lower_tier_error_is_a_miss() {
        let (tiers, spy) = tiers();
        let d = below(&spy, &[1; 10]).await;
        spy.failing.store(true, Ordering::Relaxed);
        assert!(tiers.get(&d).await.is_none());
        assert!(!tiers.holds(&d).await);
        spy.failing.store(false, Ordering::Relaxed);
        assert!(tiers.holds(&d).await);
        assert_eq!(tiers.get(&d).await.unwrap().served_by, ServedBy::Disk);
    }
}
