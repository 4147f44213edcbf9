//! What every `BlobTier` holds to, one function per property, each taking a factory of
//! fresh tiers; run against memory and disk at the bottom. A new tier adds itself there.

use std::io;
use std::sync::Arc;

use bytes::Bytes;

use super::bucket::BucketTier;
use super::{BlobTier, TierWriter, Usage, Verified, WrittenView};
use crate::oci::digest::Digest;
use crate::store::disk::DiskTier;
use crate::store::memory::MemoryTier;

/// A tier under test, with what its writes may leave behind.
trait Subject: BlobTier {
    /// Staged bytes of writes not committed (temp files for disk).
    fn leftovers(&self) -> usize;
}

impl Subject for MemoryTier {
    fn leftovers(&self) -> usize {
        0
    }
}

impl Subject for BucketTier {
    fn leftovers(&self) -> usize {
        0 // parts are staged in memory, never in the bucket
    }
}

impl Subject for Arc<DiskTier> {
    fn leftovers(&self) -> usize {
        self.temp_count()
    }
}

/// A fresh tier and whatever keeps it alive (its folder).
type Made<T> = (T, Option<tempfile::TempDir>);

fn content(n: usize, seed: u8) -> Bytes {
    (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect::<Vec<u8>>().into()
}

async fn put<T: BlobTier>(tier: &T, bytes: &Bytes) -> Digest {
    let digest = Digest::of(bytes);
    let mut w = tier.begin_write(&digest, Some(bytes.len() as u64)).await.unwrap();
    w.append(bytes.clone()).await.unwrap();
    w.commit(Verified::of(&digest, bytes).unwrap()).await.unwrap();
    digest
}

async fn absent<T: BlobTier>(tier: &T, digest: &Digest) {
    assert_eq!(tier.len(digest).await.unwrap(), None, "len of {digest}");
    assert!(tier.read(digest).await.unwrap().is_none(), "read of {digest}");
    assert!(!tier.scan().await.unwrap().iter().any(|(d, _)| d == digest), "scan has {digest}");
}

/// A write is not visible before it commits, and commits only with a proof for what it wrote.
async fn verify_before_visible<T: Subject>(make: impl Fn() -> Made<T>) {
    let (tier, _keep) = make();
    let bytes = content(300_000, 1);
    let digest = Digest::of(&bytes);
    let mut w = tier.begin_write(&digest, None).await.unwrap();
    w.append(bytes.slice(..100_000)).await.unwrap();
    absent(&tier, &digest).await;
    let refused = w.commit(Verified::of(&digest, &bytes).unwrap()).await;
    assert!(refused.is_err(), "a proof for more than was written is refused");
    absent(&tier, &digest).await;

    let mut w = tier.begin_write(&digest, Some(bytes.len() as u64)).await.unwrap();
    w.append(bytes.clone()).await.unwrap();
    absent(&tier, &digest).await;
    assert!(Verified::of(&digest, &bytes[1..]).is_err(), "wrong bytes get no proof");
    w.commit(Verified::of(&digest, &bytes).unwrap()).await.unwrap();
    assert_eq!(tier.len(&digest).await.unwrap(), Some(bytes.len() as u64));
    assert_eq!(tier.read(&digest).await.unwrap().unwrap(), bytes);
}

/// A write dropped before it commits leaves no object, nothing staged, the same usage.
async fn dropped_write_leaves_nothing<T: Subject>(make: impl Fn() -> Made<T>) {
    let (tier, _keep) = make();
    put(&tier, &content(1000, 2)).await;
    let before = tier.usage().await;
    for announced in [true, false] {
        let bytes = content(200_000, 3);
        let digest = Digest::of(&bytes);
        let len = announced.then_some(bytes.len() as u64);
        let mut w = tier.begin_write(&digest, len).await.unwrap();
        w.append(bytes.slice(..50_000)).await.unwrap();
        drop(w);
        absent(&tier, &digest).await;
        assert_eq!(tier.leftovers(), 0, "nothing staged is left");
        assert_eq!(tier.usage().await, before);
    }
}

/// Followers of a write see its written length grow and the bytes written so far.
async fn followers_see_a_growing_write<T: Subject>(make: impl Fn() -> Made<T>) {
    let (tier, _keep) = make();
    let bytes = content(256 * 1024, 4);
    let digest = Digest::of(&bytes);
    let mut w = tier.begin_write(&digest, Some(bytes.len() as u64)).await.unwrap();
    let view = w.view();
    let mut watched = view.written();
    let follower = tokio::spawn({
        let (view, bytes) = (view.clone(), bytes.clone());
        async move { follow_to(&view, &bytes).await }
    });
    let mut at = 0;
    for step in [1usize, 4095, 60_000, 131_072, 1] {
        tokio::task::yield_now().await;
        w.append(bytes.slice(at..at + step)).await.unwrap();
        at += step;
        assert!(watched.has_changed().unwrap(), "an append is seen");
        let n = *watched.borrow_and_update();
        assert_eq!(n, at as u64);
        assert_eq!(view.read_written(0..n).await.unwrap(), bytes.slice(..at));
        assert!(view.read_written(0..n + 1).await.is_err(), "past what is written is refused");
    }
    w.append(bytes.slice(at..)).await.unwrap();
    let seen = follower.await.unwrap();
    assert!(seen.windows(2).all(|p| p[0] < p[1]), "lengths grow: {seen:?}");
    assert_eq!(seen.last(), Some(&(bytes.len() as u64)));
    w.commit(Verified::of(&digest, &bytes).unwrap()).await.unwrap();
}

/// Reads what is written as it grows, checking each new part; returns the lengths seen.
async fn follow_to<V: WrittenView>(view: &V, bytes: &Bytes) -> Vec<u64> {
    let (mut rx, mut pos, mut seen) = (view.written(), 0u64, Vec::new());
    while pos < bytes.len() as u64 {
        rx.changed().await.expect("the writer is alive");
        let n = *rx.borrow_and_update();
        if n > pos {
            let part = view.read_written(pos..n).await.unwrap();
            assert_eq!(part, bytes.slice(pos as usize..n as usize), "bytes {pos}..{n}");
            seen.push(n);
            pos = n;
        }
    }
    seen
}

/// Ranges: the first byte, the last, the whole; empty and past-the-end ones are refused.
async fn ranges_at_the_edges<T: Subject>(make: impl Fn() -> Made<T>) {
    let (tier, _keep) = make();
    let bytes = content(10_000, 5);
    let digest = put(&tier, &bytes).await;
    let n = bytes.len() as u64;
    let read = |r: std::ops::Range<u64>| tier.read_range(&digest, r);
    assert_eq!(read(0..1).await.unwrap().unwrap(), bytes.slice(..1));
    assert_eq!(read(n - 1..n).await.unwrap().unwrap(), bytes.slice(bytes.len() - 1..));
    assert_eq!(read(0..n).await.unwrap().unwrap(), bytes);
    let backwards = std::ops::Range { start: 5, end: 2 };
    for refused in [3..3, 0..0, n..n + 1, n - 1..n + 1, backwards] {
        let e = read(refused.clone()).await.expect_err("refused");
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{refused:?}");
    }
    let other = Digest::of(b"not held");
    assert!(tier.read_range(&other, 0..1).await.unwrap().is_none());
}

/// Bytes read before a remove stay valid after it.
async fn remove_under_a_reader<T: Subject>(make: impl Fn() -> Made<T>) {
    let (tier, _keep) = make();
    let bytes = content(70_000, 6);
    let digest = put(&tier, &bytes).await;
    let held = tier.read(&digest).await.unwrap().unwrap();
    let part = tier.read_range(&digest, 10..20).await.unwrap().unwrap();
    assert_eq!(tier.remove(&digest).await.unwrap(), bytes.len() as u64);
    absent(&tier, &digest).await;
    assert_eq!(held, bytes);
    assert_eq!(part, bytes.slice(10..20));
    assert_eq!(tier.remove(&digest).await.unwrap(), 0, "a second remove frees nothing");
}

/// Usage counts committed objects once each, and what remove frees.
async fn usage_follows_writes_and_removes<T: Subject>(make: impl Fn() -> Made<T>) {
    let (tier, _keep) = make();
    assert_eq!(tier.usage().await, Usage::default());
    let (a, b) = (content(5000, 7), content(12_345, 8));
    let da = put(&tier, &a).await;
    let db = put(&tier, &b).await;
    let both = (a.len() + b.len()) as u64;
    assert_eq!(tier.usage().await, Usage { bytes: both, objects: 2 });
    put(&tier, &a).await;
    assert_eq!(tier.usage().await, Usage { bytes: both, objects: 2 }, "a rewrite counts once");
    let mut scanned = tier.scan().await.unwrap();
    scanned.sort();
    let mut want = vec![(da.clone(), a.len() as u64), (db, b.len() as u64)];
    want.sort();
    assert_eq!(scanned, want);
    tier.remove(&da).await.unwrap();
    assert_eq!(tier.usage().await, Usage { bytes: b.len() as u64, objects: 1 });
    tier.remove(&da).await.unwrap();
    assert_eq!(tier.usage().await, Usage { bytes: b.len() as u64, objects: 1 });
}

fn memory() -> Made<MemoryTier> {
    (MemoryTier::new(64 << 20, 1 << 20), None)
}

fn disk() -> Made<Arc<DiskTier>> {
    let dir = tempfile::tempdir().unwrap();
    let tier = DiskTier::open(dir.path(), 64 << 20).unwrap();
    (Arc::new(tier), Some(dir))
}

fn bucket() -> Made<BucketTier> {
    (BucketTier::new(Arc::new(object_store::memory::InMemory::new()), "berth-test", 64 << 20), None)
}

/// One test per (tier, property).
macro_rules! conformance {
    ($tier:ident: $($property:ident),* $(,)?) => {
        mod $tier {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $property() {
                    super::$property(super::$tier).await;
                }
            )*
        }
    };
}

conformance!(memory: verify_before_visible, dropped_write_leaves_nothing, followers_see_a_growing_write,
    ranges_at_the_edges, remove_under_a_reader, usage_follows_writes_and_removes);
conformance!(bucket: verify_before_visible, dropped_write_leaves_nothing, followers_see_a_growing_write,
    ranges_at_the_edges, remove_under_a_reader, usage_follows_writes_and_removes);
conformance!(disk: verify_before_visible, dropped_write_leaves_nothing, followers_see_a_growing_write,
    ranges_at_the_edges, remove_under_a_reader, usage_follows_writes_and_removes);
