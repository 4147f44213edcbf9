//! The pump: the source's body as it arrives, resumed after a cut (a few times, backing off)
//! with what is already held skipped, batched for the writer within the room on disk.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::stream::{BoxStream, StreamExt};

use super::write::{Batch, Pipeline, Room, WRITE_BATCH};
use super::Resume;
use crate::config::MinRate;
use crate::error::Error;
use crate::oci::digest::Digest;
use crate::store::pace::Pace;
use crate::store::Store;

/// Resumptions of a cut body before its fill fails, and the pause before the first.
const MAX_RESUMES: u32 = 3;
const RESUME_BACKOFF: Duration = Duration::from_millis(100);

/// `chunk` without the first `skip` bytes still to skip (a resumed body that starts before
/// what is held), counting them off.
pub(crate) fn skip_held(chunk: Bytes, skip: &mut u64) -> Bytes {
    if *skip == 0 {
        return chunk;
    }
    let n = (*skip).min(chunk.len() as u64);
    *skip -= n;
    chunk.slice(n as usize..)
}

/// A source's body, and how to continue it after a cut.
pub(super) struct Pump {
    digest: Digest,
    len: Option<u64>,
    body: BoxStream<'static, Result<Bytes, Error>>,
    resume: Option<Arc<Resume>>,
    /// Bytes of the current body that are already held.
    skip: u64,
    received: u64,
    resumes: u32,
    pace: Pace,
}

impl Pump {
    pub(super) fn new(
        digest: &Digest,
        len: Option<u64>,
        body: BoxStream<'static, Result<Bytes, Error>>,
        resume: Option<Arc<Resume>>,
        floor: Option<MinRate>,
    ) -> Pump {
        let pace = Pace::new(floor);
        Pump { digest: digest.clone(), len, body, resume, skip: 0, received: 0, resumes: 0, pace }
    }

    /// New bytes received so far.
    pub(super) fn received(&self) -> u64 {
        self.received
    }

    /// The next new bytes; `None` at the end of the content; the cut's error once resuming
    /// is given up.
    pub(super) async fn next(&mut self) -> Result<Option<Bytes>, Error> {
        loop {
            let cut = match self.pace.next(&mut self.body).await {
                Some(Ok(chunk)) => {
                    let chunk = skip_held(chunk, &mut self.skip);
                    self.received = self.received.saturating_add(chunk.len() as u64);
                    return Ok(Some(chunk));
                }
                None if self.len.is_none_or(|l| self.received >= l) => return Ok(None),
                None => {
                    Error::Unavailable(format!("{}: body ended after {} bytes", self.digest, self.received))
                }
                Some(Err(e)) => e,
            };
            self.resume_after(cut).await?;
        }
    }

    /// Asks for the rest after a cut, a few times, hashing on from where it was.
    async fn resume_after(&mut self, mut cut: Error) -> Result<(), Error> {
        loop {
            let Some(resume) = self.resume.clone().filter(|_| self.resumes < MAX_RESUMES) else {
                return Err(cut);
            };
            self.resumes += 1;
            let (digest, offset, attempt) = (&self.digest, self.received, self.resumes);
            tracing::warn!(%digest, offset, attempt, error = %cut, "source body cut; resuming");
            metrics::counter!("berth_fill_resumes_total").increment(1);
            // The cut body goes now, with any connections and buffers it holds.
            self.body = futures::stream::empty().boxed();
            tokio::time::sleep(RESUME_BACKOFF * 4u32.pow(self.resumes - 1)).await;
            match resume(self.received).await {
                Ok(rest) => {
                    (self.body, self.skip) = (rest.body, rest.skip);
                    self.pace.restart();
                    return Ok(());
                }
                Err(e) => cut = e,
            }
        }
    }
}

/// Pumps the body into the writer and hasher in `WRITE_BATCH`es, each within the room on
/// disk. Stops early, with `Ok`, when room runs out for a fill that can pass through, or
/// when the writer has failed (its error is reported by the pipeline).
pub(super) async fn pump_into(
    store: &Store,
    pump: &mut Pump,
    pipe: &Pipeline,
    room: &mut Room,
) -> Result<(), Error> {
    let mut batch = Batcher::default();
    while let Some(chunk) = pump.next().await? {
        check_received(store, &pump.digest, pump.len, pump.received())?;
        batch.push(chunk);
        if batch.size < WRITE_BATCH {
            continue;
        }
        let (full, size) = batch.take();
        if !room.take(store, &pump.digest, size).await {
            return Ok(());
        }
        if !room.keep_on_disk() && pump.received() > store.disk.capacity() {
            // No length to pass through with: an uncached fill may not use more temp space
            // than the disk tier has.
            return Err(Error::BlobTooLarge(pump.received()));
        }
        if !pipe.send(full).await {
            return Ok(());
        }
    }
    let (last, size) = batch.take();
    if size > 0 && room.take(store, &pump.digest, size).await {
        pipe.send(last).await;
    }
    Ok(())
}

/// Chunks below this are copied together (a body sent in tiny chunks costs a write each
/// otherwise); larger ones are handed on as received.
const SMALL_CHUNK: usize = 16 * 1024;

/// A batch being gathered: chunks by reference, small ones copied into one.
#[derive(Default)]
struct Batcher {
    chunks: Vec<Bytes>,
    small: BytesMut,
    size: usize,
}

impl Batcher {
    fn push(&mut self, chunk: Bytes) {
        self.size += chunk.len();
        if chunk.len() < SMALL_CHUNK {
            self.small.extend_from_slice(&chunk);
            if self.small.len() >= SMALL_CHUNK {
                self.chunks.push(self.small.split().freeze());
            }
            return;
        }
        if !self.small.is_empty() {
            self.chunks.push(self.small.split().freeze());
        }
        self.chunks.push(chunk);
    }

    /// The batch so far and its size; the batcher starts over.
    fn take(&mut self) -> (Batch, usize) {
        if !self.small.is_empty() {
            self.chunks.push(self.small.split().freeze());
        }
        (Arc::new(std::mem::take(&mut self.chunks)), std::mem::take(&mut self.size))
    }
}

/// Refuses a body longer than announced, or past `max_blob_size`.
fn check_received(store: &Store, digest: &Digest, len: Option<u64>, received: u64) -> Result<(), Error> {
    if len.is_some_and(|l| received > l) {
        return Err(Error::Integrity(format!("{digest}: body longer than announced")));
    }
    if received > store.max_blob_size {
        return Err(Error::BlobTooLarge(received));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiny_chunks_are_copied_together_and_large_ones_handed_on_as_received() {
        let mut batch = Batcher::default();
        let large = Bytes::from(vec![7u8; 100_000]);
        let mut want = Vec::new();
        for i in 0..40_000u32 {
            let b = Bytes::from(vec![(i % 251) as u8]);
            want.extend_from_slice(&b);
            batch.push(b);
        }
        want.extend_from_slice(&large);
        batch.push(large.clone());
        want.push(9);
        batch.push(Bytes::from_static(&[9]));
        let (chunks, size) = batch.take();
        assert_eq!(size, want.len());
        assert_eq!(chunks.concat(), want, "the batch holds other bytes");
        assert!(chunks.len() <= 5, "40,000 one-byte chunks became {} writes", chunks.len());
        assert!(chunks.iter().any(|c| c.as_ptr() == large.as_ptr()), "a large chunk was copied");
        assert_eq!(batch.take().1, 0, "the batcher did not start over");
    }
}
