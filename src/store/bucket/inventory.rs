//! What the bucket GC reads and writes, all of it rebuilt by listing the bucket: objects with
//! their last access (the later of the object's and its access marker's time), manifests'
//! bytes (for the versions they form), fills in flight (their leases) and pins (markers that
//! berths refresh daily). Access markers (`v1/access/sha256/<hex>`) and pin markers
//! (`v1/pins/sha256/<hex>`) are empty objects written at most once a day per digest by each
//! berth, after a HEAD finds none from the last day; the pass deletes those that describe
//! nothing any more (see `Listing::stale`), and fill leases long expired. The pass itself is the registry layer's
//! (`registry/gc/bucket.rs`); one berth of the fleet runs it, the winner of `v1/gc`.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{GetOptions, PutMode, PutOptions, PutPayload};

use super::lease::now_secs;
use super::manifests::read_bounded;
use super::{count, Bucket, MANIFEST_MAX};
use crate::oci::digest::Digest;

/// How long a marker counts for: a day.
const DAY: u64 = 86_400;
/// The longest a whole listing may take.
const LISTING_BUDGET: Duration = Duration::from_secs(600);

/// One object of the bucket as the GC sees it; `T` is what the pass made of a manifest.
#[derive(Debug)]
pub(crate) struct Listed<T> {
    pub(crate) digest: Digest,
    pub(crate) size: u64,
    /// Seconds since the epoch: the later of its upload and its access marker.
    pub(crate) last_access: u64,
    /// What the pass's reader made of a manifest's bytes (verified against the digest);
    /// None for a blob, or for a manifest object that is not whole or not its digest's.
    pub(crate) manifest: Option<T>,
}

/// The bucket, listed.
#[derive(Debug)]
pub(crate) struct Listing<T> {
    pub(crate) objects: Vec<Listed<T>>,
    /// Digests with a fill lease: being fetched somewhere now.
    pub(crate) busy: HashSet<Digest>,
    /// Digests a berth pinned, refreshed within `pin_ttl`.
    pub(crate) pins: HashSet<Digest>,
    /// Markers and leases that describe nothing any more: access markers older than a day
    /// whose object is gone, pin markers a week past `pin_ttl`, and fill leases an hour past
    /// `fill_lease` (their holder died, and nobody asked for the digest since); each with
    /// its modification time as listed, so that one written since is left alone.
    pub(crate) stale: Vec<(Path, u64)>,
}

/// Stale markers and leases deleted by one pass at most.
const STALE_MAX: usize = 10_000;

impl Bucket {
    fn marker(&self, kind: &str, digest: &Digest) -> Path {
        self.root.clone().join(kind).join("sha256").join(digest.hex())
    }

    /// Records that `digest` was served here: an access marker, at most once a day (in the
    /// background; a HEAD first, a PUT only when the fleet has none from the last day).
    pub(crate) fn touch(self: &std::sync::Arc<Self>, digest: &Digest) {
        self.mark("access", digest);
    }

    /// Records that this berth pins `digest`: a pin marker, refreshed at most once a day.
    pub(crate) fn pin_marker(self: &std::sync::Arc<Self>, digest: &Digest) {
        self.mark("pins", digest);
    }

    fn mark(self: &std::sync::Arc<Self>, kind: &'static str, digest: &Digest) {
        if !self.uploads || !self.up() {
            return;
        }
        let key = (kind, digest.clone());
        if self.marked.contains_key(&key) {
            return;
        }
        // A few at once; a hit that finds none free leaves it to a later hit.
        let Ok(turn) = self.marking.clone().try_acquire_owned() else { return };
        let (bucket, path) = (self.clone(), self.marker(kind, digest));
        tokio::spawn(async move {
            let _turn = turn;
            let head = GetOptions { head: true, ..GetOptions::default() };
            let fresh = match tokio::time::timeout(bucket.timeout, bucket.store.get_opts(&path, head)).await {
                Ok(Ok(got)) => {
                    now_secs().saturating_sub(got.meta.last_modified.timestamp().max(0) as u64) < DAY
                }
                _ => false,
            };
            if fresh {
                bucket.marked.insert(key, ());
                return;
            }
            let put = bucket.store.put_opts(&path, PutPayload::new(), PutOptions::default());
            let outcome = match tokio::time::timeout(bucket.timeout, put).await {
                Ok(Ok(_)) => {
                    bucket.marked.insert(key, ());
                    "stored"
                }
                _ => "error",
            };
            count(if kind == "pins" { "pin-marker" } else { "access-marker" }, outcome);
        });
    }

    /// Claims this hour's bucket GC pass for the fleet (`v1/gc`, a conditional create; a
    /// claim older than `every` is broken and claimed again).
    pub(crate) async fn claim_gc(&self, every: Duration) -> bool {
        let path = self.root.clone().join("gc");
        let create = || {
            let opts = PutOptions { mode: PutMode::Create, ..PutOptions::default() };
            self.store.put_opts(&path, PutPayload::from(self.identity.clone()), opts)
        };
        match tokio::time::timeout(self.timeout, create()).await {
            Ok(Ok(_)) => return true,
            Ok(Err(object_store::Error::AlreadyExists { .. })) => {}
            _ => return false,
        }
        let head = GetOptions { head: true, ..GetOptions::default() };
        let Ok(Ok(got)) = tokio::time::timeout(self.timeout, self.store.get_opts(&path, head)).await else {
            return false;
        };
        let age = now_secs().saturating_sub(got.meta.last_modified.timestamp().max(0) as u64);
        if age < every.as_secs() {
            return false;
        }
        let stale = path.clone();
        let deleted = self.store.delete_stream(futures::stream::once(async move { Ok(stale) }).boxed());
        let _ = tokio::time::timeout(self.timeout, deleted.collect::<Vec<_>>()).await;
        matches!(tokio::time::timeout(self.timeout, create()).await, Ok(Ok(_)))
    }

    /// Lists the bucket for a GC pass (within ten minutes in all), reading each manifest
    /// (16 at a time) through `read`. Any failure, a manifest that cannot be read included,
    /// fails the listing: a pass never plans from part of the bucket.
    pub(crate) async fn listing<T: Send>(
        &self,
        pin_ttl: Duration,
        now: u64,
        read: impl Fn(&[u8]) -> Option<T> + Sync,
    ) -> Result<Listing<T>, String> {
        let listed = tokio::time::timeout(LISTING_BUDGET, self.list_everything(pin_ttl, now, &read)).await;
        listed.unwrap_or_else(|_| Err(format!("listing the bucket took more than {LISTING_BUDGET:?}")))
    }

    async fn list_everything<T: Send>(
        &self,
        pin_ttl: Duration,
        now: u64,
        read: &(impl Fn(&[u8]) -> Option<T> + Sync),
    ) -> Result<Listing<T>, String> {
        let age = |at: u64| now.saturating_sub(at);
        let access = self.list_digests(&self.root.clone().join("access").join("sha256")).await?;
        let (mut stale, mut busy) = (Vec::new(), HashSet::new());
        for (digest, (_, at)) in self.list_digests(&self.fills).await? {
            if age(at) > self.fill_lease.as_secs() + 3600 {
                stale.push((self.fills.clone().join(digest.hex()), at));
            } else {
                busy.insert(digest);
            }
        }
        let mut pins = HashSet::new();
        for (digest, (_, at)) in self.list_digests(&self.root.clone().join("pins").join("sha256")).await? {
            if age(at) < pin_ttl.as_secs() {
                pins.insert(digest);
            } else if age(at) > pin_ttl.as_secs() + 7 * DAY {
                stale.push((self.marker("pins", &digest), at));
            }
        }
        let blobs = self.list_digests(&self.blobs).await?;
        let manifests = self.list_digests(&self.manifests).await?;
        for (digest, (_, at)) in &access {
            if age(*at) > DAY && !blobs.contains_key(digest) && !manifests.contains_key(digest) {
                stale.push((self.marker("access", digest), *at));
            }
        }
        stale.truncate(STALE_MAX);
        let mut listing = Listing { objects: Vec::new(), busy, pins, stale };
        for (digest, (size, modified)) in blobs {
            let last_access = modified.max(access.get(&digest).map_or(0, |a| a.1));
            listing.objects.push(Listed { digest, size, last_access, manifest: None });
        }
        let reads = futures::stream::iter(manifests).map(|(digest, (size, modified))| async move {
            let manifest = self.manifest_bytes(&digest, size).await?.and_then(|b| read(&b));
            Ok::<_, String>((digest, size, modified, manifest))
        });
        let mut reads = reads.buffer_unordered(16);
        while let Some(read) = reads.next().await {
            let (digest, size, modified, manifest) = read?;
            let last_access = modified.max(access.get(&digest).map_or(0, |a| a.1));
            listing.objects.push(Listed { digest, size, last_access, manifest });
        }
        Ok(listing)
    }

    /// Every object under `prefix` whose name is a digest, with its size and modification
    /// time (seconds since the epoch).
    async fn list_digests(&self, prefix: &Path) -> Result<HashMap<Digest, (u64, u64)>, String> {
        let mut listed = self.store.list(Some(prefix));
        let mut out = HashMap::new();
        while let Some(meta) = listed.next().await {
            let meta = meta.map_err(|e| e.to_string())?;
            let name = meta.location.filename().unwrap_or_default();
            if let Ok(digest) = Digest::parse(&format!("sha256:{name}")) {
                out.insert(digest, (meta.size, meta.last_modified.timestamp().max(0) as u64));
            }
        }
        Ok(out)
    }

    /// A manifest object's bytes when they are whole and match their digest; None when it
    /// is gone, too large or not its digest's (then it is an object that forms no version);
    /// an error when it could not be read.
    async fn manifest_bytes(&self, digest: &Digest, size: u64) -> Result<Option<Bytes>, String> {
        if size > MANIFEST_MAX {
            return Ok(None);
        }
        let path = self.manifest_path(digest);
        let read = async {
            match self.store.get_opts(&path, GetOptions::default()).await {
                Ok(got) => read_bounded(got, MANIFEST_MAX).await.map(Some),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e.to_string()),
            }
        };
        let bytes = tokio::time::timeout(self.timeout * 4, read).await;
        let bytes = bytes.map_err(|_| format!("reading manifest {digest} took too long"))??;
        Ok(bytes.filter(|b| Digest::of(b) == *digest))
    }

    /// Deletes `digest`'s objects (blob or manifest, and its access marker): what a GC pass
    /// evicts. Bytes already read stay valid for their readers.
    pub(crate) async fn evict(&self, digest: &Digest) -> Result<(), String> {
        let paths = [self.blob_path(digest), self.manifest_path(digest), self.marker("access", digest)];
        let deleted = self.store.delete_stream(futures::stream::iter(paths.map(Ok)).boxed());
        let done = tokio::time::timeout(self.timeout * 4, deleted.collect::<Vec<_>>()).await;
        let done = done.map_err(|_| format!("deleting {digest} took more than {:?}", self.timeout * 4))?;
        for result in done {
            match result {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        self.known.invalidate(digest);
        Ok(())
    }

    /// Deletes stale markers and leases (best effort, 8 at a time), each only when a HEAD
    /// finds it unchanged since the listing (a pin refreshed, or a lease claimed anew
    /// meanwhile, stays); returns how many went.
    pub(crate) async fn delete_stale(&self, stale: Vec<(Path, u64)>) -> usize {
        let unchanged = futures::stream::iter(stale).map(|(path, listed)| async move {
            let head = GetOptions { head: true, ..GetOptions::default() };
            match tokio::time::timeout(self.timeout, self.store.get_opts(&path, head)).await {
                Ok(Ok(got)) if got.meta.last_modified.timestamp().max(0) as u64 == listed => Some(path),
                _ => None,
            }
        });
        let paths: Vec<Path> = unchanged.buffer_unordered(8).filter_map(|p| async move { p }).collect().await;
        let deleted = self.store.delete_stream(futures::stream::iter(paths.into_iter().map(Ok)).boxed());
        let done =
            tokio::time::timeout(LISTING_BUDGET, deleted.collect::<Vec<_>>()).await.unwrap_or_default();
        done.iter().filter(|r| r.is_ok()).count()
    }

    /// Records what the fleet's last GC pass counted (objects and bytes), for the cache API.
    pub(crate) fn counted(&self, objects: u64, bytes: u64) {
        *self.inventory.lock().expect("inventory lock") = Some((objects, bytes, now_secs()));
    }
}
