//! What the store holds, as the layers above may see and change it: usage against capacity,
//! where a digest is held, the disk tier's contents for the collector, eviction, and copying a
//! disk blob into memory for preheat. The tiers themselves stay private to the store.

use bytes::Bytes;

use super::Store;
use crate::error::Error;
use crate::oci::digest::Digest;

/// One tier's bytes and objects against its capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TierUsage {
    pub(crate) used: u64,
    pub(crate) capacity: u64,
    pub(crate) objects: u64,
}

/// Both tiers' usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Usage {
    pub(crate) memory: TierUsage,
    pub(crate) disk: TierUsage,
}

/// Where a digest is held now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Held {
    pub(crate) memory: bool,
    pub(crate) disk: bool,
    /// Known to be in the shared bucket (uploaded, found there, or read from it by this berth).
    pub(crate) bucket: bool,
}

/// A blob on disk as the collector sees it.
pub(crate) struct Stored<T> {
    pub(crate) digest: Digest,
    pub(crate) size: u64,
    /// Seconds since the epoch; 0 when no access was recorded.
    pub(crate) last_access: u64,
    /// What the collector read of a blob stored as a manifest (what it references).
    pub(crate) manifest: Option<T>,
}

/// Why a blob was not copied into memory.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum NotCopied {
    #[error("{size} bytes do not fit the memory tier ({capacity} bytes)")]
    TooBig { size: u64, capacity: u64 },
    #[error("does not fit the memory tier")]
    NoRoom,
    #[error("not on disk to copy into memory")]
    NotOnDisk,
}

impl Store {
    /// Both tiers' bytes and objects against capacity.
    pub(crate) fn usage(&self) -> Usage {
        Usage {
            memory: TierUsage {
                used: self.memory.used(),
                capacity: self.memory.capacity(),
                objects: self.memory.objects(),
            },
            disk: TierUsage {
                used: self.disk.used(),
                capacity: self.disk.capacity(),
                objects: self.disk.objects(),
            },
        }
    }

    /// Where `digest` is held (without reading it or counting an access).
    pub(crate) fn held(&self, digest: &Digest) -> Held {
        Held {
            memory: self.memory.contains(digest),
            disk: self.disk.len(digest).ok().flatten().is_some(),
            bucket: self.bucket.as_ref().is_some_and(|b| b.knows(digest)),
        }
    }

    /// Whether `more` bytes fit on disk beside what is used and promised.
    pub(crate) fn disk_fits(&self, more: u64) -> bool {
        self.disk.fits(more)
    }

    /// Bytes promised to fills in flight, not yet on disk.
    pub(crate) fn disk_pending(&self) -> u64 {
        self.disk.pending()
    }

    /// On a blocking thread: every blob on disk with its size, last access and, for a
    /// manifest, what `read` makes of its content (each mapping dropped before the next is
    /// made). A manifest that cannot be read fails the whole listing: a collector that missed
    /// its references could evict what it keeps.
    pub(crate) fn contents_blocking<T>(&self, read: impl Fn(&[u8]) -> T) -> Result<Vec<Stored<T>>, Error> {
        let on_disk = self.disk.scan().map_err(Error::internal)?;
        let records = self.meta.blobs()?;
        let mut out = Vec::with_capacity(on_disk.len());
        for (digest, size) in on_disk {
            let record = records.get(digest.as_str());
            let manifest = match record.filter(|m| m.media_type.is_some()) {
                Some(_) => {
                    let mapped = self.disk.get_mapped(&digest);
                    mapped
                        .map_err(|e| Error::fault(format!("reading manifest {digest}"), e))?
                        .map(|b| read(&b))
                }
                None => None,
            };
            out.push(Stored { last_access: record.map_or(0, |m| m.last_access), digest, size, manifest });
        }
        Ok(out)
    }

    /// On a blocking thread: deletes `digest` from disk, file first, then its record, so that
    /// a crash in between leaves a miss, never a hit on a deleted blob. The memory tier keeps
    /// its copy until it ages out: it is verified content. Returns the bytes freed.
    pub(crate) fn evict_blocking(&self, digest: &Digest) -> Result<u64, Error> {
        let removing = self.tiers.removing(digest);
        let freed = self.disk.remove(digest).map_err(|e| Error::fault(format!("deleting {digest}"), e))?;
        drop(removing);
        if let Err(e) = self.meta.remove_blob(digest) {
            tracing::warn!(%digest, error = %e, "deleted a blob but not its record");
        }
        Ok(freed)
    }

    /// Copies a blob on disk into the memory tier, also above `memory_max_object`, if it fits.
    /// Only a disk copy known to match its digest is copied (hashed first if need be).
    pub(crate) async fn copy_to_memory(&self, digest: &Digest, size: u64) -> Result<(), NotCopied> {
        if self.memory.contains(digest) {
            return Ok(());
        }
        let capacity = self.memory.capacity();
        if size > capacity {
            return Err(NotCopied::TooBig { size, capacity });
        }
        let Ok(Some(found)) = self.tiers.read_checked(digest).await else { return Err(NotCopied::NotOnDisk) };
        let copy = tokio::task::spawn_blocking(move || Bytes::copy_from_slice(&found));
        let Ok(bytes) = copy.await else { return Err(NotCopied::NotOnDisk) };
        match self.memory.insert_unbounded(digest.clone(), bytes).await {
            true => Ok(()),
            false => Err(NotCopied::NoRoom),
        }
    }

    /// Writes the batched access times to the metadata store now (at shutdown).
    pub(crate) async fn flush_access(&self) -> Result<(), Error> {
        let meta = self.meta.clone();
        tokio::task::spawn_blocking(move || meta.flush_access().map(drop)).await.map_err(Error::internal)?
    }
}
