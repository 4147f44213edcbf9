//! Tiers composed: memory in front of a lower tier (the disk). Owns the look-up order, the
//! promotion of lower hits small enough for memory, the first-hit hash check of a durable
//! lower tier, and the rule that a lower tier's error is a miss (and a warning).

use bytes::Bytes;
use futures::FutureExt;

use super::checks::{Change, Checks, Seen};
use super::BlobTier;
use crate::oci::digest::Digest;
use crate::store::memory::MemoryTier;
use crate::store::{Hit, ServedBy};

pub(crate) struct Tiered<L> {
    memory: MemoryTier,
    lower: L,
    /// Lower-tier objects known to match their digest since startup (written here, or
    /// hashed on their first hit), and the hashes under way.
    checks: Checks,
}

impl<L: BlobTier + Clone> Tiered<L> {
    pub(crate) fn new(memory: MemoryTier, lower: L) -> Self {
        Tiered { memory, lower, checks: Checks::default() }
    }

    /// Begins publishing a lower-tier object for `digest` (before its rename); `checked()`
    /// on the change once it is in place.
    pub(crate) fn publishing(&self, digest: &Digest) -> Change {
        self.checks.publishing(digest)
    }

    /// Begins removing the lower tier's object for `digest` (before its unlink).
    pub(crate) fn removing(&self, digest: &Digest) -> Change {
        self.checks.removing(digest)
    }

    /// The digest's version, to note before and after reading its lower-tier object.
    pub(crate) fn seen(&self, digest: &Digest) -> Seen {
        self.checks.seen(digest)
    }

    /// Whether `found`, the lower tier's object for `digest` read between `before` and
    /// `after` (`seen`), matches it: known, or hashed now, once per object for all its
    /// readers (see `checks`). A damaged one is removed.
    pub(crate) async fn ensure_checked(
        &self,
        digest: &Digest,
        found: &Bytes,
        before: Seen,
        after: Seen,
    ) -> bool {
        if !L::DURABLE {
            return true;
        }
        let (lower, d) = (self.lower.clone(), digest.clone());
        let remove = Box::new(move || {
            async move {
                if let Err(e) = lower.remove(&d).await {
                    tracing::warn!(digest = %d, error = %e, "could not delete a damaged blob");
                }
            }
            .boxed()
        });
        self.checks.verdict(digest, found, before, after, remove).await
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

    /// The lower tier's object for `digest`, once it is known to match it (see
    /// `ensure_checked`); not promoted.
    pub(crate) async fn read_checked(&self, digest: &Digest) -> std::io::Result<Option<Bytes>> {
        let before = self.seen(digest);
        let Some(found) = self.lower.read(digest).await? else { return Ok(None) };
        let after = self.seen(digest);
        Ok(self.ensure_checked(digest, &found, before, after).await.then_some(found))
    }

    /// The lower tier's object, checked once and promoted when memory admits it.
    async fn lookup_lower(&self, digest: &Digest) -> std::io::Result<Option<Bytes>> {
        let Some(found) = self.read_checked(digest).await? else { return Ok(None) };
        if !BlobTier::admits(&self.memory, found.len() as u64) {
            return Ok(Some(found));
        }
        // A copy, made off the async workers, so that memory does not keep a mapping alive.
        let copy = tokio::task::spawn_blocking(move || Bytes::copy_from_slice(&found));
        let copy = copy.await.map_err(std::io::Error::other)?;
        self.memory.insert(digest.clone(), copy.clone()).await;
        Ok(Some(copy))
    }
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_first_readers_of_one_object_hash_it_once() {
        let (tiers, spy) = tiers();
        let tiers = Arc::new(tiers);
        let d = below(&spy, &vec![7; 8 << 20]).await;
        let readers: Vec<_> = (0..8)
            .map(|_| {
                let (tiers, d) = (tiers.clone(), d.clone());
                tokio::spawn(async move { tiers.get(&d).await.map(|h| h.bytes.len()) })
            })
            .collect();
        for r in readers {
            assert_eq!(r.await.unwrap(), Some(8 << 20));
        }
        assert_eq!(tiers.checks.hashes(), 1, "each first reader hashed the object");
        assert!(tiers.checks.idle(), "a hash left behind");
    }

    #[tokio::test]
    async fn a_forgotten_object_is_hashed_again() {
        let (tiers, spy) = tiers();
        let d = below(&spy, &[3; 5000]).await;
        assert!(tiers.get(&d).await.is_some());
        drop(tiers.removing(&d));
        spy.inner.insert(d.clone(), Bytes::from(vec![0u8; 5000])).await;
        assert!(tiers.get(&d).await.is_none(), "a damaged object served on a stale check");
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
