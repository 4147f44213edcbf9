//! Writing and hashing: two blocking threads fed the same batches, so that the page-cache
//! copy and SHA-256 overlap; and the room on disk those batches are counted in.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{Fill, FillState};
use crate::error::Error;
use crate::oci::digest::Digest;
use crate::store::disk::Reservation;
use crate::store::tier::disk::DiskWriter;
use crate::store::Store;

/// Bytes handed to the writer thread at a time.
pub(super) const WRITE_BATCH: usize = 256 * 1024;

/// The writer and hasher threads of a fill.
pub(super) struct Pipeline {
    tx: mpsc::Sender<Bytes>,
    hash_tx: mpsc::Sender<Bytes>,
    writer: JoinHandle<(DiskWriter, Option<Error>)>,
    hasher: JoinHandle<([u8; 32], Option<BytesMut>)>,
}

/// What the pipeline made: the writer (to commit or drop), the error that stopped it if one
/// did, the SHA-256 of what was sent, and a copy for the memory tier when asked for.
pub(super) struct Made {
    pub(super) writer: DiskWriter,
    pub(super) error: Option<Error>,
    pub(super) hash: [u8; 32],
    pub(super) memory: Option<BytesMut>,
}

impl Pipeline {
    /// Starts both threads; the hasher keeps a copy of `keep` bytes for memory.
    pub(super) fn start(writer: DiskWriter, fill: &Arc<Fill>, keep: Option<usize>) -> Pipeline {
        let (tx, rx) = mpsc::channel::<Bytes>(8);
        let (hash_tx, hash_rx) = mpsc::channel::<Bytes>(8);
        let fill = fill.clone();
        let writer = tokio::task::spawn_blocking(move || write_loop(rx, writer, &fill));
        let hasher = tokio::task::spawn_blocking(move || hash_loop(hash_rx, keep));
        Pipeline { tx, hash_tx, writer, hasher }
    }

    /// Hands `batch` to both threads; false when one has stopped (the writer failed).
    pub(super) async fn send(&self, batch: Bytes) -> bool {
        self.hash_tx.send(batch.clone()).await.is_ok() && self.tx.send(batch).await.is_ok()
    }

    /// Ends the input and waits for both threads.
    pub(super) async fn finish(self) -> Result<Made, Error> {
        drop((self.tx, self.hash_tx));
        let (writer, error) = self.writer.await.map_err(Error::internal)?;
        let (hash, memory) = self.hasher.await.map_err(Error::internal)?;
        Ok(Made { writer, error, hash, memory })
    }
}

/// Runs on a blocking thread: writes each batch, then tells followers. Returns the writer,
/// and the error that stopped it, if one did.
fn write_loop(mut rx: mpsc::Receiver<Bytes>, writer: DiskWriter, fill: &Fill) -> (DiskWriter, Option<Error>) {
    while let Some(buf) = rx.blocking_recv() {
        if let Err(e) = writer.append_blocking(&buf) {
            return (writer, Some(Error::fault("writing blob", e)));
        }
        let offset = writer.written_len();
        fill.state.send_modify(|s| {
            if let FillState::Streaming { written, .. } = s {
                *written = offset;
            }
        });
    }
    (writer, None)
}

/// Runs on a blocking thread: hashes each batch and, for the memory tier, keeps a copy.
fn hash_loop(mut rx: mpsc::Receiver<Bytes>, keep: Option<usize>) -> ([u8; 32], Option<BytesMut>) {
    let mut hasher = Sha256::new();
    let mut memory = keep.map(BytesMut::with_capacity);
    while let Some(buf) = rx.blocking_recv() {
        hasher.update(&buf);
        if let Some(m) = memory.as_mut() {
            m.extend_from_slice(&buf);
        }
    }
    (hasher.finalize().into(), memory)
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
