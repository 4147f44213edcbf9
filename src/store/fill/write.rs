//! Writing and hashing: two blocking threads fed the same batches, so that the page-cache
//! copy and SHA-256 overlap; and the room on disk those batches are counted in.

use std::fs::File;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{Fill, FillState};
use crate::error::Error;
use crate::oci::digest::Digest;
use crate::store::bucket::parts::{BadPart, Checker, Parts};
use crate::store::disk::Reservation;
use crate::store::tier::disk::DiskWriter;
use crate::store::Store;

/// Bytes handed to the writer thread at a time.
pub(super) const WRITE_BATCH: usize = 256 * 1024;

/// A body's chunks handed on together, as received (not copied into one buffer): at least
/// `WRITE_BATCH` bytes, but the last batch.
pub(super) type Batch = Arc<Vec<Bytes>>;

/// The writer and hasher threads of a fill.
pub(super) struct Pipeline {
    tx: mpsc::Sender<Batch>,
    hash_tx: mpsc::Sender<Batch>,
    writer: JoinHandle<(DiskWriter, Option<Error>)>,
    hasher: JoinHandle<Hashed>,
    shown: Arc<Progress>,
}

/// What the pipeline made: the writer (to commit or drop), the error that stopped it if one
/// did, the SHA-256 of what was sent, and a copy for the memory tier when asked for; with
/// part checksums, how much followers were shown and where the first bad part starts.
pub(super) struct Made {
    pub(super) writer: DiskWriter,
    pub(super) error: Option<Error>,
    pub(super) hash: [u8; 32],
    pub(super) memory: Option<BytesMut>,
    pub(super) shown: u64,
    pub(super) bad_part: Option<u64>,
}

/// What the hasher thread returns.
struct Hashed {
    hash: [u8; 32],
    memory: Option<BytesMut>,
    bad_part: Option<u64>,
}

/// How far followers of a `Streaming` fill may read: what is written and, with part
/// checksums, checked. Whichever thread moves last moves the fill's `written`.
struct Progress {
    written: AtomicU64,
    checked: AtomicU64,
    /// With part checksums, the fill is pending until its first part matches, then streams
    /// this file (and mapping) of this length.
    reveal: Option<(Arc<File>, Option<Bytes>, u64)>,
}

impl Progress {
    fn visible(&self) -> u64 {
        self.written.load(Ordering::Acquire).min(self.checked.load(Ordering::Acquire))
    }

    /// Moves the fill's `written` to what is visible now; both counters are read under the
    /// state's lock, so the thread that takes it last sees the other's latest store.
    fn show(&self, fill: &Fill) {
        fill.state.send_if_modified(|s| {
            let visible = self.visible();
            match (s, &self.reveal) {
                (FillState::Streaming { written, .. }, _) if visible > *written => {
                    *written = visible;
                    true
                }
                (s @ FillState::Pending, Some((file, map, len))) if visible > 0 => {
                    *s = FillState::Streaming {
                        file: file.clone(),
                        map: map.clone(),
                        len: Some(*len),
                        written: visible,
                    };
                    true
                }
                _ => false,
            }
        });
    }
}

impl Pipeline {
    /// Starts both threads; the hasher keeps a copy of `keep` bytes for memory. With
    /// `parts`, the fill is shown to followers (pending until then) a part at a time, each once
    /// it matches its checksum, and a part that does not stops the hasher (so `send` fails).
    pub(super) fn start(
        writer: DiskWriter,
        fill: &Arc<Fill>,
        keep: Option<usize>,
        parts: Option<Parts>,
    ) -> Pipeline {
        let (tx, rx) = mpsc::channel::<Batch>(8);
        let (hash_tx, hash_rx) = mpsc::channel::<Batch>(8);
        let checked = if parts.is_some() { 0 } else { u64::MAX };
        let reveal = parts.as_ref().map(|p| (writer.file().0.clone(), writer.file().1.cloned(), p.len()));
        let shown =
            Arc::new(Progress { written: AtomicU64::new(0), checked: AtomicU64::new(checked), reveal });
        let (w, h) = ((fill.clone(), shown.clone()), (fill.clone(), shown.clone()));
        let writer = tokio::task::spawn_blocking(move || write_loop(rx, writer, &w.0, &w.1));
        let checker = parts.map(Parts::checker);
        let hasher = tokio::task::spawn_blocking(move || hash_loop(hash_rx, keep, checker, &h.0, &h.1));
        Pipeline { tx, hash_tx, writer, hasher, shown }
    }

    /// Hands `batch` to both threads; false when one has stopped (the writer failed, or a
    /// part did not match).
    pub(super) async fn send(&self, batch: Batch) -> bool {
        self.hash_tx.send(batch.clone()).await.is_ok() && self.tx.send(batch).await.is_ok()
    }

    /// Ends the input and waits for both threads.
    pub(super) async fn finish(self) -> Result<Made, Error> {
        drop((self.tx, self.hash_tx));
        let (writer, error) = self.writer.await.map_err(Error::internal)?;
        let Hashed { hash, memory, bad_part } = self.hasher.await.map_err(Error::internal)?;
        let shown = self.shown.visible().min(writer.written_len());
        Ok(Made { writer, error, hash, memory, shown, bad_part })
    }
}

/// Runs on a blocking thread: writes each batch, then tells followers. Returns the writer,
/// and the error that stopped it, if one did.
fn write_loop(
    mut rx: mpsc::Receiver<Batch>,
    writer: DiskWriter,
    fill: &Fill,
    shown: &Progress,
) -> (DiskWriter, Option<Error>) {
    while let Some(batch) = rx.blocking_recv() {
        for buf in batch.iter() {
            if let Err(e) = writer.append_blocking(buf) {
                return (writer, Some(Error::fault("writing blob", e)));
            }
        }
        shown.written.store(writer.written_len(), Ordering::Release);
        shown.show(fill);
    }
    (writer, None)
}

/// Runs on a blocking thread: hashes each batch and, for the memory tier, keeps a copy; with
/// a part checker, checks each part, and stops at the first that does not match.
fn hash_loop(
    mut rx: mpsc::Receiver<Batch>,
    keep: Option<usize>,
    mut checker: Option<Checker>,
    fill: &Fill,
    shown: &Progress,
) -> Hashed {
    let mut hasher = Sha256::new();
    let mut memory = keep.map(BytesMut::with_capacity);
    while let Some(batch) = rx.blocking_recv() {
        for buf in batch.iter() {
            hasher.update(buf);
            if let Some(m) = memory.as_mut() {
                m.extend_from_slice(buf);
            }
            match checker.as_mut().map(|c| c.feed(buf)) {
                Some(Ok(Some(end))) => {
                    shown.checked.store(end, Ordering::Release);
                    shown.show(fill);
                }
                Some(Err(BadPart(at))) => {
                    // The parts before it matched (a batch may hold several).
                    shown.checked.store(at, Ordering::Release);
                    shown.show(fill);
                    return Hashed { hash: hasher.finalize().into(), memory: None, bad_part: Some(at) };
                }
                Some(Ok(None)) | None => {}
            }
        }
    }
    Hashed { hash: hasher.finalize().into(), memory, bad_part: None }
}

/// The fill's room on disk, reserved as bytes are written, never for an announced length.
pub(super) struct Room {
    reserved: Reservation,
    keep_on_disk: bool,
    /// With a source to resume from and a length, a fill out of room stops writing and its
    /// clients get the rest from the source, so that temp files stay within the capacity.
    can_pass: bool,
    no_room: bool,
}

impl Room {
    pub(super) fn new(store: &Store, len: Option<u64>, can_pass: bool) -> Room {
        let keep_on_disk = len.is_none_or(|l| l <= store.disk.capacity());
        Room { reserved: store.disk.reserve(), keep_on_disk, can_pass, no_room: false }
    }

    /// Whether the content is still to be kept on disk.
    pub(super) fn keep_on_disk(&self) -> bool {
        self.keep_on_disk
    }

    /// Whether room ran out for a fill that passes through.
    pub(super) fn ran_out(&self) -> bool {
        self.no_room
    }

    /// Grows the room by a batch about to be written; false when there is none and the
    /// fill is to pass through instead (a fill that cannot goes on without keeping).
    pub(super) async fn take(&mut self, store: &Store, digest: &Digest, batch: usize) -> bool {
        self.keep_on_disk = self.keep_on_disk && room_for(store, &mut self.reserved, digest, batch).await;
        if !self.keep_on_disk && self.can_pass {
            self.no_room = true;
            return false;
        }
        true
    }

    /// The reservation, for the commit that turns it into used bytes.
    pub(super) fn into_reservation(self) -> Reservation {
        self.reserved
    }
}

/// Grows the fill's room on disk by a batch about to be written; false (and counted) when
/// no room can be made, and the fill goes on without keeping the content.
async fn room_for(store: &Store, room: &mut Reservation, digest: &Digest, batch: usize) -> bool {
    if store.grow(room, batch as u64).await {
        return true;
    }
    tracing::warn!(%digest, reserved = room.bytes(), "no room on the disk tier: serving without keeping");
    store.count_uncached();
    false
}
