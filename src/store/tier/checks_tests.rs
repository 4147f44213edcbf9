//! `Checks` driven directly: reads across changes, shared and abandoned hashes, removals.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

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

/// Waits until no hash is under way.
async fn settled(checks: &Checks) {
    for _ in 0..200 {
        if checks.idle() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("a hash left behind");
}

#[tokio::test]
async fn a_reader_of_the_old_file_is_not_vouched_for_by_the_new_files_check() {
    let (checks, removed) = (Checks::default(), Arc::new(AtomicU32::new(0)));
    let d = Digest::of(b"good");
    let damaged = Bytes::from_static(b"bad!");
    // Reader B maps a damaged file; then a fill renames a verified one over it.
    let b_before = checks.seen(&d);
    let b_after = checks.seen(&d);
    checks.publishing(&d).checked();
    // Reader A maps the new file: trusted without a hash.
    let a = checks.seen(&d);
    assert!(checks.verdict(&d, &Bytes::from_static(b"good"), a, checks.seen(&d), counting(&removed)).await);
    assert_eq!(checks.hashes(), 0, "a checked object was hashed");
    // B's stable read of the old version is not trusted, and its failure removes nothing new.
    assert!(
        !checks.verdict(&d, &damaged, b_before, b_after, counting(&removed)).await,
        "served on the new mark"
    );
    settled(&checks).await;
    assert_eq!(removed.load(Ordering::Relaxed), 0, "the new file was removed");
    assert!(checks.verdict(&d, &Bytes::from_static(b"good"), a, checks.seen(&d), counting(&removed)).await);
}

#[tokio::test]
async fn a_read_across_or_during_a_change_trusts_nothing_and_records_nothing() {
    let (checks, removed) = (Checks::default(), Arc::new(AtomicU32::new(0)));
    let good = Bytes::from_static(b"good");
    let d = Digest::of(&good);
    checks.publishing(&d).checked();
    // A read that a change began under: hashed alone, even though a mark exists.
    let before = checks.seen(&d);
    let change = checks.publishing(&d);
    let after = checks.seen(&d);
    assert!(!checks.verdict(&d, &Bytes::from_static(b"bad!"), before, after, counting(&removed)).await);
    // A read while the change is under way: the same.
    let during = checks.seen(&d);
    assert!(checks.verdict(&d, &good, during, checks.seen(&d), counting(&removed)).await);
    drop(change);
    // None of them recorded a verdict or removed anything; the change left the object unchecked.
    assert_eq!(checks.hashes(), 0, "a lone hash was recorded");
    assert_eq!(removed.load(Ordering::Relaxed), 0);
    let now = checks.seen(&d);
    assert!(checks.verdict(&d, &good, now, checks.seen(&d), counting(&removed)).await);
    assert_eq!(checks.hashes(), 1, "an unchecked object was trusted after an aborted change");
}

#[tokio::test]
async fn a_failed_hash_is_shared_removes_once_and_survives_its_readers_leaving() {
    let (checks, removed) = (Checks::default(), Arc::new(AtomicU32::new(0)));
    let d = Digest::of(&vec![1u8; 16 << 20]);
    let damaged = Bytes::from(vec![0u8; 16 << 20]);
    let seen = checks.seen(&d);
    // The first reader leaves at once: the hash still runs to its record.
    let first = checks.verdict(&d, &damaged, seen, seen, counting(&removed));
    drop(tokio::time::timeout(Duration::from_millis(1), first).await);
    assert!(!checks.verdict(&d, &damaged, seen, seen, counting(&removed)).await);
    settled(&checks).await;
    assert_eq!(removed.load(Ordering::Relaxed), 1, "removed more or less than once");
    assert_eq!(checks.hashes(), 1, "the second reader hashed again");
    // A late reader of the removed object is not served it either.
    assert!(!checks.verdict(&d, &damaged, seen, seen, counting(&removed)).await);
    settled(&checks).await;
    // Once removed and idle, the digest is forgotten: the map holds what is on disk.
    assert!(checks.state().digests.is_empty());
}
