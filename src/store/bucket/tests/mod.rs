//! The bucket below the disk, in process: `object_store`'s in-memory store behind a wrapper
//! that counts requests and can stop answering. Fills from it, wrong and foreign objects,
//! a bucket that does not answer, uploads (whole and in parts), manifests.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    Attribute, Attributes, CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult,
};

use super::Bucket;
use crate::config::{Config, Storage};
use crate::oci::digest::Digest;
use crate::store::body;
use crate::store::fill::Source;
use crate::store::Store;

/// The in-memory store, counting GETs and PUTs, hanging every request while `hang` is set.
#[derive(Debug, Default)]
struct Faulty {
    inner: InMemory,
    hang: AtomicBool,
    gets: AtomicU32,
    /// GETs of a range (resumes).
    ranged: AtomicU32,
    puts: AtomicU32,
    /// Object bodies stop (and hang) after this many bytes, when set.
    stall_after: std::sync::Mutex<Option<usize>>,
    /// The next whole-object body is cut after this many bytes (the object replaced by the
    /// given bytes first, when there are some).
    cut_once: std::sync::Mutex<Option<(usize, Option<Bytes>)>>,
}

impl std::fmt::Display for Faulty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Faulty")
    }
}

impl Faulty {
    async fn maybe_hang(&self) {
        if self.hang.load(Ordering::Relaxed) {
            std::future::pending::<()>().await;
        }
    }
}

#[async_trait::async_trait]
impl ObjectStore for Faulty {
    async fn put_opts(&self, l: &Path, p: PutPayload, o: PutOptions) -> object_store::Result<PutResult> {
        self.maybe_hang().await;
        self.puts.fetch_add(1, Ordering::Relaxed);
        self.inner.put_opts(l, p, o).await
    }
    async fn put_multipart_opts(
        &self,
        l: &Path,
        o: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.maybe_hang().await;
        self.puts.fetch_add(1, Ordering::Relaxed);
        self.inner.put_multipart_opts(l, o).await
    }
    async fn get_opts(&self, l: &Path, o: GetOptions) -> object_store::Result<GetResult> {
        self.maybe_hang().await;
        self.gets.fetch_add(1, Ordering::Relaxed);
        let whole = o.range.is_none() && !o.head;
        if o.range.is_some() {
            self.ranged.fetch_add(1, Ordering::Relaxed);
        }
        let got = self.inner.get_opts(l, o).await?;
        let cut = self.cut_once.lock().unwrap().take_if(|_| whole);
        if let Some((limit, replace)) = cut {
            let (meta, range, attributes, extensions) =
                (got.meta.clone(), got.range.clone(), got.attributes.clone(), got.extensions.clone());
            let body = got.bytes().await?;
            if let Some(other) = replace {
                self.inner.put_opts(l, PutPayload::from(other), PutOptions::default()).await?;
            }
            let cut = object_store::Error::Generic { store: "Faulty", source: "cut".into() };
            let head = futures::stream::iter([Ok(body.slice(..limit)), Err(cut)]).boxed();
            let payload = object_store::GetResultPayload::Stream(head);
            return Ok(GetResult { payload, meta, range, attributes, extensions });
        }
        let Some(limit) = *self.stall_after.lock().unwrap() else { return Ok(got) };
        let (meta, range, attributes, extensions) =
            (got.meta.clone(), got.range.clone(), got.attributes.clone(), got.extensions.clone());
        let body = got.bytes().await?;
        let head = futures::stream::iter([Ok(body.slice(..limit.min(body.len())))]);
        let payload = object_store::GetResultPayload::Stream(head.chain(futures::stream::pending()).boxed());
        Ok(GetResult { payload, meta, range, attributes, extensions })
    }
    fn delete_stream(
        &self,
        l: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(l)
    }
    fn list(&self, p: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(p)
    }
    async fn list_with_delimiter(&self, p: Option<&Path>) -> object_store::Result<ListResult> {
        self.maybe_hang().await;
        self.inner.list_with_delimiter(p).await
    }
    async fn copy_opts(&self, f: &Path, t: &Path, o: CopyOptions) -> object_store::Result<()> {
        self.inner.copy_opts(f, t, o).await
    }
}

fn bucket_config() -> crate::config::Bucket {
    let text = "[server]\ndefault_registry = \"test\"\n[bucket]\nurl = \"s3://berth-test/fleet\"\ntimeout = \"300ms\"\nfill_lease = \"3s\"\n[[registry]]\nhost = \"test\"\nendpoint = \"https://test.invalid\"\n";
    Config::parse(text).unwrap().bucket.unwrap()
}

fn open(dir: &tempfile::TempDir, objects: &Arc<Faulty>) -> Arc<Store> {
    open_as(dir, objects, &dir.path().display().to_string(), None)
}

/// A store on the bucket whose berth is `identity`, signing its leases with `key`.
fn open_as(dir: &tempfile::TempDir, objects: &Arc<Faulty>, identity: &str, key: Option<&str>) -> Arc<Store> {
    let storage = Storage {
        dir: dir.path().to_owned(),
        memory_capacity: 16 << 20,
        memory_max_object: 64 << 10,
        disk_capacity: 256 << 20,
        max_fills: 4,
        max_blob_size: 64 << 20,
        fill_connections: 1,
        fill_connections_above: u64::MAX,
    };
    let objects: Arc<dyn ObjectStore> = objects.clone();
    let bucket = Bucket::new((objects.clone(), objects), &bucket_config(), identity);
    let bucket = match key {
        Some(k) => bucket.with_lease_key(crate::config::Secret::new(k)),
        None => bucket,
    };
    Store::open_with(&storage, Some(bucket)).unwrap()
}

fn content(n: usize, salt: u8) -> Bytes {
    (0..n).map(|i| ((i % 251) as u8) ^ salt).collect::<Vec<u8>>().into()
}

fn blob_path(d: &Digest) -> Path {
    Path::from(format!("fleet/v1/blobs/sha256/{}", d.hex()))
}

async fn put_object(objects: &Faulty, path: &Path, bytes: Bytes, registry: &str, media_type: Option<&str>) {
    let mut attributes = Attributes::new();
    attributes.insert(Attribute::Metadata("registry".into()), registry.to_owned().into());
    if let Some(t) = media_type {
        attributes.insert(Attribute::ContentType, t.to_owned().into());
    }
    let opts = PutOptions { attributes, ..PutOptions::default() };
    objects.inner.put_opts(path, PutPayload::from(bytes), opts).await.unwrap();
}

async fn object(objects: &Faulty, path: &Path) -> Option<(Bytes, Attributes)> {
    let got = objects.inner.get_opts(path, GetOptions::default()).await.ok()?;
    let attributes = got.attributes.clone();
    Some((got.bytes().await.unwrap(), attributes))
}

/// A fill's source: `bytes` in one piece, after `delay`; `asked` runs when it is asked.
pub(super) fn source_of(
    bytes: Bytes,
    delay: Duration,
    asked: impl FnOnce() + Send + 'static,
) -> futures::future::BoxFuture<'static, Result<Source, crate::error::Error>> {
    async move {
        asked();
        tokio::time::sleep(delay).await;
        let (len, body) = (Some(bytes.len() as u64), futures::stream::iter([Ok(bytes)]).boxed());
        Ok(Source { len, body, resume: None, rejected: None, hold: None, floor: None })
    }
    .boxed()
}

/// What a client of `fill` reads, once the fill has settled.
pub(super) async fn read_all(fill: Arc<crate::store::fill::Fill>) -> Vec<u8> {
    let mut body = body::follow(fill.clone(), 0, None);
    let mut out = Vec::new();
    while let Some(b) = body.next().await {
        out.extend_from_slice(&b.unwrap());
    }
    fill.settled().await;
    out
}

/// Fills `digest` for registry "test" from a source that sends `bytes`, noting whether it
/// was asked; returns what a client of the fill read.
async fn fill(store: &Arc<Store>, digest: &Digest, bytes: Bytes, asked: Arc<AtomicBool>) -> Vec<u8> {
    let fetch = source_of(bytes, Duration::ZERO, move || asked.store(true, Ordering::Relaxed));
    read_all(store.fill(digest, "test", fetch).0).await
}

/// Waits until `check` holds, for up to 5 s.
async fn eventually(what: &str, check: impl AsyncFn() -> bool) {
    let until = Instant::now() + Duration::from_secs(5);
    while !check().await {
        assert!(Instant::now() < until, "{what}: not within 5 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_fill_is_answered_from_the_bucket_and_its_source_is_not_asked() {
    let (dir, objects) = (tempfile::tempdir().unwrap(), Arc::new(Faulty::default()));
    let store = open(&dir, &objects);
    let bytes = content(300_000, 0);
    let d = Digest::of(&bytes);
    put_object(&objects, &blob_path(&d), bytes.clone(), "test", None).await;
    let asked = Arc::new(AtomicBool::new(false));
    assert_eq!(fill(&store, &d, Bytes::new(), asked.clone()).await, bytes);
    assert!(!asked.load(Ordering::Relaxed), "the fill's source was asked though the bucket had the blob");
    assert!(store.disk.len(&d).unwrap() == Some(300_000), "a bucket hit is kept on disk");
    let puts = objects.puts.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(objects.puts.load(Ordering::Relaxed), puts, "a blob read from the bucket was uploaded again");
}

#[tokio::test]
async fn a_wrong_object_is_never_served_and_is_replaced_by_the_verified_copy() {
    let (dir, objects) = (tempfile::tempdir().unwrap(), Arc::new(Faulty::default()));
    let store = open(&dir, &objects);
    let bytes = content(300_000, 0);
    let d = Digest::of(&bytes);
    // Same length, other bytes: only the hash can tell.
    put_object(&objects, &blob_path(&d), content(300_000, 7), "test", None).await;
    let asked = Arc::new(AtomicBool::new(false));
    assert_eq!(fill(&store, &d, bytes.clone(), asked.clone()).await, bytes, "a client read the wrong object");
    assert!(asked.load(Ordering::Relaxed), "the wrong object was not replaced from the source");
    eventually("the object replaced", async || {
        object(&objects, &blob_path(&d)).await.is_some_and(|(b, _)| b == bytes)
    })
    .await;
}

#[tokio::test]
async fn an_object_uploaded_under_another_registry_is_not_used_for_this_one() {
    let (dir, objects) = (tempfile::tempdir().unwrap(), Arc::new(Faulty::default()));
    let store = open(&dir, &objects);
    let bytes = content(1000, 0);
    let d = Digest::of(&bytes);
    put_object(&objects, &blob_path(&d), bytes.clone(), "other.example", None).await;
    let asked = Arc::new(AtomicBool::new(false));
    assert_eq!(fill(&store, &d, bytes.clone(), asked.clone()).await, bytes);
    assert!(asked.load(Ordering::Relaxed), "another registry's object answered this registry's fill");
}

#[tokio::test]
async fn a_bucket_that_does_not_answer_costs_at_most_its_timeout_then_is_left_alone() {
    let (dir, objects) = (tempfile::tempdir().unwrap(), Arc::new(Faulty::default()));
    let store = open(&dir, &objects);
    objects.hang.store(true, Ordering::Relaxed);
    let bytes = content(1000, 0);
    let started = Instant::now();
    let asked = Arc::new(AtomicBool::new(false));
    assert_eq!(fill(&store, &Digest::of(&bytes), bytes.clone(), asked.clone()).await, bytes);
    assert!(asked.load(Ordering::Relaxed));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "a hung bucket held a fill for {:?}",
        started.elapsed()
    );
    // In its backoff, the next fill does not wait for it at all.
    let other = content(1000, 1);
    let started = Instant::now();
    fill(&store, &Digest::of(&other), other.clone(), Arc::default()).await;
    assert!(started.elapsed() < Duration::from_millis(250), "a bucket in backoff was waited for");
    assert!(!store.bucket().unwrap().up());
}

#[tokio::test]
async fn a_fetched_blob_is_uploaded_with_its_registry_whole_or_in_parts() {
    let (dir, objects) = (tempfile::tempdir().unwrap(), Arc::new(Faulty::default()));
    let store = open(&dir, &objects);
    for n in [5_000, super::upload::PART * 2 + 1234] {
        let bytes = content(n, 3);
        let d = Digest::of(&bytes);
        fill(&store, &d, bytes.clone(), Arc::default()).await;
        eventually("the upload", async || object(&objects, &blob_path(&d)).await.is_some()).await;
        let (stored, attributes) = object(&objects, &blob_path(&d)).await.unwrap();
        assert_eq!(stored, bytes, "{n} bytes uploaded wrong");
        assert_eq!(attributes.get(&Attribute::Metadata("registry".into())).map(|v| v.as_ref()), Some("test"));
        let parts = attributes.get(&Attribute::Metadata("parts".into())).expect("part checksums uploaded");
        assert_eq!(
            super::parts::Parts::parse(parts.as_ref(), n as u64),
            Some(super::parts::Parts::of(&bytes))
        );
    }
    // A new node on the same bucket fills from it.
    let (dir2, asked) = (tempfile::tempdir().unwrap(), Arc::new(AtomicBool::new(false)));
    let fresh = open(&dir2, &objects);
    let bytes = content(5_000, 3);
    assert_eq!(fill(&fresh, &Digest::of(&bytes), Bytes::new(), asked.clone()).await, bytes);
    assert!(!asked.load(Ordering::Relaxed));
}

#[tokio::test]
async fn manifests_come_from_the_bucket_only_whole_verified_and_typed() {
    let (dir, objects) = (tempfile::tempdir().unwrap(), Arc::new(Faulty::default()));
    let store = open(&dir, &objects);
    let manifest = Bytes::from_static(
        br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#,
    );
    let d = Digest::of(&manifest);
    store
        .put_verified(&d, manifest.clone(), Some("application/vnd.oci.image.manifest.v1+json"), "test")
        .await
        .unwrap();
    let path = Path::from(format!("fleet/v1/manifests/sha256/{}", d.hex()));
    eventually("the manifest upload", async || object(&objects, &path).await.is_some()).await;
    let fresh_dir = tempfile::tempdir().unwrap();
    let fresh = open(&fresh_dir, &objects);
    let media_type = fresh.manifest_from_bucket(&d, "test").await;
    assert_eq!(media_type.as_deref(), Some("application/vnd.oci.image.manifest.v1+json"));
    assert_eq!(fresh.get(&d).await.unwrap().bytes, manifest);
    assert!(fresh.manifest_from_bucket(&d, "other.example").await.is_none(), "served across registries");

    // Wrong bytes, no media type, a hostile media type: none is served, each is deleted.
    for (bytes, media_type) in [
        (Bytes::from_static(b"{}"), Some("application/json")),
        (manifest.clone(), None),
        (manifest.clone(), Some("text/html\r\nx: y")),
        (manifest.clone(), Some("text/html")),
        // A known type, but not the one the manifest names.
        (manifest.clone(), Some("application/vnd.oci.image.index.v1+json")),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let node = open(&dir, &objects);
        put_object(&objects, &path, bytes, "test", media_type).await;
        assert!(node.manifest_from_bucket(&d, "test").await.is_none(), "{media_type:?} served");
        assert!(object(&objects, &path).await.is_none(), "a rejected manifest object was left in the bucket");
    }
}

mod fleet;
mod parts;
