//! The memory tier: verified blobs up to `memory_max_object`, weighted by bytes (moka).
//! A hit is a clone of `Bytes`: no disk I/O and no copy.

use bytes::Bytes;
use moka::future::Cache;

use crate::oci::digest::Digest;

#[derive(Clone)]
pub struct MemoryTier {
    pub(super) cache: Cache<Digest, Bytes>,
    max_object: u64,
    capacity: u64,
}

impl MemoryTier {
    pub fn new(capacity: u64, max_object: u64) -> Self {
        let cache = Cache::builder()
            .max_capacity(capacity)
            .weigher(|_k: &Digest, v: &Bytes| u32::try_from(v.len()).unwrap_or(u32::MAX))
            .build();
        MemoryTier { cache, max_object, capacity }
    }

    /// Whether an object of `len` bytes is admitted.
    pub(crate) fn admits(&self, len: u64) -> bool {
        len <= self.max_object
    }

    pub async fn get(&self, digest: &Digest) -> Option<Bytes> {
        self.cache.get(digest).await
    }

    pub(crate) fn contains(&self, digest: &Digest) -> bool {
        self.cache.contains_key(digest)
    }

    /// Stores verified bytes. Callers must have checked them against `digest`.
    pub async fn insert(&self, digest: Digest, bytes: Bytes) {
        if self.admits(bytes.len() as u64) {
            self.cache.insert(digest, bytes).await;
        }
    }

    /// Stores verified bytes whatever their size, within the tier's capacity (preheat asks for
    /// this explicitly). Returns false when they cannot fit at all.
    pub(crate) async fn insert_unbounded(&self, digest: Digest, bytes: Bytes) -> bool {
        if bytes.len() as u64 > self.capacity || bytes.len() as u64 > u64::from(u32::MAX) {
            return false;
        }
        self.cache.insert(digest, bytes).await;
        true
    }

    /// Bytes held now (moka's weighted size; settles as its maintenance runs).
    pub(crate) fn used(&self) -> u64 {
        self.cache.weighted_size()
    }

    pub(crate) fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Blobs held now (settles as moka's maintenance runs, like `used`).
    pub(crate) fn objects(&self) -> u64 {
        self.cache.entry_count()
    }
}
