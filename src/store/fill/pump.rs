//! The pump: the source's body as it arrives, resumed after a cut (a few times, backing off)
//! with what is already held skipped, batched for the writer within the room on disk.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};

use super::write::{Pipeline, Room, WRITE_BATCH};
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
    let (mut batch, mut size) = (Vec::new(), 0);
    while let Some(chunk) = pump.next().await? {
        check_received(store, &pump.digest, pump.len, pump.received())?;
        size += chunk.len();
        batch.push(chunk);
        if size < WRITE_BATCH {
            continue;
        }
        let full = Arc::new(std::mem::take(&mut batch));
        if !room.take(store, &pump.digest, std::mem::take(&mut size)).await {
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
    if size > 0 && room.take(store, &pump.digest, size).await {
        pipe.send(Arc::new(batch)).await;
    }
    Ok(())
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
