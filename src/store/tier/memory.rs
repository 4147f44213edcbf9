//! The memory tier as a `BlobTier`: objects are `Bytes` in moka; a write collects its
//! batches and inserts them whole on commit.

use std::io;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use tokio::sync::watch;

use super::{check_range, BlobTier, TierWriter, Usage, Verified, WrittenView};
use crate::oci::digest::Digest;
use crate::store::memory::MemoryTier;

impl BlobTier for MemoryTier {
    type Writer = MemoryWriter;
    const DURABLE: bool = false;

    async fn len(&self, digest: &Digest) -> io::Result<Option<u64>> {
        Ok(self.get(digest).await.map(|b| b.len() as u64))
    }

    async fn read(&self, digest: &Digest) -> io::Result<Option<Bytes>> {
        Ok(self.get(digest).await)
    }

    async fn begin_write(&self, digest: &Digest, len: Option<u64>) -> io::Result<MemoryWriter> {
        if let Some(len) = len.filter(|&l| !self.admits(l)) {
            return Err(too_large(len, "memory"));
        }
        Ok(MemoryWriter { tier: self.clone(), digest: digest.clone(), staged: Staged::new(len) })
    }

    async fn remove(&self, digest: &Digest) -> io::Result<u64> {
        let freed = self.cache.remove(digest).await.map_or(0, |b| b.len() as u64);
        Ok(freed)
    }

    async fn scan(&self) -> io::Result<Vec<(Digest, u64)>> {
        Ok(self.cache.iter().map(|(d, b)| ((*d).clone(), b.len() as u64)).collect())
    }

    async fn usage(&self) -> Usage {
        self.cache.run_pending_tasks().await;
        Usage { bytes: self.used(), objects: self.objects() }
    }

    fn admits(&self, len: u64) -> bool {
        MemoryTier::admits(self, len)
    }
}

/// Refuses `len` bytes past a tier's largest object.
pub(super) fn too_large(len: u64, tier: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{len} bytes are beyond the {tier} tier's largest object"),
    )
}

/// The parts of a write staged in memory, shared with its views (memory and bucket writes).
pub(super) struct Staged {
    len: Option<u64>,
    batches: Arc<Mutex<Vec<Bytes>>>,
    written: watch::Sender<u64>,
}

impl Staged {
    pub(super) fn new(len: Option<u64>) -> Staged {
        Staged { len, batches: Arc::default(), written: watch::channel(0).0 }
    }

    /// Appends `bytes` unless the total passes the announced length or what `admits` takes;
    /// `tier` names the tier in the refusal.
    pub(super) fn append(&self, bytes: Bytes, admits: impl Fn(u64) -> bool, tier: &str) -> io::Result<()> {
        let total = *self.written.borrow() + bytes.len() as u64;
        if self.len.is_some_and(|l| total > l) || !admits(total) {
            return Err(too_large(total, tier));
        }
        self.batches.lock().expect("batches lock").push(bytes);
        self.written.send_replace(total);
        Ok(())
    }

    pub(super) fn view(&self) -> MemoryView {
        MemoryView { batches: self.batches.clone(), written: self.written.subscribe() }
    }

    pub(super) fn written(&self) -> u64 {
        *self.written.borrow()
    }

    /// What is staged, as one `Bytes`.
    pub(super) fn whole(&self) -> Bytes {
        joined(&self.batches.lock().expect("batches lock"))
    }
}

/// A write to the memory tier: its staged parts, inserted whole on commit.
pub(crate) struct MemoryWriter {
    tier: MemoryTier,
    digest: Digest,
    staged: Staged,
}

impl TierWriter for MemoryWriter {
    type View = MemoryView;

    async fn append(&mut self, bytes: Bytes) -> io::Result<()> {
        self.staged.append(bytes, |n| self.tier.admits(n), "memory")
    }

    fn view(&self) -> MemoryView {
        self.staged.view()
    }

    async fn commit(self, proof: Verified) -> io::Result<()> {
        proof.admit(&self.digest, self.staged.written())?;
        self.tier.insert(self.digest.clone(), self.staged.whole()).await;
        Ok(())
    }
}

/// The batches as one `Bytes` (no copy when there is only one).
fn joined(batches: &[Bytes]) -> Bytes {
    match batches {
        [one] => one.clone(),
        many => {
            let mut whole = BytesMut::with_capacity(many.iter().map(Bytes::len).sum());
            many.iter().for_each(|b| whole.extend_from_slice(b));
            whole.freeze()
        }
    }
}

/// The written part of a memory write.
#[derive(Clone)]
pub(crate) struct MemoryView {
    batches: Arc<Mutex<Vec<Bytes>>>,
    written: watch::Receiver<u64>,
}

impl WrittenView for MemoryView {
    fn written(&self) -> watch::Receiver<u64> {
        self.written.clone()
    }

    async fn read_written(&self, range: Range<u64>) -> io::Result<Bytes> {
        let batches = self.batches.lock().expect("batches lock");
        let written = batches.iter().map(|b| b.len() as u64).sum();
        check_range(&range, written)?;
        let mut out = BytesMut::with_capacity((range.end - range.start) as usize);
        let mut at = 0u64;
        for b in batches.iter() {
            let (lo, hi) = (range.start.max(at), range.end.min(at + b.len() as u64));
            if lo < hi {
                out.extend_from_slice(&b[(lo - at) as usize..(hi - at) as usize]);
            }
            at += b.len() as u64;
        }
        Ok(out.freeze())
    }
}
