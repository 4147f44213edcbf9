//! The store: a memory tier in front of a disk tier, both holding only verified content,
//! plus the in-flight fills that feed them.

pub mod body;
pub mod disk;
pub mod fill;
pub mod gc;
pub mod memory;
pub mod meta;
pub mod passthrough;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;

use crate::config::Storage;
use crate::digest::Digest;
use crate::error::Error;
use disk::DiskTier;
use fill::Fill;
use memory::MemoryTier;
use meta::Meta;

/// Which part of berth answered a request (the request log's `tier`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    Memory,
    Disk,
    FillLeader,
    FillFollower,
    Upstream,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Memory => "memory",
            Tier::Disk => "disk",
            Tier::FillLeader => "fill-leader",
            Tier::FillFollower => "fill-follower",
            Tier::Upstream => "upstream-passthrough",
        }
    }
}

/// Verified content found in a tier: memory-tier bytes, or a disk file mapped into memory.
pub struct Hit {
    pub tier: Tier,
    pub bytes: Bytes,
}

pub struct Store {
    pub memory: MemoryTier,
    pub disk: Arc<DiskTier>,
    pub meta: Arc<Meta>,
    inflight: Mutex<HashMap<Digest, Arc<Fill>>>,
    /// Blobs being sent to clients now, with how many bodies read each.
    readers: Arc<Mutex<HashMap<Digest, usize>>>,
    /// Disk blobs whose content was checked against the digest since startup (written by a
    /// fill here, or hashed on their first hit).
    checked: Mutex<std::collections::HashSet<Digest>>,
}

/// Marks a blob as being read until dropped.
pub struct ReadGuard {
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
    pub fn open(cfg: &Storage) -> Result<Arc<Store>, Error> {
        let disk = DiskTier::open(&cfg.dir)
            .map_err(|e| Error::Internal(format!("opening {}: {e}", cfg.dir.display())))?;
        let meta = Meta::open(&cfg.dir.join("v1").join("meta.redb"))?;
        Ok(Arc::new(Store {
            memory: MemoryTier::new(cfg.memory_capacity, cfg.memory_max_object),
            disk: Arc::new(disk),
            meta: Arc::new(meta),
            inflight: Mutex::new(HashMap::new()),
            readers: Arc::new(Mutex::new(HashMap::new())),
            checked: Mutex::new(std::collections::HashSet::new()),
        }))
    }

    /// Marks `digest` as being read until the guard is dropped.
    pub fn reading(&self, digest: &Digest) -> ReadGuard {
        *self.readers.lock().expect("readers lock").entry(digest.clone()).or_default() += 1;
        ReadGuard { readers: self.readers.clone(), digest: digest.clone() }
    }

    /// Digests being filled or read now: never evicted.
    pub fn busy(&self) -> Vec<Digest> {
        let mut busy = self.inflight_digests();
        busy.extend(self.readers.lock().expect("readers lock").keys().cloned());
        busy
    }

    /// Notes that the disk copy of `digest` is known to match it.
    pub fn mark_checked(&self, digest: &Digest) {
        self.checked.lock().expect("checked lock").insert(digest.clone());
    }

    /// Looks in memory, then on disk. A disk hit small enough for memory is promoted.
    /// A disk blob is hashed on its first hit after startup; one that does not match its
    /// digest (damaged on disk) is deleted and answered as a miss, so it is fetched again.
    pub async fn get(&self, digest: &Digest) -> Result<Option<Hit>, Error> {
        if let Some(bytes) = self.memory.get(digest).await {
            self.meta.touch(digest);
            return Ok(Some(Hit { tier: Tier::Memory, bytes }));
        }
        let (disk, d) = (self.disk.clone(), digest.clone());
        let admits = self.memory.max_object();
        let checked = self.checked.lock().expect("checked lock").contains(digest);
        let found = tokio::task::spawn_blocking(move || {
            let mapped = disk.get_mapped(&d)?;
            if let Some(m) = mapped.as_ref().filter(|_| !checked) {
                if Digest::of(m) != d {
                    tracing::warn!(digest = %d, "damaged blob on disk: deleted, will be fetched again");
                    disk.remove(&d)?;
                    return Ok(None);
                }
            }
            // A copy for the memory tier, made off the async workers.
            Ok::<_, std::io::Error>(mapped.map(|m| {
                let copy = (m.len() as u64 <= admits).then(|| Bytes::copy_from_slice(&m));
                (m, copy)
            }))
        })
        .await
        .map_err(Error::internal)?;
        match found {
            Ok(Some((mapped, copy))) => {
                if !checked {
                    self.mark_checked(digest);
                }
                self.meta.touch(digest);
                if let Some(copy) = copy {
                    self.memory.insert(digest.clone(), copy.clone()).await;
                    return Ok(Some(Hit { tier: Tier::Disk, bytes: copy }));
                }
                Ok(Some(Hit { tier: Tier::Disk, bytes: mapped }))
            }
            Ok(None) => Ok(None),
            Err(e) => {
                tracing::warn!(%digest, error = %e, "disk tier read failed; treating as a miss");
                Ok(None)
            }
        }
    }

    /// Stores a verified manifest (or other small content) in both tiers.
    pub async fn put_verified(
        &self,
        digest: &Digest,
        bytes: Bytes,
        media_type: Option<&str>,
    ) -> Result<(), Error> {
        self.memory.insert(digest.clone(), bytes.clone()).await;
        self.mark_checked(digest);
        let (disk, meta, d) = (self.disk.clone(), self.meta.clone(), digest.clone());
        let media_type = media_type.map(str::to_owned);
        tokio::task::spawn_blocking(move || {
            disk.put(&d, &bytes).map_err(Error::internal)?;
            meta.record_blob(&d, bytes.len() as u64, media_type.as_deref())
        })
        .await
        .map_err(Error::internal)?
    }

    /// Periodically writes batched access times to the metadata store, for as long as the
    /// store is open.
    pub fn spawn_flusher(self: &Arc<Self>, every: Duration) {
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
