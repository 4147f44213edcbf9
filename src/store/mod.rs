//! The store: a memory tier in front of a disk tier, both holding only verified content,
//! plus the in-flight fills that feed them.

pub mod body;
pub(crate) mod bucket;
mod contents;
pub(crate) mod disk;
pub(crate) mod fill;
pub(crate) mod memory;
pub(crate) mod meta;
mod pace;
pub(crate) mod passthrough;
pub(crate) mod tier;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;

use crate::config::Storage;
use crate::error::Error;
use crate::oci::digest::Digest;
use disk::DiskTier;
use fill::Fill;
use memory::MemoryTier;
use meta::Meta;
use tier::Tiered;

/// Which part of berth answered a request: the request log's `tier` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ServedBy {
    Memory,
    Disk,
    FillLeader,
    FillFollower,
    Upstream,
}

impl ServedBy {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ServedBy::Memory => "memory",
            ServedBy::Disk => "disk",
            ServedBy::FillLeader => "fill-leader",
            ServedBy::FillFollower => "fill-follower",
            ServedBy::Upstream => "upstream-passthrough",
        }
    }
}

/// Verified content found in a tier: memory-tier bytes, or a disk file mapped into memory.
pub(crate) struct Hit {
    pub(crate) served_by: ServedBy,
    pub(crate) bytes: Bytes,
}

/// Frees room on the disk tier for `n` more bytes, as far as the eviction rules allow (the
/// collector's `free_for`, set by the registry layer).
pub(crate) type Evict = Arc<dyn Fn(u64) -> futures::future::BoxFuture<'static, ()> + Send + Sync>;

pub(crate) use contents::Stored;

pub struct Store {
    /// The tiers below, for the fill and the narrow views of `contents`; look-ups go through
    /// `tiers`.
    memory: MemoryTier,
    disk: Arc<DiskTier>,
    /// Memory in front of disk: look-up order, promotion, first-hit checks.
    tiers: Tiered<Arc<DiskTier>>,
    meta: Arc<Meta>,
    inflight: Mutex<HashMap<Digest, Arc<Fill>>>,
    /// Blobs being sent to clients now, with how many bodies read each.
    readers: Arc<Mutex<HashMap<Digest, usize>>>,
    /// Asked for room when a fill's reservation cannot grow.
    evict: std::sync::OnceLock<Evict>,
    /// `storage.max_blob_size`: a fill announced or grown past it fails.
    max_blob_size: u64,
    /// Fills served without being kept since startup, for want of room.
    uncached: std::sync::atomic::AtomicU64,
    /// The shared bucket below the disk, when configured.
    bucket: Option<Arc<bucket::Bucket>>,
}

/// Marks a blob as being read until dropped.
pub(crate) struct ReadGuard {
    readers: Arc<Mutex<HashMap<Digest, usize>>>,
    digest: Digest,
}

impl Drop for ReadGuard {
    fn drop(&mut self) {
        let mut readers = self.readers.lock().expect("readers lock");
        if let Some(n) = readers.get_mut(&self.digest) {
            *n -= 1;
            if *n == 0 {
                readers.remove(&self.digest);
            }
        }
    }
}

impl Store {
    /// Opens the store with no bucket (tests and benches).
    #[cfg(any(test, feature = "test-util"))]
    pub fn open(cfg: &Storage) -> Result<Arc<Store>, Error> {
        Self::open_with(cfg, None)
    }

    /// Opens the store with the shared bucket below its disk tier.
    pub(crate) fn open_with(cfg: &Storage, bucket: Option<bucket::Bucket>) -> Result<Arc<Store>, Error> {
        let disk = DiskTier::open(&cfg.dir, cfg.disk_capacity)
            .map_err(|e| Error::fault(format!("opening {}", cfg.dir.display()), e))?;
        let meta = Meta::open(&cfg.dir.join("v1").join("meta.redb"))?;
        let (memory, disk) = (MemoryTier::new(cfg.memory_capacity, cfg.memory_max_object), Arc::new(disk));
        Ok(Arc::new(Store {
            tiers: Tiered::new(memory.clone(), disk.clone()),
            memory,
            disk,
            meta: Arc::new(meta),
            inflight: Mutex::new(HashMap::new()),
            readers: Arc::new(Mutex::new(HashMap::new())),
            evict: std::sync::OnceLock::new(),
            max_blob_size: cfg.max_blob_size,
            uncached: Default::default(),
            bucket: bucket.map(Arc::new),
        }))
    }

    /// The shared bucket, when configured.
    pub(crate) fn bucket(&self) -> Option<&Arc<bucket::Bucket>> {
        self.bucket.as_ref()
    }

    /// The metadata store, for the registry layer's tag and provenance records.
    pub(crate) fn meta(&self) -> &Arc<Meta> {
        &self.meta
    }

    /// Where the disk tier keeps `digest`.
    #[cfg(feature = "test-util")]
    pub fn disk_path(&self, digest: &Digest) -> std::path::PathBuf {
        self.disk.path(digest)
    }

    /// Sets what frees room when a reservation cannot grow (once; later calls are ignored).
    pub(crate) fn on_full(&self, evict: Evict) {
        let _ = self.evict.set(evict);
    }

    /// Grows `room` by `more` bytes, evicting first when the disk tier is full; false when
    /// even that leaves no room (everything left is pinned or in use), or when `more` alone
    /// is beyond the capacity (nothing is evicted for it).
    pub(crate) async fn grow(&self, room: &mut disk::Reservation, more: u64) -> bool {
        if room.try_grow(more) {
            return true;
        }
        if room.bytes().saturating_add(more) > self.disk.capacity() {
            return false;
        }
        if let Some(evict) = self.evict.get() {
            evict(more).await;
        }
        room.try_grow(more)
    }

    /// Counts a fill served without being kept.
    pub(crate) fn count_uncached(&self) {
        self.uncached.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Fills served without being kept since startup, for want of room.
    pub(crate) fn uncached(&self) -> u64 {
        self.uncached.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Marks `digest` as being read until the guard is dropped.
    pub(crate) fn reading(&self, digest: &Digest) -> ReadGuard {
        *self.readers.lock().expect("readers lock").entry(digest.clone()).or_default() += 1;
        ReadGuard { readers: self.readers.clone(), digest: digest.clone() }
    }

    /// Digests being filled or read now: never evicted.
    pub fn busy(&self) -> Vec<Digest> {
        let mut busy = self.inflight_digests();
        busy.extend(self.readers.lock().expect("readers lock").keys().cloned());
        busy
    }

    /// Whether `digest` is being filled or read now.
    pub(crate) fn is_busy(&self, digest: &Digest) -> bool {
        self.inflight(digest).is_some() || self.readers.lock().expect("readers lock").contains_key(digest)
    }

    /// Whether a tier holds `digest` (without reading it or counting an access).
    pub(crate) async fn holds(&self, digest: &Digest) -> bool {
        self.tiers.holds(digest).await
    }

    /// Looks in memory, then on disk (see `Tiered::get`): a disk hit small enough for memory
    /// is promoted, and a damaged disk blob is a miss. A hit counts as an access.
    pub(crate) async fn get(&self, digest: &Digest) -> Option<Hit> {
        let hit = self.tiers.get(digest).await;
        if hit.is_some() {
            self.meta.touch(digest);
            if let Some(bucket) = &self.bucket {
                bucket.touch(digest); // at most once a day per digest: the bucket GC's access time
            }
        }
        hit
    }

    /// Stores a verified manifest fetched for `origin` in both tiers (on disk only when room
    /// can be made for it, else in memory only), and uploads it to the bucket.
    pub(crate) async fn put_verified(
        self: &Arc<Self>,
        digest: &Digest,
        bytes: Bytes,
        media_type: Option<&str>,
        origin: &str,
    ) -> Result<(), Error> {
        self.keep_verified(digest, bytes, media_type).await?;
        self.upload_manifest(digest, origin, media_type);
        Ok(())
    }

    /// A manifest for `origin` from the bucket, verified, and kept in both tiers; None when the
    /// bucket has none (or is not configured, or skipped).
    /// Returns its media type.
    pub(crate) async fn manifest_from_bucket(&self, digest: &Digest, origin: &str) -> Option<String> {
        let (bytes, media_type) = self.bucket.as_ref()?.manifest(digest, origin).await?;
        self.keep_verified(digest, bytes, Some(&media_type)).await.ok()?;
        Some(media_type)
    }

    /// Stores a verified manifest (or other small content) in both tiers; on disk only when
    /// room can be made for it (else it stays in memory only).
    async fn keep_verified(
        &self,
        digest: &Digest,
        bytes: Bytes,
        media_type: Option<&str>,
    ) -> Result<(), Error> {
        self.memory.insert(digest.clone(), bytes.clone()).await;
        let on_disk = self.disk.len(digest).ok().flatten() == Some(bytes.len() as u64);
        let mut room = self.disk.reserve();
        if !on_disk && !self.grow(&mut room, bytes.len() as u64).await {
            tracing::warn!(%digest, bytes = bytes.len(),
                "disk tier full of pinned or in-use content: manifest kept in memory only");
            return Ok(());
        }
        let (disk, meta, d) = (self.disk.clone(), self.meta.clone(), digest.clone());
        let media_type = media_type.map(str::to_owned);
        // A file of the same length already there is not known to match: its first disk
        // hit hashes it. What is written here is checked once it is in place.
        let change = (!on_disk).then(|| self.tiers.publishing(digest));
        tokio::task::spawn_blocking(move || {
            if let Some(change) = change {
                write_verified(&disk, &d, &bytes, room)?;
                change.checked();
            }
            meta.record_blob(&d, bytes.len() as u64, media_type.as_deref())
        })
        .await
        .map_err(Error::internal)?
    }

    /// Periodically writes batched access times to the metadata store, for as long as the
    /// store is open.
    pub(crate) fn spawn_flusher(self: &Arc<Self>, every: Duration) {
        let meta = Arc::downgrade(&self.meta);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let Some(meta) = meta.upgrade() else { return };
                match tokio::task::spawn_blocking(move || meta.flush_access()).await {
                    Ok(Err(e)) => tracing::warn!(error = %e, "flushing access times failed"),
                    Err(e) => tracing::warn!(error = %e, "flushing access times panicked"),
                    Ok(Ok(_)) => {}
                }
            }
        });
    }
}

/// On a blocking thread: writes verified `bytes` as the disk blob for `digest` (used for
/// manifests), within `room`: through a tier write, committed with the proof of the hash.
fn write_verified(
    disk: &Arc<DiskTier>,
    digest: &Digest,
    bytes: &[u8],
    room: disk::Reservation,
) -> Result<(), Error> {
    let proof = tier::Verified::of(digest, bytes)?;
    let mut writer = tier::disk::DiskWriter::begin(disk, digest, None).map_err(Error::internal)?;
    writer.set_room(room);
    writer.append_blocking(bytes).map_err(Error::internal)?;
    writer.commit_blocking(&proof).map_err(Error::internal)
}
