//! Objects as they stream: with part checksums, shown a part at a time, a stall or a wrong
//! part finished from the fill's own source where the client was, forged checksums failing
//! the clients, and checksums that do not describe the object ignored; a cut body resumed
//! from the bucket, only from the same object.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use object_store::path::Path;
use object_store::{Attribute, Attributes, ObjectStore, PutOptions, PutPayload};

use super::{blob_path, content, fill, object, open, read_all, source_of, Faulty};
use crate::oci::digest::Digest;
use crate::store::body;
use crate::store::bucket::parts::Parts;
use crate::store::bucket::Kind;
use crate::store::fill::Source;

/// Puts `bytes` at `path` for "test", with the part checksums of `sums_of`.
async fn put_with_parts(objects: &Faulty, path: &Path, bytes: Bytes, sums_of: &[u8]) {
    let mut attributes = Attributes::new();
    attributes.insert(Attribute::Metadata("registry".into()), "test".into());
    attributes.insert(Attribute::Metadata("parts".into()), Parts::of(sums_of).label().into());
    let opts = PutOptions { attributes, ..PutOptions::default() };
    objects.inner.put_opts(path, PutPayload::from(bytes), opts).await.unwrap();
}

/// A fill's source that sends `bytes` and resumes from any offset, noting that it was asked
/// and each offset it resumed from.
fn resumable_source_of(
    bytes: Bytes,
    asked: Arc<AtomicBool>,
    resumed: Arc<std::sync::Mutex<Vec<u64>>>,
) -> futures::future::BoxFuture<'static, Result<Source, crate::error::Error>> {
    async move {
        asked.store(true, Ordering::Relaxed);
        let rest = bytes.clone();
        let resume: crate::store::fill::Resume = Box::new(move |from| {
            resumed.lock().unwrap().push(from);
            let body = futures::stream::iter([Ok(rest.slice(from as usize..))]).boxed();
            async move { Ok(crate::store::fill::Resumed { body, skip: 0 }) }.boxed()
        });
        let (len, body) = (Some(bytes.len() as u64), futures::stream::iter([Ok(bytes)]).boxed());
        Ok(Source { len, body, resume: Some(resume), rejected: None, hold: None, floor: None })
    }
    .boxed()
}

/// A store on a fresh bucket holding a blob of `len` bytes (from `salt`) with its part
/// checksums: the store, the bucket, the bytes and their digest.
async fn checked_object(
    len: usize,
    salt: u8,
) -> (tempfile::TempDir, Arc<Faulty>, Arc<crate::store::Store>, Bytes, Digest) {
    let (dir, objects) = (tempfile::tempdir().unwrap(), Arc::new(Faulty::default()));
    let store = open(&dir, &objects);
    let bytes = content(len, salt);
    let d = Digest::of(&bytes);
    put_with_parts(&objects, &blob_path(&d), bytes.clone(), &bytes).await;
    (dir, objects, store, bytes, d)
}

#[tokio::test]
async fn an_object_with_part_checksums_is_shown_a_part_at_a_time_and_a_stall_is_finished_from_the_source() {
    let (_dir, objects, store, bytes, d) = checked_object(12 << 20, 5).await;
    // Two 4 MiB parts and a quarter arrive, then the bucket hangs.
    *objects.stall_after.lock().unwrap() = Some(9 << 20);
    let (asked, resumed) = (Arc::new(AtomicBool::new(false)), Arc::default());
    let fetch = resumable_source_of(bytes.clone(), asked.clone(), Arc::clone(&resumed));
    let mut body = body::follow(store.fill(&d, "test", fetch).0, 0, None);
    let mut got = Vec::new();
    while got.len() < 8 << 20 {
        got.extend_from_slice(&body.next().await.unwrap().unwrap());
    }
    assert_eq!(got.len(), 8 << 20, "a client was shown bytes of a part that was not checked");
    assert!(!asked.load(Ordering::Relaxed), "the checked parts were not shown before the read gave up");
    while let Some(b) = body.next().await {
        got.extend_from_slice(&b.unwrap());
    }
    assert!(got == bytes, "the client read {} bytes, not the blob", got.len());
    assert_eq!(*resumed.lock().unwrap(), [8 << 20], "the rest was not asked for from where the client was");
}

#[tokio::test]
async fn a_wrong_part_is_replaced_from_the_source_without_the_client_noticing() {
    let (_dir, objects, store, bytes, d) = checked_object(12 << 20, 5).await;
    let mut wrong = bytes.to_vec();
    wrong[(9 << 20) + 3] ^= 0x40;
    put_with_parts(&objects, &blob_path(&d), wrong.into(), &bytes).await;
    let (asked, resumed) = (Arc::new(AtomicBool::new(false)), Arc::default());
    let fetch = resumable_source_of(bytes.clone(), asked, Arc::clone(&resumed));
    let got = read_all(store.fill(&d, "test", fetch).0).await;
    assert!(got == bytes, "the client read {} bytes, not the blob", got.len());
    assert_eq!(*resumed.lock().unwrap(), [8 << 20], "not resumed at the start of the wrong part");
    assert!(object(&objects, &blob_path(&d)).await.is_none(), "the wrong object was left in the bucket");
}

#[tokio::test]
async fn checksums_written_with_wrong_bytes_fail_the_clients_and_never_complete_them() {
    let (_dir, objects, store, bytes, d) = checked_object(12 << 20, 5).await;
    // Someone who can write to the bucket writes wrong bytes with their own checksums.
    let forged = content(12 << 20, 9);
    put_with_parts(&objects, &blob_path(&d), forged.clone(), &forged).await;
    let fetch = resumable_source_of(bytes.clone(), Arc::default(), Arc::default());
    let fill = store.fill(&d, "test", fetch).0;
    let mut body = body::follow(fill.clone(), 0, Some(forged.len() as u64));
    let (mut n, mut failed) = (0, false);
    while let Some(b) = body.next().await {
        match b {
            Ok(b) => n += b.len(),
            Err(_) => failed = true,
        }
    }
    assert!(failed, "a forged object's client ended cleanly");
    assert!(n < forged.len(), "a forged object was sent whole");
    fill.settled().await;
    assert!(object(&objects, &blob_path(&d)).await.is_none(), "the forged object was left in the bucket");
    assert!(store.disk.len(&d).unwrap().is_none(), "a forged object was kept");
    // The next fill gets the blob from its source.
    let again = read_all(store.fill(&d, "test", source_of(bytes.clone(), Duration::ZERO, || ())).0).await;
    assert!(again == bytes);
}

#[tokio::test]
async fn checksums_that_do_not_describe_the_object_are_ignored_and_it_is_read_whole() {
    let objects = Arc::new(Faulty::default());
    let bytes = content(9 << 20, 2);
    let d = Digest::of(&bytes);
    for label in ["garbage".to_owned(), Parts::of(&bytes[..5 << 20]).label()] {
        let mut attributes = Attributes::new();
        attributes.insert(Attribute::Metadata("registry".into()), "test".into());
        attributes.insert(Attribute::Metadata("parts".into()), label.clone().into());
        let opts = PutOptions { attributes, ..PutOptions::default() };
        objects.inner.put_opts(&blob_path(&d), PutPayload::from(bytes.clone()), opts).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir, &objects);
        let asked = Arc::new(AtomicBool::new(false));
        assert!(fill(&store, &d, Bytes::new(), asked.clone()).await == bytes, "{label}");
        assert!(!asked.load(Ordering::Relaxed), "{label}: a good object was not used");
    }
}

#[tokio::test]
async fn a_cut_bucket_body_is_resumed_from_the_bucket_and_the_source_is_not_asked() {
    let (_dir, objects, store, bytes, d) = checked_object(10 << 20, 4).await;
    *objects.cut_once.lock().unwrap() = Some(((5 << 20) + 123, None));
    let asked = Arc::new(AtomicBool::new(false));
    assert!(fill(&store, &d, Bytes::new(), asked.clone()).await == bytes);
    assert!(!asked.load(Ordering::Relaxed), "a cut bucket read went to the source");
    assert_eq!(objects.ranged.load(Ordering::Relaxed), 1, "not resumed once");
    assert_eq!(store.disk.len(&d).unwrap(), Some(10 << 20), "a resumed bucket read is kept");
}

#[tokio::test]
async fn a_body_cut_while_the_object_is_replaced_is_not_resumed_from_the_new_object() {
    let (_dir, objects, store, bytes, d) = checked_object(10 << 20, 4).await;
    // Replaced with other bytes between the first GET and the resume: splicing the two would
    // show the client a tail the checksums it was given do not describe.
    *objects.cut_once.lock().unwrap() = Some(((5 << 20) + 123, Some(content(10 << 20, 8))));
    let (asked, resumed) = (Arc::new(AtomicBool::new(false)), Arc::default());
    let fetch = resumable_source_of(bytes.clone(), asked.clone(), Arc::clone(&resumed));
    let got = read_all(store.fill(&d, "test", fetch).0).await;
    assert!(got == bytes, "the client read {} bytes, not the blob", got.len());
    assert!(asked.load(Ordering::Relaxed), "resumed from a replaced object");
    assert_eq!(*resumed.lock().unwrap(), [4 << 20], "not finished from the source after the checked part");
    // Spliced, the new object's bytes would have failed the old checksums and been deleted.
    assert!(
        object(&objects, &blob_path(&d)).await.is_some(),
        "the new object was read as the rest of the old"
    );
}

#[tokio::test]
async fn an_older_upload_without_checksums_is_put_again_with_them_once() {
    let (dir, objects) = (tempfile::tempdir().unwrap(), Arc::new(Faulty::default()));
    let store = open(&dir, &objects);
    let bytes = content(5 << 20, 6);
    let d = Digest::of(&bytes);
    super::put_object(&objects, &blob_path(&d), bytes.clone(), "test", None).await;
    let bucket = store.bucket().unwrap();
    assert!(bucket.upload(&d, &Kind::Blob { origin: "test".into() }, bytes.clone()).await);
    let (stored, attributes) = object(&objects, &blob_path(&d)).await.unwrap();
    let parts = attributes.get(&Attribute::Metadata("parts".into())).expect("put again with checksums");
    assert!(stored == bytes && Parts::parse(parts.as_ref(), 5 << 20).is_some());
    let puts = objects.puts.load(Ordering::Relaxed);
    assert!(bucket.upload(&d, &Kind::Blob { origin: "test".into() }, bytes.clone()).await);
    assert_eq!(objects.puts.load(Ordering::Relaxed), puts, "an object with checksums was put again");
}
