//! The first-hit checks of a durable tier's objects: which objects are known to match their
//! digest, and the one hash under way per object.
//!
//! An object changes only by being published (marked checked) or removed (forgotten); both
//! bump an epoch. A reader notes the epoch before it reads, and trusts a mark only if it does
//! not postdate that read: a mark made after the read may be about another file than the one
//! it mapped. Readers of one object (same digest, same epoch) share one hash and its verdict,
//! failures included. The hash runs in its own task, to its end and its record even when every
//! reader leaves; an object that fails it is removed once, unless a newer one was published.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt, Shared};

use crate::oci::digest::Digest;

/// What removes an object that failed its check.
pub(crate) type Remove = Box<dyn FnOnce() -> BoxFuture<'static, ()> + Send>;

#[derive(Clone, Default)]
pub(crate) struct Checks(Arc<Mutex<State>>);

#[derive(Default)]
struct State {
    epoch: u64,
    /// Digest → the epoch from which its object is known to match it.
    checked: HashMap<Digest, u64>,
    /// The hash under way per digest: the epoch its object was read at, and its verdict.
    hashing: HashMap<Digest, (u64, Shared<BoxFuture<'static, bool>>)>,
    #[cfg(test)]
    hashes: u32,
}

impl Checks {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().expect("checks lock")
    }

    /// The epoch to note before reading an object.
    pub(crate) fn epoch(&self) -> u64 {
        self.state().epoch
    }

    /// Marks the object published for `digest` as known to match it.
    pub(crate) fn mark(&self, digest: &Digest) {
        let mut s = self.state();
        s.epoch += 1;
        let epoch = s.epoch;
        s.checked.insert(digest.clone(), epoch);
    }

    /// Forgets the check of an object that was removed.
    pub(crate) fn forget(&self, digest: &Digest) {
        let mut s = self.state();
        s.epoch += 1;
        s.checked.remove(digest);
    }

    /// Whether `found`, the object for `digest` read at epoch `read_at`, matches it: a mark
    /// from before the read, else the verdict of the one hash of that object. When the hash
    /// fails and no newer object was published meanwhile, `remove` runs (once) and the check
    /// is forgotten.
    pub(crate) async fn verdict(&self, digest: &Digest, found: &Bytes, read_at: u64, remove: Remove) -> bool {
        let verdict = {
            let mut s = self.state();
            if s.checked.get(digest).is_some_and(|&m| m <= read_at) {
                return true;
            }
            match s.hashing.get(digest) {
                Some((at, verdict)) if *at == read_at => verdict.clone(),
                _ => {
                    let verdict = self.hash(digest, found, read_at, remove);
                    s.hashing.insert(digest.clone(), (read_at, verdict.clone()));
                    verdict
                }
            }
        };
        verdict.await
    }

    fn hash(
        &self,
        digest: &Digest,
        found: &Bytes,
        read_at: u64,
        remove: Remove,
    ) -> Shared<BoxFuture<'static, bool>> {
        let (this, d, found) = (self.clone(), digest.clone(), found.clone());
        let task = tokio::spawn(async move {
            let want = d.clone();
            let matches =
                tokio::task::spawn_blocking(move || Digest::of(&found) == want).await.unwrap_or(false);
            if this.record(&d, read_at, matches) {
                tracing::warn!(digest = %d, "damaged blob on disk: deleted, will be fetched again");
                remove().await;
                this.forget(&d);
            }
            matches
        });
        async move { task.await.unwrap_or(false) }.boxed().shared()
    }

    /// Records a hash's verdict; true when the object failed and should be removed (no
    /// newer object was published meanwhile).
    fn record(&self, digest: &Digest, read_at: u64, matches: bool) -> bool {
        let mut s = self.state();
        #[cfg(test)]
        {
            s.hashes += 1;
        }
        if s.hashing.get(digest).is_some_and(|(at, _)| *at == read_at) {
            s.hashing.remove(digest);
        }
        if matches {
            // A newer mark stays: it is about a newer object.
            s.checked.entry(digest.clone()).or_insert(read_at);
        }
        !matches && !s.checked.contains_key(digest)
    }

    #[cfg(test)]
    pub(crate) fn hashes(&self) -> u32 {
        self.state().hashes
    }

    #[cfg(test)]
    pub(crate) fn idle(&self) -> bool {
        self.state().hashing.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn counting(removed: &Arc<AtomicU32>) -> Remove {
        let removed = removed.clone();
        Box::new(move || {
            async move {
                removed.fetch_add(1, Ordering::Relaxed);
            }
            .boxed()
        })
    }

    #[tokio::test]
    async fn a_mark_after_the_read_is_not_trusted_for_what_was_read() {
        let (checks, removed) = (Checks::default(), Arc::new(AtomicU32::new(0)));
        let d = Digest::of(b"good");
        let read_at = checks.epoch();
        // A newer, verified object is published after this reader mapped a damaged one.
        checks.mark(&d);
        let damaged = Bytes::from_static(b"bad!");
        assert!(!checks.verdict(&d, &damaged, read_at, counting(&removed)).await, "served on a newer mark");
        assert_eq!(removed.load(Ordering::Relaxed), 0, "the newer object was removed");
        // A reader after the mark trusts it without hashing.
        let hashes = checks.hashes();
        assert!(checks.verdict(&d, &Bytes::from_static(b"good"), checks.epoch(), counting(&removed)).await);
        assert_eq!(checks.hashes(), hashes);
    }

    #[tokio::test]
    async fn a_failed_hash_is_shared_removes_once_and_survives_its_readers_leaving() {
        let (checks, removed) = (Checks::default(), Arc::new(AtomicU32::new(0)));
        let d = Digest::of(&vec![1u8; 16 << 20]);
        let damaged = Bytes::from(vec![0u8; 16 << 20]);
        let read_at = checks.epoch();
        // The first reader leaves at once: the hash still runs to its record.
        let first = checks.verdict(&d, &damaged, read_at, counting(&removed));
        drop(tokio::time::timeout(std::time::Duration::from_millis(1), first).await);
        let again = checks.verdict(&d, &damaged, read_at, counting(&removed)).await;
        assert!(!again);
        for _ in 0..100 {
            if checks.idle() && removed.load(Ordering::Relaxed) == 1 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(checks.idle(), "a hash left behind");
        assert_eq!(removed.load(Ordering::Relaxed), 1, "removed more or less than once");
        assert_eq!(checks.hashes(), 1, "the second reader hashed again");
    }
}
