//! The first-hit checks of a durable tier's objects: which objects are known to match their
//! digest, and the one hash under way per object.
//!
//! A digest's object changes only inside a `Change` (a publish by rename, a removal), which
//! gives the digest a new version when it begins and again when it ends. A reader notes the
//! digest's version before and after it maps the object: when both are the same and no change
//! was under way, it mapped the one object that version names. Only such a stable read may
//! trust a mark, share a hash or record a verdict; any other reader hashes what it mapped for
//! itself. Versions come from one counter, so a number never names two objects. The shared
//! hash runs in its own task, to its end and its record even when every reader leaves; an
//! object that fails it is removed once, unless it changed meanwhile.

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
    /// The last version given out.
    last: u64,
    /// Digests whose object changed, is changing or is checked; absent: version 0, unchecked.
    digests: HashMap<Digest, Entry>,
    /// The hash under way per digest: the version of the object it hashes, and its verdict.
    hashing: HashMap<Digest, (u64, Shared<BoxFuture<'static, bool>>)>,
    #[cfg(test)]
    hashes: u32,
}

#[derive(Clone, Copy, Default)]
struct Entry {
    version: u64,
    /// Changes under way.
    changing: u32,
    /// Whether the object of `version` is known to match the digest.
    checked: bool,
}

/// A digest's version as a reader saw it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Seen {
    version: u64,
    stable: bool,
}

/// A change of a digest's object under way; ended when dropped (the object unchecked), or
/// by `checked` once the new object is in place.
pub(crate) struct Change {
    checks: Checks,
    digest: Digest,
    checked: bool,
    /// A removal, whose digest is forgotten once it ends with nothing else under way (its
    /// entry goes, so that the map stays as large as what is on disk). A publish's entry
    /// stays, checked or not: a reader of the file before it must not meet version 0 again.
    removal: bool,
}

impl Drop for Change {
    fn drop(&mut self) {
        let mut s = self.checks.state();
        s.last += 1;
        let version = s.last;
        let e = s.digests.entry(self.digest.clone()).or_default();
        e.changing -= 1;
        e.version = version;
        e.checked = self.checked && e.changing == 0;
        let idle = e.changing == 0 && !s.hashing.contains_key(&self.digest);
        if self.removal && idle {
            s.digests.remove(&self.digest);
        }
    }
}

impl Change {
    /// Ends the change with the new object known to match the digest (it was written here
    /// from verified bytes).
    pub(crate) fn checked(mut self) {
        self.checked = true;
    }
}

impl Checks {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().expect("checks lock")
    }

    /// The digest's version now: note it before and after reading its object.
    pub(crate) fn seen(&self, digest: &Digest) -> Seen {
        let s = self.state();
        s.digests.get(digest).map_or(Seen { version: 0, stable: true }, |e| Seen {
            version: e.version,
            stable: e.changing == 0,
        })
    }

    /// Begins publishing an object for the digest (before its rename).
    pub(crate) fn publishing(&self, digest: &Digest) -> Change {
        begin(&mut self.state(), digest);
        Change { checks: self.clone(), digest: digest.clone(), checked: false, removal: false }
    }

    /// Begins removing the digest's object (before its unlink).
    pub(crate) fn removing(&self, digest: &Digest) -> Change {
        begin(&mut self.state(), digest);
        Change { checks: self.clone(), digest: digest.clone(), checked: false, removal: true }
    }

    /// Whether `found`, the object for `digest` read between `before` and `after`, matches
    /// it. A stable read trusts a mark of the version it read, else shares the one hash of
    /// that version, which records its verdict and, when the object is damaged and unchanged
    /// since, runs `remove` once. Any other read is hashed for the reader alone.
    pub(crate) async fn verdict(
        &self,
        digest: &Digest,
        found: &Bytes,
        before: Seen,
        after: Seen,
        remove: Remove,
    ) -> bool {
        if before != after || !before.stable {
            return hash_alone(digest, found).await;
        }
        let verdict = {
            let mut s = self.state();
            let entry = s.digests.get(digest).copied().unwrap_or_default();
            if entry.checked && entry.version == before.version {
                return true;
            }
            match s.hashing.get(digest) {
                Some((at, verdict)) if *at == before.version => verdict.clone(),
                _ => {
                    let verdict = self.hash_shared(digest, found, before.version, remove);
                    s.hashing.insert(digest.clone(), (before.version, verdict.clone()));
                    verdict
                }
            }
        };
        verdict.await
    }

    fn hash_shared(
        &self,
        digest: &Digest,
        found: &Bytes,
        version: u64,
        remove: Remove,
    ) -> Shared<BoxFuture<'static, bool>> {
        let (this, d, found) = (self.clone(), digest.clone(), found.clone());
        let task = tokio::spawn(async move {
            let want = d.clone();
            // A hash that did not finish (the runtime shutting down) records nothing.
            let Ok(matches) = tokio::task::spawn_blocking(move || Digest::of(&found) == want).await else {
                this.state().hashing.remove(&d);
                return false;
            };
            if let Some(change) = this.record(&d, version, matches) {
                tracing::warn!(digest = %d, "damaged blob on disk: deleted, will be fetched again");
                remove().await;
                drop(change);
            }
            matches
        });
        async move { task.await.unwrap_or(false) }.boxed().shared()
    }

    /// Records a hash of the object of `version`; when it failed and the object has not
    /// changed since, the change that removes it.
    fn record(&self, digest: &Digest, version: u64, matches: bool) -> Option<Change> {
        let mut s = self.state();
        #[cfg(test)]
        {
            s.hashes += 1;
        }
        if s.hashing.get(digest).is_some_and(|(at, _)| *at == version) {
            s.hashing.remove(digest);
        }
        let entry = s.digests.get(digest).copied().unwrap_or_default();
        if entry.version != version || entry.changing > 0 {
            return None; // changed meanwhile: the verdict is about an object gone
        }
        if matches {
            s.digests.insert(digest.clone(), Entry { checked: true, ..entry });
            return None;
        }
        begin(&mut s, digest);
        Some(Change { checks: self.clone(), digest: digest.clone(), checked: false, removal: true })
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

/// Gives the digest a new version, with one more change under way.
fn begin(s: &mut State, digest: &Digest) {
    s.last += 1;
    let version = s.last;
    let e = s.digests.entry(digest.clone()).or_default();
    e.changing += 1;
    e.version = version;
    e.checked = false;
}

/// Hashes `found` for one reader, off the async workers.
async fn hash_alone(digest: &Digest, found: &Bytes) -> bool {
    let (d, found) = (digest.clone(), found.clone());
    tokio::task::spawn_blocking(move || Digest::of(&found) == d).await.unwrap_or(false)
}

#[cfg(test)]
#[path = "checks_tests.rs"]
mod tests;
