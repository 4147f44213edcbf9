//! Verify and publish: what was written is compared with the digest and the announced
//! length; verified content goes to memory, then followers are let finish, then the disk
//! write commits. Content that fails is dropped with its temp file.

use std::sync::Arc;

use bytes::BytesMut;

use super::write::{Made, Room};
use super::{blocking, drop_off_thread, Fill, FillState};
use crate::error::Error;
use crate::oci::digest::Digest;
use crate::store::tier::disk::DiskWriter;
use crate::store::tier::Verified;
use crate::store::Store;

/// Verifies what the fill made and publishes it, or drops it and returns why not (telling a
/// source whose bytes were wrong, through `rejected`).
pub(super) async fn settle(
    store: &Store,
    fill: &Arc<Fill>,
    len: Option<u64>,
    pumped: Result<(), Error>,
    made: Made,
    room: Room,
    rejected: Option<Box<dyn FnOnce() + Send + Sync>>,
) -> Result<(), Error> {
    let Made { writer, error, hash, memory, .. } = made;
    let written = error.map_or(Ok(writer.written_len()), Err);
    match pumped.and_then(|()| verify(&fill.digest, len, written?, hash)) {
        Ok(proof) => publish(store, fill, writer, proof, memory, room).await,
        Err(e) => {
            if let (Error::Integrity(_), Some(rejected)) = (&e, rejected) {
                rejected();
            }
            drop_off_thread(writer).await?;
            Err(e)
        }
    }
}

/// Compares `written` bytes hashing to `hash` with the digest and the announced length.
fn verify(digest: &Digest, len: Option<u64>, written: u64, hash: [u8; 32]) -> Result<Verified, Error> {
    if let Some(l) = len.filter(|&l| l != written) {
        return Err(Error::Integrity(format!("{digest}: got {written} of {l} bytes")));
    }
    Verified::check(digest, hash, written)
}

/// Verified: publishes to memory, then lets every follower finish, then commits to disk
/// (when it was kept) and records the blob.
async fn publish(
    store: &Store,
    fill: &Arc<Fill>,
    mut writer: DiskWriter,
    proof: Verified,
    memory: Option<BytesMut>,
    room: Room,
) -> Result<(), Error> {
    let (digest, written) = (fill.digest.clone(), proof.len());
    if let Some(bytes) = memory {
        store.memory.insert(digest.clone(), bytes.freeze()).await;
    }
    let (file, map) = (writer.file().0.clone(), writer.file().1.cloned());
    fill.state.send_replace(FillState::Verified { file, map, len: written });
    let keep_on_disk = room.keep_on_disk();
    writer.set_room(room.into_reservation());
    let (meta, d) = (store.meta.clone(), digest.clone());
    // The rename is a change of the digest's object: readers that map the path meanwhile
    // hash what they mapped (see `tier::checks`); checked once the file is in place.
    let change = keep_on_disk.then(|| store.tiers.publishing(&digest));
    blocking(move || {
        let outcome = if keep_on_disk { "stored" } else { "uncached" };
        metrics::counter!("berth_fills_total", "outcome" => outcome).increment(1);
        if !keep_on_disk {
            tracing::warn!(digest = %d, bytes = written, "disk tier full of pinned or in-use content: served without caching");
            return Ok(());
        }
        if let Err(e) = writer.commit_blocking(&proof) {
            // The writer, dropped uncommitted, has removed its temp file.
            tracing::warn!(digest = %d, error = %e, "verified blob not stored on disk");
            return Ok(());
        }
        if let Some(change) = change {
            change.checked();
        }
        if let Err(e) = meta.record_blob(&d, written, None) {
            tracing::warn!(digest = %d, error = %e, "blob stored without metadata");
        }
        Ok(())
    })
    .await
}
