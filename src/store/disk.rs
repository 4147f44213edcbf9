//! The disk tier: verified content under `<dir>/v1/blobs/sha256/<2 hex>/<hex>`.
//!
//! Contract: a file exists at a blob path only once its full content has been verified
//! against the digest (temp file, fsync, rename). Fills write under `<dir>/v1/tmp/`, which is
//! emptied at startup. All methods block: call them from blocking threads.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use crate::oci::digest::Digest;

pub(crate) struct DiskTier {
    blobs: PathBuf,
    tmp: PathBuf,
    next_tmp: AtomicU64,
    /// Bytes and number of published blobs: counted at startup, kept up to date by publish
    /// and remove.
    used: AtomicU64,
    objects: AtomicU64,
    /// Bytes promised to fills in flight that will be kept (see `reserve`).
    pending: AtomicU64,
    /// `storage.disk_capacity`: published plus promised bytes never exceed it.
    capacity: u64,
}

/// Room promised to a fill, grown as its bytes are written, never past the capacity; given
/// back when dropped (after the fill published or failed), or turned into used bytes by
/// `publish`.
pub(crate) struct Reservation {
    disk: Arc<DiskTier>,
    bytes: u64,
}

impl Reservation {
    /// Bytes promised so far.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Promises `more` bytes if used plus promised bytes stay within the capacity.
    pub(crate) fn try_grow(&mut self, more: u64) -> bool {
        let disk = &self.disk;
        let fits = disk.pending.fetch_update(Ordering::AcqRel, Ordering::Acquire, |pending| {
            let total = pending.checked_add(more)?;
            (total.checked_add(disk.used())? <= disk.capacity).then_some(total)
        });
        if fits.is_ok() {
            self.bytes += more;
        }
        fits.is_ok()
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.disk.pending.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

impl DiskTier {
    /// Opens (creating) the layout under `root` and removes temp files left by a crash.
    pub(crate) fn open(root: &Path, capacity: u64) -> io::Result<DiskTier> {
        let base = root.join("v1");
        let blobs = base.join("blobs").join("sha256");
        let tmp = base.join("tmp");
        fs::create_dir_all(&blobs)?;
        if tmp.exists() {
            let mut removed = 0;
            for entry in fs::read_dir(&tmp)? {
                fs::remove_file(entry?.path())?;
                removed += 1;
            }
            if removed > 0 {
                tracing::info!(removed, "removed temp files left by an interrupted fill");
            }
        }
        fs::create_dir_all(&tmp)?;
        let disk = DiskTier {
            blobs,
            tmp,
            next_tmp: AtomicU64::new(0),
            used: AtomicU64::new(0),
            objects: AtomicU64::new(0),
            pending: AtomicU64::new(0),
            capacity,
        };
        let found = disk.scan()?;
        disk.used.store(found.iter().map(|(_, len)| len).sum(), Ordering::Relaxed);
        disk.objects.store(found.len() as u64, Ordering::Relaxed);
        Ok(disk)
    }

    /// Bytes of published blobs.
    pub(crate) fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Number of published blobs.
    pub(crate) fn objects(&self) -> u64 {
        self.objects.load(Ordering::Relaxed)
    }

    /// Bytes promised to fills in flight.
    pub(crate) fn pending(&self) -> u64 {
        self.pending.load(Ordering::Relaxed)
    }

    /// An empty reservation, to grow with `Reservation::try_grow` as bytes arrive.
    pub(crate) fn reserve(self: &Arc<Self>) -> Reservation {
        Reservation { disk: self.clone(), bytes: 0 }
    }

    /// `storage.disk_capacity`.
    pub(crate) fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Whether `more` bytes would fit beside what is used and promised now.
    pub(crate) fn fits(&self, more: u64) -> bool {
        self.used()
            .checked_add(self.pending())
            .and_then(|t| t.checked_add(more))
            .is_some_and(|t| t <= self.capacity)
    }

    /// Every published blob and its length. Files whose names are not digests are skipped.
    pub(crate) fn scan(&self) -> io::Result<Vec<(Digest, u64)>> {
        let mut out = Vec::new();
        for dir in fs::read_dir(&self.blobs)? {
            let dir = dir?;
            if !dir.file_type()?.is_dir() {
                continue;
            }
            for f in fs::read_dir(dir.path())? {
                let f = f?;
                let name = f.file_name();
                let Some(d) = name.to_str().and_then(|hex| Digest::parse(&format!("sha256:{hex}")).ok())
                else {
                    continue;
                };
                match f.metadata() {
                    Ok(m) if m.is_file() => out.push((d, m.len())),
                    _ => {}
                }
            }
        }
        Ok(out)
    }

    /// Deletes the blob for `digest`; returns the bytes freed. Readers that already hold the
    /// file (or a mapping of it) keep reading it to the end.
    pub(crate) fn remove(&self, digest: &Digest) -> io::Result<u64> {
        let path = self.path(digest);
        let len = match fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        fs::remove_file(&path)?;
        // Saturating: a file changed behind berth's back may be longer than what was counted.
        less(&self.used, len);
        less(&self.objects, 1);
        Ok(len)
    }

    pub(crate) fn path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.blobs.join(&hex[..2]).join(hex)
    }

    /// The verified file for `digest` and its length, if present.
    pub(crate) fn get(&self, digest: &Digest) -> io::Result<Option<(File, u64)>> {
        match File::open(self.path(digest)) {
            Ok(f) => {
                let len = f.metadata()?.len();
                Ok(Some((f, len)))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Length of the verified file for `digest`, if present.
    pub(crate) fn len(&self, digest: &Digest) -> io::Result<Option<u64>> {
        match fs::metadata(self.path(digest)) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A new, empty temp file for a fill of `digest`, open for reading and writing.
    pub(crate) fn temp(&self, digest: &Digest) -> io::Result<(File, PathBuf)> {
        let n = self.next_tmp.fetch_add(1, Ordering::Relaxed);
        let path = self.tmp.join(format!("{}.{}.{n}", digest.hex(), std::process::id()));
        let file = fs::OpenOptions::new().read(true).write(true).create_new(true).open(&path)?;
        Ok((file, path))
    }

    /// Makes a verified temp file the blob for `digest`: fsync, rename, fsync the folder.
    /// The fill's reservation, if any, turns into used bytes at the rename.
    pub(crate) fn publish(
        &self,
        file: &File,
        temp: &Path,
        digest: &Digest,
        room: Option<Reservation>,
    ) -> io::Result<()> {
        file.sync_data()?;
        let len = file.metadata()?.len();
        let dest = self.path(digest);
        let dir = dest.parent().expect("blob path has a parent");
        fs::create_dir_all(dir)?;
        let replaced = fs::metadata(&dest).map(|m| m.len()).ok();
        fs::rename(temp, &dest)?;
        drop(room);
        self.used.fetch_add(len, Ordering::Relaxed);
        match replaced {
            Some(old) => less(&self.used, old),
            None => self.objects.fetch_add(1, Ordering::Relaxed),
        };
        File::open(dir)?.sync_all()
    }

    /// The verified blob for `digest`, mapped into memory, if present.
    pub(crate) fn get_mapped(&self, digest: &Digest) -> io::Result<Option<Bytes>> {
        match self.get(digest)? {
            Some((file, len)) => map(&file, len).map(Some),
            None => Ok(None),
        }
    }

    pub(crate) fn remove_temp(&self, temp: &Path) {
        if let Err(e) = fs::remove_file(temp) {
            tracing::warn!(path = %temp.display(), error = %e, "could not remove temp file");
        }
    }

    /// Number of files in the temp folder (for tests and diagnostics).
    #[cfg(test)]
    pub(crate) fn temp_count(&self) -> usize {
        fs::read_dir(&self.tmp).map(|d| d.count()).unwrap_or(0)
    }
}

/// Maps the first `len` bytes of `file` read-only and shared, as `Bytes` that keep the mapping
/// alive. Serving such bytes costs no read syscalls and no copy in berth: the kernel copies
/// from the page cache straight into the socket.
///
/// Safety of the mapping: blob files are never modified in place once published (removal
/// unlinks them, which leaves existing mappings intact), and a fill's temp file is sized to
/// its full length before it is mapped, with readers kept below what has been written.
pub(crate) fn map(file: &File, len: u64) -> io::Result<Bytes> {
    if len == 0 {
        return Ok(Bytes::new());
    }
    // SAFETY: see above; the file is not truncated while mapped.
    // No MADV_SEQUENTIAL: it would let the kernel drop pages right after sending them, and a
    // cached blob is meant to be read again.
    let mmap = unsafe { memmap2::MmapOptions::new().len(len as usize).map(file)? };
    Ok(Bytes::from_owner(mmap))
}

/// Takes `n` from a counter, stopping at zero.
fn less(counter: &AtomicU64, n: u64) -> u64 {
    counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| Some(v.saturating_sub(n))).unwrap_or(0)
}
