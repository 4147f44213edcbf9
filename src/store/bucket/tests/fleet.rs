//! The fleet's shared state in the bucket: tag mappings and the fill lease.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use object_store::path::Path;
use object_store::{ObjectStore, PutOptions, PutPayload};

use super::{content, eventually, object, open, read_all, source_of, Faulty};
use crate::oci::digest::Digest;
use crate::store::Store;

#[tokio::test]
async fn a_tag_mapping_is_shared_through_the_bucket_and_a_malformed_one_is_none() {
    let (dir, objects) = (tempfile::tempdir().unwrap(), Arc::new(Faulty::default()));
    let store = open(&dir, &objects);
    let entry = crate::store::meta::TagEntry {
        digest: Digest::of(b"m").to_string(),
        media_type: "application/vnd.oci.image.index.v1+json".into(),
        size: 1,
        checked_at: 7,
    };
    store.share_tag("test", "library/alpine", "3.20", &entry);
    let path = Path::from("fleet/v1/tags/test/library/alpine/3.20");
    eventually("the tag object", async || object(&objects, &path).await.is_some()).await;
    let other_dir = tempfile::tempdir().unwrap();
    let other = open(&other_dir, &objects);
    assert_eq!(other.fleet_tag("test", "library/alpine", "3.20").await, Some(entry.clone()));
    assert_eq!(
        other.fleet_tag("other.example", "library/alpine", "3.20").await,
        None,
        "another registry's tag"
    );
    assert_eq!(other.fleet_tag("test", "library/alpine", "3.21").await, None);

    let huge = format!(
        "{{\"digest\":\"{}\",\"media_type\":\"{}\",\"size\":1,\"checked_at\":1,\"x\":\"{}\"}}",
        entry.digest,
        entry.media_type,
        "a".repeat(20_000)
    );
    for hostile in [
        huge,
        "not json".to_owned(),
        format!(
            "{{\"digest\":\"sha256:../../x\",\"media_type\":\"{}\",\"size\":1,\"checked_at\":1}}",
            entry.media_type
        ),
        format!(
            "{{\"digest\":\"{}\",\"media_type\":\"text/html\\r\\nx: y\",\"size\":1,\"checked_at\":1}}",
            entry.digest
        ),
        format!(
            "{{\"digest\":\"{}\",\"media_type\":\"{}\",\"size\":99999999999,\"checked_at\":1}}",
            entry.digest, entry.media_type
        ),
    ] {
        objects
            .inner
            .put_opts(&path, PutPayload::from(hostile.clone()), PutOptions::default())
            .await
            .unwrap();
        assert_eq!(
            other.fleet_tag("test", "library/alpine", "3.20").await,
            None,
            "{}",
            &hostile[..80.min(hostile.len())]
        );
    }
}

/// Fills `digest` for "test" as a fetch from upstream (claimed fleet-wide) from a source that
/// answers after `delay` and counts its calls; returns what a client read.
async fn fill_claimed(
    store: &Arc<Store>,
    digest: &Digest,
    bytes: Bytes,
    delay: Duration,
    calls: Arc<AtomicU32>,
) -> Vec<u8> {
    let fetch = source_of(bytes, delay, move || {
        calls.fetch_add(1, Ordering::Relaxed);
    });
    read_all(store.fill_from_upstream(digest, "test", fetch).0).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_berths_racing_for_one_blob_fetch_it_from_upstream_once() {
    let objects = Arc::new(Faulty::default());
    let dirs: Vec<_> = (0..8).map(|_| tempfile::tempdir().unwrap()).collect();
    let stores: Vec<_> = dirs.iter().map(|d| open(d, &objects)).collect();
    let bytes = content(2 << 20, 5);
    let d = Digest::of(&bytes);
    let calls = Arc::new(AtomicU32::new(0));
    let pulls =
        stores.iter().map(|s| fill_claimed(s, &d, bytes.clone(), Duration::from_millis(300), calls.clone()));
    for got in futures::future::join_all(pulls).await {
        assert!(got == bytes, "a berth served other bytes");
    }
    assert_eq!(
        calls.load(Ordering::Relaxed),
        1,
        "eight berths on one bucket fetched one blob from upstream more than once"
    );
    eventually("the lease released", async || {
        object(&objects, &Path::from(format!("fleet/v1/fills/{}", d.hex()))).await.is_none()
    })
    .await;
}

#[tokio::test]
async fn a_lease_whose_holder_died_expires_and_the_waiters_fetch() {
    let (dir, objects) = (tempfile::tempdir().unwrap(), Arc::new(Faulty::default()));
    let store = open(&dir, &objects);
    let bytes = content(10_000, 9);
    let d = Digest::of(&bytes);
    // A holder that will never upload, whose claim says it lasts a day: capped at fill_lease.
    let lease = format!(
        "{{\"holder\":\"dead\",\"expires_at\":{}}}",
        crate::store::bucket::lease::now_secs() + 86_400
    );
    let path = Path::from(format!("fleet/v1/fills/{}", d.hex()));
    objects.inner.put_opts(&path, PutPayload::from(lease), PutOptions::default()).await.unwrap();
    let (calls, started) = (Arc::new(AtomicU32::new(0)), Instant::now());
    assert_eq!(fill_claimed(&store, &d, bytes.clone(), Duration::ZERO, calls.clone()).await, bytes);
    assert_eq!(calls.load(Ordering::Relaxed), 1, "the waiter never fetched after the lease expired");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(8),
        "waited {waited:?} for a 3 s lease"
    );
}

/// Fills `digest` for `origin` from a source that sends `bytes`; whether it was asked.
async fn fill_as(store: &Arc<Store>, digest: &Digest, origin: &str, bytes: Bytes) -> bool {
    let asked = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = asked.clone();
    let fetch = source_of(bytes, Duration::ZERO, move || flag.store(true, Ordering::Relaxed));
    read_all(store.fill(digest, origin, fetch).0).await;
    asked.load(Ordering::Relaxed)
}

#[tokio::test]
async fn a_digest_two_registries_serve_is_labelled_for_both_and_used_by_both() {
    let objects = Arc::new(Faulty::default());
    let bytes = content(20_000, 11);
    let d = Digest::of(&bytes);
    let path = Path::from(format!("fleet/v1/blobs/sha256/{}", d.hex()));
    let label = async || {
        let got = objects.inner.get_opts(&path, object_store::GetOptions::default()).await.ok()?;
        got.attributes.get(&object_store::Attribute::Metadata("registry".into())).map(|v| v.to_string())
    };
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    assert!(fill_as(&open(&dirs[0], &objects), &d, "test", bytes.clone()).await);
    eventually("test's upload", async || label().await.as_deref() == Some("test")).await;
    assert!(
        fill_as(&open(&dirs[1], &objects), &d, "other.example", bytes.clone()).await,
        "served across registries"
    );
    eventually("both labels", async || label().await.as_deref() == Some("other.example,test")).await;
    assert!(!fill_as(&open(&dirs[2], &objects), &d, "test", Bytes::new()).await, "test lost its label");
    assert!(!fill_as(&open(&dirs[3], &objects), &d, "other.example", Bytes::new()).await);
}
