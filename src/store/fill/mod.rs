//! One fill per digest: the leader fetches, hashes and writes a temp file; every client, the
//! first included, follows that file (see `body::follow`). The fill runs in its own task, so a
//! client that goes away does not cancel it, and the writer never waits for readers.
//!
//! Invariants held here:
//! - one in-flight fill per digest (the `inflight` map, checked and filled under one lock);
//! - nothing is published to memory or disk before the digest and length are verified;
//! - a follower's stream ends cleanly only after verification, otherwise with an error.
//!
//! Parts: `inflight` (the map and the leader's guard), `lead` (the leader's steps), `pump`
//! (the body, resumed after cuts), `write` (writer and hasher threads, room on disk),
//! `publish` (verify, then publish), `pass` (passing through what the disk cannot take).

mod claim;
mod inflight;
mod lead;
mod pass;
mod publish;
mod pump;
#[cfg(test)]
mod tests;
mod write;

pub(crate) use claim::LeaseHeld;
pub(crate) use pump::skip_held;

use std::fs::File;
use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use tokio::sync::watch;

use super::tier::disk::DiskWriter;
use crate::config::MinRate;
use crate::error::Error;
use crate::oci::digest::Digest;

/// Asks the source for the rest of the content from a byte offset.
pub(crate) type Resume = Box<dyn Fn(u64) -> BoxFuture<'static, Result<Resumed, Error>> + Send + Sync>;

/// Streams the content from the berth that holds its fleet fill lease, reached as a peer at
/// the URL given (`store::bucket::lease`).
pub(crate) type FromHolder = Box<dyn FnOnce(String) -> BoxFuture<'static, Result<Source, Error>> + Send>;

/// The rest of a body after a cut: bytes from some offset, of which `skip` are already held
/// (a server that ignores Range sends everything again).
pub struct Resumed {
    pub body: BoxStream<'static, Result<Bytes, Error>>,
    pub(crate) skip: u64,
}

/// What a fill streams from: an upstream (or peer) response body.
pub struct Source {
    /// The announced length, when upstream sent one.
    pub len: Option<u64>,
    pub body: BoxStream<'static, Result<Bytes, Error>>,
    /// How to continue after the body is cut; without it a cut fails the fill.
    pub resume: Option<Resume>,
    /// Called when the content fails verification (a peer that sent wrong bytes).
    pub rejected: Option<Box<dyn FnOnce() + Send + Sync>>,
    /// Kept until the fill ends (a turn among the fills allowed at once).
    pub hold: Option<Box<dyn std::any::Any + Send + Sync>>,
    /// The slowest the body (and any resumed rest) may arrive; below it, it counts as cut.
    pub floor: Option<MinRate>,
}

#[derive(Clone)]
pub(crate) enum FillState {
    /// Waiting for the source to answer.
    Pending,
    /// `written` bytes of `file` are readable; more are coming. `map` is the file mapped to
    /// its announced length, when upstream announced one.
    Streaming {
        file: Arc<File>,
        map: Option<Bytes>,
        len: Option<u64>,
        written: u64,
    },
    /// All `len` bytes are written and match the digest.
    Verified {
        file: Arc<File>,
        map: Option<Bytes>,
        len: u64,
    },
    Failed(Error),
    /// The disk tier could not take the content: clients are served from the source, and
    /// nothing is kept (see `passthrough`).
    PassThrough(Arc<super::passthrough::PassThrough>),
}

pub struct Fill {
    digest: Digest,
    /// Who started it (the registry, for the layer above: a label the store does not read).
    origin: Arc<str>,
    /// Its fetch asks upstream: claimed fleet-wide first, with a bucket.
    claims: bool,
    /// Requests served by this fill: the one that started it and every follower.
    clients: std::sync::atomic::AtomicU64,
    /// Bytes asked of the source beside the fill, for ranges far ahead of it.
    ahead: std::sync::atomic::AtomicU64,
    state: watch::Sender<FillState>,
    /// Set once the fill has ended: published to the tiers, or failed.
    settled: watch::Sender<bool>,
}

impl Fill {
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// The label the fill was started with.
    pub(crate) fn origin(&self) -> &str {
        &self.origin
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<FillState> {
        self.state.subscribe()
    }

    /// Waits until the source has answered: the total length if known, or the fill's error.
    pub async fn ready(&self) -> Result<Option<u64>, Error> {
        let mut rx = self.subscribe();
        let state = rx
            .wait_for(|s| !matches!(s, FillState::Pending))
            .await
            .map_err(|_| Error::Internal("fill abandoned".into()))?;
        match &*state {
            FillState::Streaming { len, .. } => Ok(*len),
            FillState::Verified { len, .. } => Ok(Some(*len)),
            FillState::PassThrough(p) => Ok(p.len),
            FillState::Failed(e) => Err(e.clone()),
            FillState::Pending => unreachable!("waited for a non-pending state"),
        }
    }

    /// The content's length, once the source has said it.
    pub(crate) fn len_now(&self) -> Option<u64> {
        match &*self.state.borrow() {
            FillState::Streaming { len, .. } => *len,
            FillState::Verified { len, .. } => Some(*len),
            FillState::PassThrough(p) => p.len,
            FillState::Pending | FillState::Failed(_) => None,
        }
    }

    /// Counts `n` more bytes asked of the source beside the fill, if that keeps them within
    /// `budget`: ranges fetched on their own never add up to more than the budget per fill.
    pub(crate) fn take_ahead(&self, n: u64, budget: u64) -> bool {
        use std::sync::atomic::Ordering;
        self.ahead
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |a| a.checked_add(n).filter(|&t| t <= budget))
            .is_ok()
    }

    /// How many bytes from the start followers can be given now.
    pub(crate) fn available(&self) -> u64 {
        match &*self.state.borrow() {
            FillState::Streaming { written, .. } => *written,
            FillState::Verified { len, .. } => *len,
            FillState::PassThrough(p) => p.written,
            FillState::Pending | FillState::Failed(_) => 0,
        }
    }

    /// Waits until the fill has ended: its content published to the tiers, or failed.
    pub(crate) async fn settled(&self) {
        let _ = self.settled.subscribe().wait_for(|s| *s).await;
    }

    /// Waits until the fill is verified, returning its length, or its error.
    pub(crate) async fn verified(&self) -> Result<u64, Error> {
        let mut rx = self.subscribe();
        let state = rx
            .wait_for(|s| {
                matches!(s, FillState::Verified { .. } | FillState::Failed(_) | FillState::PassThrough(_))
            })
            .await
            .map_err(|_| Error::Internal("fill abandoned".into()))?;
        match &*state {
            FillState::Verified { len, .. } => Ok(*len),
            FillState::Failed(e) => Err(e.clone()),
            FillState::PassThrough(p) => p.len.ok_or_else(|| {
                Error::Unavailable(format!("{}; upstream sent no length to pass through", p.why))
            }),
            _ => unreachable!("waited for a final state"),
        }
    }
}

/// Drops an uncommitted writer (removing its temp file) on a blocking thread.
async fn drop_off_thread(writer: DiskWriter) -> Result<(), Error> {
    blocking(move || {
        drop(writer);
        Ok(())
    })
    .await
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f).await.map_err(Error::internal)?.map_err(|e| Error::fault("disk tier", e))
}
