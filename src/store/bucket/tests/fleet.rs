//! The fleet's shared state in the bucket: tag mappings and the fill lease.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use object_store::path::Path;
use object_store::{ObjectStore, PutOptions, PutPayload};

use super::{content, eventually, object, open, open_as, put_object, read_all, source_of, Faulty};
use crate::oci::digest::Digest;
use crate::store::bucket::Claimed;
use crate::store::fill::FromHolder;
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
    read_all(store.fill_from_upstream(digest, "test", fetch, None).0).await
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

/// A holder's answer as a test sees it: the URL the loser asked, and the source it got.
fn holder_answering(bytes: Option<Bytes>, asked: Arc<std::sync::Mutex<Vec<String>>>) -> FromHolder {
    Box::new(move |url: String| {
        asked.lock().unwrap().push(url);
        match bytes {
            Some(b) => source_of(b, Duration::ZERO, || {}),
            None => futures::FutureExt::boxed(async {
                Err(crate::error::Error::Unavailable("holder refused the connection".into()))
            }),
        }
    })
}

/// A loser's fill of `digest` with `holder`; what a client read and how often upstream was asked.
async fn fill_losing(
    store: &Arc<Store>,
    digest: &Digest,
    bytes: Bytes,
    holder: FromHolder,
) -> (Vec<u8>, u32) {
    let calls = Arc::new(AtomicU32::new(0));
    let counted = calls.clone();
    let fetch = source_of(bytes, Duration::ZERO, move || {
        counted.fetch_add(1, Ordering::Relaxed);
    });
    let got = read_all(store.fill_from_upstream(digest, "test", fetch, Some(holder)).0).await;
    (got, calls.load(Ordering::Relaxed))
}

/// A holder and a loser sharing one peer token on one bucket, and a blob of `n` bytes whose
/// lease the holder has won: the directories, the bucket, the loser, the bytes and digest.
async fn claimed_by_a_holder(
    n: usize,
    salt: u8,
) -> ([tempfile::TempDir; 2], Arc<Faulty>, Arc<Store>, Bytes, Digest) {
    let objects = Arc::new(Faulty::default());
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let holder = open_as(&dirs[0], &objects, "http://holder.test:5000/", Some("fleet-token"));
    let loser = open_as(&dirs[1], &objects, "http://loser.test:5000/", Some("fleet-token"));
    let bytes = content(n, salt);
    let d = Digest::of(&bytes);
    assert_eq!(holder.bucket.as_ref().unwrap().claim(&d).await, Claimed::Won);
    (dirs, objects, loser, bytes, d)
}

#[tokio::test]
async fn a_loser_streams_from_the_holder_whose_lease_verifies_under_its_peer_token() {
    let (_dirs, _objects, loser, bytes, d) = claimed_by_a_holder(300_000, 3).await;
    let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let started = Instant::now();
    let (got, upstream) =
        fill_losing(&loser, &d, bytes.clone(), holder_answering(Some(bytes.clone()), asked.clone())).await;
    assert!(got == bytes, "the loser served other bytes");
    assert_eq!(upstream, 0, "the loser asked upstream while the holder could be streamed from");
    assert_eq!(*asked.lock().unwrap(), ["http://holder.test:5000"], "the holder was asked at another URL");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the loser waited for the lease instead of streaming"
    );
}

#[tokio::test]
async fn a_lease_that_does_not_verify_names_nobody_the_loser_contacts() {
    let objects = Arc::new(Faulty::default());
    let loser_dir = tempfile::tempdir().unwrap();
    let loser = open_as(&loser_dir, &objects, "http://loser.test:5000/", Some("fleet-token"));
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    // Signed with another token; signed right but naming a URL with credentials and a path;
    // signed right but naming no URL; written by hand with no signature, naming the
    // instance-metadata address; signed right by a real holder but expired (an old lease put
    // back), or expiring a day from now.
    let holders = [
        open_as(&dirs[0], &objects, "http://holder.test:5000/", Some("another-token")),
        open_as(&dirs[1], &objects, "http://user:pw@holder.test:5000/x", Some("fleet-token")),
        open_as(&dirs[2], &objects, "holder:5000", Some("fleet-token")),
    ];
    let mut cases = Vec::new();
    for (i, h) in holders.iter().enumerate() {
        let bytes = content(20_000, 40 + i as u8);
        let d = Digest::of(&bytes);
        assert_eq!(h.bucket.as_ref().unwrap().claim(&d).await, Claimed::Won);
        cases.push((d, bytes));
    }
    let bytes = content(20_000, 50);
    let d = Digest::of(&bytes);
    let lease = format!(
        "{{\"holder\":\"http://169.254.169.254/\",\"expires_at\":{},\"mac\":\"{}\"}}",
        crate::store::bucket::lease::now_secs() + 60,
        "00".repeat(32)
    );
    let path = Path::from(format!("fleet/v1/fills/{}", d.hex()));
    objects.inner.put_opts(&path, PutPayload::from(lease), PutOptions::default()).await.unwrap();
    cases.push((d, bytes));
    let now = crate::store::bucket::lease::now_secs();
    for (salt, expires_at) in [(60u8, now - 10), (61, now + 86_400)] {
        let bytes = content(20_000, salt);
        let d = Digest::of(&bytes);
        let path = Path::from(format!("fleet/v1/fills/{}", d.hex()));
        let lease = crate::store::bucket::lease::signed_lease(
            "fleet-token",
            &path,
            "http://holder.test:5000/",
            expires_at,
        );
        objects.inner.put_opts(&path, PutPayload::from(lease), PutOptions::default()).await.unwrap();
        cases.push((d, bytes));
    }
    let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let fills = cases
        .iter()
        .map(|(d, b)| fill_losing(&loser, d, b.clone(), holder_answering(Some(b.clone()), asked.clone())));
    for (i, (got, upstream)) in futures::future::join_all(fills).await.into_iter().enumerate() {
        assert!(got == cases[i].1, "case {i}: other bytes");
        assert_eq!(upstream, 1, "case {i}: the loser did not fetch once the lease expired");
    }
    assert!(
        asked.lock().unwrap().is_empty(),
        "a lease that does not verify sent the loser to {:?}",
        asked.lock().unwrap()
    );
}

#[tokio::test]
async fn a_holder_that_cannot_be_streamed_from_is_waited_for_and_its_upload_read() {
    let (_dirs, objects, loser, bytes, d) = claimed_by_a_holder(50_000, 7).await;
    let (upload, path) = (objects.clone(), super::blob_path(&d));
    let later = bytes.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(600)).await;
        put_object(&upload, &path, later, "test", None).await;
    });
    let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (got, upstream) = fill_losing(&loser, &d, bytes.clone(), holder_answering(None, asked.clone())).await;
    assert!(got == bytes, "the loser served other bytes");
    assert_eq!(asked.lock().unwrap().len(), 1, "the holder was not asked first");
    assert_eq!(upstream, 0, "the loser fetched from upstream instead of reading the holder's upload");
}
