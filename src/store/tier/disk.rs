//! The disk tier as a `BlobTier`: objects are files, read as one mapping (`Bytes` backed by
//! the mapping: no copy); a write is a temp file that commit fsyncs and renames into place,
//! and that is deleted when the write is dropped uncommitted.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::watch;

use super::{check_range, BlobTier, TierWriter, Usage, Verified, WrittenView};
use crate::oci::digest::Digest;
use crate::store::disk::{self, DiskTier, Reservation};

/// Runs blocking disk work off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> io::Result<T> + Send + 'static) -> io::Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(io::Error::other)?
}

impl BlobTier for Arc<DiskTier> {
    type Writer = DiskWriter;
    const DURABLE: bool = true;

    async fn len(&self, digest: &Digest) -> io::Result<Option<u64>> {
        let (disk, d) = (self.clone(), digest.clone());
        blocking(move || DiskTier::len(&disk, &d)).await
    }

    async fn read(&self, digest: &Digest) -> io::Result<Option<Bytes>> {
        let (disk, d) = (self.clone(), digest.clone());
        blocking(move || disk.get_mapped(&d)).await
    }

    async fn begin_write(&self, digest: &Digest, len: Option<u64>) -> io::Result<DiskWriter> {
        let (disk, d) = (self.clone(), digest.clone());
        blocking(move || DiskWriter::begin(&disk, &d, len)).await
    }

    async fn remove(&self, digest: &Digest) -> io::Result<u64> {
        let (disk, d) = (self.clone(), digest.clone());
        blocking(move || DiskTier::remove(&disk, &d)).await
    }

    async fn scan(&self) -> io::Result<Vec<(Digest, u64)>> {
        let disk = self.clone();
        blocking(move || DiskTier::scan(&disk)).await
    }

    async fn usage(&self) -> Usage {
        Usage { bytes: self.used(), objects: self.objects() }
    }

    fn admits(&self, len: u64) -> bool {
        len <= self.capacity()
    }
}

/// A write to the disk tier: a temp file (sized and mapped up front when the length is
/// announced), deleted on drop unless committed. Its blocking methods are for callers on
/// blocking threads; the `TierWriter` ones run them there.
pub(crate) struct DiskWriter {
    disk: Arc<DiskTier>,
    digest: Digest,
    file: Arc<File>,
    temp: PathBuf,
    map: Option<Bytes>,
    len: Option<u64>,
    written: watch::Sender<u64>,
    /// Room on disk promised to this write, turned into used bytes on commit.
    room: Option<Reservation>,
    committed: bool,
}

impl DiskWriter {
    /// Makes the temp file for `digest`. Blocking.
    pub(crate) fn begin(disk: &Arc<DiskTier>, digest: &Digest, len: Option<u64>) -> io::Result<DiskWriter> {
        let (file, temp) = disk.temp(digest)?;
        let mut writer = DiskWriter {
            disk: disk.clone(),
            digest: digest.clone(),
            file: Arc::new(file),
            temp,
            map: None,
            len,
            written: watch::channel(0).0,
            room: None,
            committed: false,
        };
        // Sized up front so that followers read it through one mapping as it fills.
        if let Some(len) = len {
            writer.file.set_len(len)?;
            writer.map = Some(disk::map(&writer.file, len)?);
        }
        Ok(writer)
    }

    /// Sets the room on disk this write's bytes are counted in until it commits.
    pub(crate) fn set_room(&mut self, room: Reservation) {
        self.room = Some(room);
    }

    /// The temp file and its mapping (when the length was announced).
    pub(crate) fn file(&self) -> (&Arc<File>, Option<&Bytes>) {
        (&self.file, self.map.as_ref())
    }

    /// Bytes written so far.
    pub(crate) fn written_len(&self) -> u64 {
        *self.written.borrow()
    }

    /// Where `n` more bytes go, and the written length after them; refused past the
    /// announced length.
    fn span(&self, n: usize) -> io::Result<(u64, u64)> {
        let at = self.written_len();
        let total = at + n as u64;
        if self.len.is_some_and(|l| total > l) {
            let msg = format!("{total} bytes written of {:?} announced", self.len);
            return Err(io::Error::new(io::ErrorKind::InvalidInput, msg));
        }
        Ok((at, total))
    }

    /// Appends `bytes` at the written length and shows them to followers. Blocking.
    pub(crate) fn append_blocking(&self, bytes: &[u8]) -> io::Result<()> {
        let (at, total) = self.span(bytes.len())?;
        self.file.write_all_at(bytes, at)?;
        self.written.send_replace(total);
        Ok(())
    }

    /// Publishes the verified temp file as the blob (fsync, rename). Blocking.
    pub(crate) fn commit_blocking(mut self, proof: &Verified) -> io::Result<()> {
        proof.admit(&self.digest, self.written_len())?;
        if self.len.is_some_and(|l| l != self.written_len()) {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "written less than announced"));
        }
        let room = self.room.take();
        self.disk.publish(&self.file, &self.temp, &self.digest, room)?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for DiskWriter {
    fn drop(&mut self) {
        if !self.committed {
            self.disk.remove_temp(&self.temp);
        }
    }
}

impl TierWriter for DiskWriter {
    type View = DiskView;

    async fn append(&mut self, bytes: Bytes) -> io::Result<()> {
        let (at, total) = self.span(bytes.len())?;
        let file = self.file.clone();
        blocking(move || file.write_all_at(&bytes, at)).await?;
        self.written.send_replace(total);
        Ok(())
    }

    fn view(&self) -> DiskView {
        DiskView { file: self.file.clone(), map: self.map.clone(), written: self.written.subscribe() }
    }

    async fn commit(self, proof: Verified) -> io::Result<()> {
        blocking(move || self.commit_blocking(&proof)).await
    }
}

/// The written part of a disk write: its mapping, or the file read back.
#[derive(Clone)]
pub(crate) struct DiskView {
    file: Arc<File>,
    map: Option<Bytes>,
    written: watch::Receiver<u64>,
}

impl WrittenView for DiskView {
    fn written(&self) -> watch::Receiver<u64> {
        self.written.clone()
    }

    async fn read_written(&self, range: Range<u64>) -> io::Result<Bytes> {
        check_range(&range, *self.written.borrow())?;
        if let Some(map) = &self.map {
            return Ok(map.slice(range.start as usize..range.end as usize));
        }
        let file = self.file.clone();
        blocking(move || {
            let mut buf = vec![0u8; (range.end - range.start) as usize];
            file.read_exact_at(&mut buf, range.start)?;
            Ok(Bytes::from(buf))
        })
        .await
    }
}
