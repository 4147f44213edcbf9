//! One fill per digest: the leader fetches, hashes and writes a temp file; every client, the
//! first included, follows that file (see `body::follow`). The fill runs in its own task, so a
//! client that goes away does not cancel it, and the writer never waits for readers.
//!
//! Invariants held here:
//! - one in-flight fill per digest (the `inflight` map, checked and filled under one lock);
//! - nothing is published to memory or disk before the digest and length are verified;
//! - a follower's stream ends cleanly only after verification, otherwise with an error.

use std::fs::File;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use sha2::{Digest as _, Sha256};
use tokio::sync::{mpsc, watch};

use super::tier::disk::DiskWriter;
use super::tier::Verified;
use super::Store;
use crate::config::MinRate;
use crate::digest::Digest;
use crate::error::Error;

/// Bytes handed to the writer thread at a time.
const WRITE_BATCH: usize = 256 * 1024;

/// Asks the source for the rest of the content from a byte offset.
pub type Resume = Box<dyn Fn(u64) -> BoxFuture<'static, Result<Resumed, Error>> + Send + Sync>;

/// The rest of a body after a cut: bytes from some offset, of which `skip` are already held
/// (a server that ignores Range sends everything again).
pub struct Resumed {
    pub body: BoxStream<'static, Result<Bytes, Error>>,
    pub skip: u64,
}

/// Resumptions of a cut body before its fill fails, and the pause before the first.
const MAX_RESUMES: u32 = 3;
const RESUME_BACKOFF: Duration = Duration::from_millis(100);

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
pub enum FillState {
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
    /// Requests served by this fill: the one that started it and every follower.
    clients: std::sync::atomic::AtomicU64,
    state: watch::Sender<FillState>,
    /// Set once the fill has ended: published to the tiers, or failed.
    settled: watch::Sender<bool>,
}

impl Fill {
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// The label the fill was started with.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    pub fn subscribe(&self) -> watch::Receiver<FillState> {
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

    /// Waits until the fill has ended: its content published to the tiers, or failed.
    pub async fn settled(&self) {
        let _ = self.settled.subscribe().wait_for(|s| *s).await;
    }

    /// Waits until the fill is verified, returning its length, or its error.
    pub async fn verified(&self) -> Result<u64, Error> {
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

impl Store {
    /// Joins the in-flight fill of `digest`, or starts one labelled `origin` that fetches with
    /// `fetch`. Returns the fill and whether this call started it.
    pub fn fill(
        self: &Arc<Self>,
        digest: &Digest,
        origin: &str,
        fetch: BoxFuture<'static, Result<Source, Error>>,
    ) -> (Arc<Fill>, bool) {
        let mut inflight = self.inflight.lock().expect("inflight lock");
        // A fill that has failed but not yet left the map is not joined: it is replaced (its
        // leader removes only its own entry).
        let live = inflight.get(digest).filter(|f| !matches!(*f.state.borrow(), FillState::Failed(_)));
        if let Some(fill) = live {
            metrics::counter!("berth_fill_followers_total").increment(1);
            fill.clients.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return (fill.clone(), false);
        }
        let (state, _) = watch::channel(FillState::Pending);
        let fill = Arc::new(Fill {
            digest: digest.clone(),
            origin: origin.into(),
            clients: std::sync::atomic::AtomicU64::new(1),
            state,
            settled: watch::channel(false).0,
        });
        inflight.insert(digest.clone(), fill.clone());
        drop(inflight);
        let store = self.clone();
        let leader = fill.clone();
        tokio::spawn(async move {
            let guard = LeadGuard { store: &store, fill: &leader };
            let result = lead(&store, &leader, fetch).await;
            if let Err(e) = &result {
                metrics::counter!("berth_fills_total", "outcome" => "failed").increment(1);
                tracing::warn!(digest = %leader.digest, error = %e, "fill failed");
                leader.state.send_replace(FillState::Failed(e.clone()));
            }
            drop(guard);
        });
        (fill, true)
    }

    /// The fill of `digest` in flight, if any.
    pub fn inflight(&self, digest: &Digest) -> Option<Arc<Fill>> {
        self.inflight.lock().expect("inflight lock").get(digest).cloned()
    }

    /// Digests being filled now.
    pub fn inflight_digests(&self) -> Vec<Digest> {
        self.inflight.lock().expect("inflight lock").keys().cloned().collect()
    }

    /// Number of fills in flight.
    pub fn fills_in_flight(&self) -> usize {
        self.inflight.lock().expect("inflight lock").len()
    }
}

/// Ends a fill however its task ends (including a panic): a fill that did not reach a final
/// state is failed, and the fill leaves the in-flight map.
struct LeadGuard<'a> {
    store: &'a Store,
    fill: &'a Arc<Fill>,
}

impl Drop for LeadGuard<'_> {
    fn drop(&mut self) {
        self.fill.state.send_if_modified(|s| match s {
            FillState::Pending | FillState::Streaming { .. } => {
                *s = FillState::Failed(Error::Internal("fill aborted".into()));
                true
            }
            _ => false,
        });
        let mut inflight = self.store.inflight.lock().expect("inflight lock");
        if inflight.get(&self.fill.digest).is_some_and(|f| Arc::ptr_eq(f, self.fill)) {
            inflight.remove(&self.fill.digest);
        }
        drop(inflight);
        let clients = self.fill.clients.load(std::sync::atomic::Ordering::Relaxed);
        metrics::histogram!("berth_fill_clients").record(clients as f64);
        self.fill.settled.send_replace(true);
    }
}

async fn lead(
    store: &Arc<Store>,
    fill: &Arc<Fill>,
    fetch: BoxFuture<'static, Result<Source, Error>>,
) -> Result<(), Error> {
    let digest = fill.digest.clone();
    // An earlier fill may have published this digest after the caller looked.
    let (disk, d) = (store.disk.clone(), digest.clone());
    let published = blocking(move || {
        let Some((file, len)) = disk.get(&d)? else { return Ok(None) };
        let map = super::disk::map(&file, len)?;
        Ok(Some((file, map, len)))
    });
    if let Some((file, map, len)) = published.await? {
        let file = Arc::new(file);
        fill.state.send_replace(FillState::Verified { file, map: Some(map), len });
        return Ok(());
    }

    // Until the source answers (a turn among the registry's fills, then the request), the
    // fill waits only for as long as somebody waits for it.
    let fetched = tokio::select! {
        source = fetch => source,
        () = every_client_left(fill) => {
            metrics::counter!("berth_fills_total", "outcome" => "abandoned").increment(1);
            return Err(Error::Unavailable("every client left before the source answered".into()));
        }
    };
    let Source { len, mut body, resume, rejected, hold: _turn, floor } = fetched?;
    if let Some(len) = len.filter(|&l| l > store.max_blob_size) {
        return Err(Error::BlobTooLarge(len));
    }
    let resume = resume.map(Arc::new);
    // Room on disk is reserved as bytes are written, never for an announced length. Content
    // announced beyond the whole capacity is passed through at once: nothing is evicted for
    // it and nothing written.
    if let (Some(l), Some(resume)) = (len.filter(|&l| l > store.disk.capacity()), &resume) {
        store.count_uncached();
        let why = format!("{l} bytes do not fit the disk tier");
        return pass_through(fill, None, None, 0, len, resume.clone(), why).await;
    }
    let mut room = store.disk.reserve();
    let mut keep_on_disk = len.is_none_or(|l| l <= store.disk.capacity());
    // Set when room runs out: with a source to resume from, the fill stops writing and its
    // clients get the rest from the source, so that temp files stay within the capacity too.
    let mut no_room = false;
    let (disk, d) = (store.disk.clone(), digest.clone());
    let made = blocking(move || DiskWriter::begin(&disk, &d, len)).await;
    let writer = match (made, &resume) {
        (Ok(writer), _) => writer,
        (Err(e), Some(resume)) => {
            let why = format!("disk tier cannot make a temp file: {e}");
            return pass_through(fill, None, None, 0, len, resume.clone(), why).await;
        }
        (Err(e), None) => return Err(e),
    };
    let (file, map) = (writer.file().0.clone(), writer.file().1.cloned());
    let streaming = FillState::Streaming { file: file.clone(), map: map.clone(), len, written: 0 };
    fill.state.send_replace(streaming);

    // Writing and hashing run on two blocking threads fed the same batches, so that the
    // page-cache copy and SHA-256 overlap.
    let keep = len.filter(|&l| store.memory.admits(l)).map(|l| l as usize);
    let (tx, rx) = mpsc::channel::<Bytes>(8);
    let (hash_tx, hash_rx) = mpsc::channel::<Bytes>(8);
    let writer = {
        let fill = fill.clone();
        tokio::task::spawn_blocking(move || write_loop(rx, writer, &fill))
    };
    let hasher = tokio::task::spawn_blocking(move || hash_loop(hash_rx, keep));

    let mut batch = BytesMut::with_capacity(WRITE_BATCH);
    let mut received: u64 = 0;
    let mut skip: u64 = 0;
    let mut resumes: u32 = 0;
    let mut pace = super::pace::Pace::new(floor);
    let pumped: Result<(), Error> = async {
        loop {
            let mut cut = match pace.next(&mut body).await {
                Some(Ok(mut chunk)) => {
                    if skip > 0 {
                        let n = skip.min(chunk.len() as u64);
                        chunk = chunk.slice(n as usize..);
                        skip -= n;
                    }
                    received = received.saturating_add(chunk.len() as u64);
                    if len.is_some_and(|l| received > l) {
                        return Err(Error::Integrity(format!("{digest}: body longer than announced")));
                    }
                    if received > store.max_blob_size {
                        return Err(Error::BlobTooLarge(received));
                    }
                    batch.extend_from_slice(&chunk);
                    if batch.len() >= WRITE_BATCH {
                        let full = batch.split().freeze();
                        keep_on_disk = keep_on_disk && room_for(store, &mut room, &digest, full.len()).await;
                        if !keep_on_disk && resume.is_some() && len.is_some() {
                            no_room = true;
                            break;
                        }
                        if !keep_on_disk && received > store.disk.capacity() {
                            // No length to pass through with: an uncached fill may not use
                            // more temp space than the disk tier has.
                            return Err(Error::BlobTooLarge(received));
                        }
                        if hash_tx.send(full.clone()).await.is_err() || tx.send(full).await.is_err() {
                            break; // the writer failed; its error is reported below
                        }
                    }
                    continue;
                }
                None if len.is_none_or(|l| received >= l) => break,
                None => Error::Unavailable(format!("{digest}: body ended after {received} bytes")),
                Some(Err(e)) => e,
            };
            // Cut: ask for the rest, a few times, hashing on from where it was.
            loop {
                let Some(resume) = resume.as_deref().filter(|_| resumes < MAX_RESUMES) else { return Err(cut) };
                resumes += 1;
                tracing::warn!(%digest, offset = received, attempt = resumes, error = %cut, "source body cut; resuming");
                metrics::counter!("berth_fill_resumes_total").increment(1);
                tokio::time::sleep(RESUME_BACKOFF * 4u32.pow(resumes - 1)).await;
                match resume(received).await {
                    Ok(rest) => {
                        (body, skip) = (rest.body, rest.skip);
                        pace.restart();
                        break;
                    }
                    Err(e) => cut = e,
                }
            }
        }
        if !batch.is_empty() && !no_room {
            let full = batch.split().freeze();
            keep_on_disk = keep_on_disk && room_for(store, &mut room, &digest, full.len()).await;
            if !keep_on_disk && resume.is_some() && len.is_some() {
                no_room = true;
                return Ok(());
            }
            let _ = hash_tx.send(full.clone()).await;
            let _ = tx.send(full).await;
        }
        Ok(())
    }
    .await;
    drop((tx, hash_tx));
    let (writer, write_error) = writer.await.map_err(Error::internal)?;
    let written = writer.written_len();
    let (hash, memory) = hasher.await.map_err(Error::internal)?;
    let disk_trouble = match (&write_error, no_room) {
        (Some(e), _) => Some(format!("disk tier cannot write: {e}")),
        (None, true) => Some("no room left on the disk tier (the rest is pinned or in use)".to_owned()),
        (None, false) => None,
    };
    if let (Some(why), Some(resume)) = (disk_trouble, &resume) {
        // What is written is good; clients get the rest from the source.
        let (file, map) = (Some(file), map);
        let done = pass_through(fill, file, map, written, len, resume.clone(), why).await;
        drop_off_thread(writer).await?;
        return done;
    }
    let written = match write_error {
        Some(e) => Err(e),
        None => Ok(written),
    };

    let verified = pumped.and_then(|_| {
        let written = written?;
        if let Some(l) = len.filter(|&l| l != written) {
            return Err(Error::Integrity(format!("{digest}: got {written} of {l} bytes")));
        }
        Ok((Verified::check(&digest, hash, written)?, memory))
    });
    let (proof, memory) = match verified {
        Ok(v) => v,
        Err(e) => {
            if let (Error::Integrity(_), Some(rejected)) = (&e, rejected) {
                rejected();
            }
            drop_off_thread(writer).await?;
            return Err(e);
        }
    };
    let written = proof.len();

    // Verified: publish to memory, then let every follower finish, then publish to disk.
    if let Some(bytes) = memory {
        store.memory.insert(digest.clone(), bytes.freeze()).await;
    }
    store.mark_checked(&digest);
    fill.state.send_replace(FillState::Verified { file, map, len: written });
    let meta = store.meta.clone();
    blocking(move || {
        let outcome = if keep_on_disk { "stored" } else { "uncached" };
        metrics::counter!("berth_fills_total", "outcome" => outcome).increment(1);
        let mut writer = writer;
        writer.set_room(room);
        if !keep_on_disk {
            tracing::warn!(%digest, bytes = written, "disk tier full of pinned or in-use content: served without caching");
        } else if let Err(e) = writer.commit_blocking(&proof) {
            // The writer, dropped uncommitted, has removed its temp file.
            tracing::warn!(%digest, error = %e, "verified blob not stored on disk");
        } else if let Err(e) = meta.record_blob(&digest, written, None) {
            tracing::warn!(%digest, error = %e, "blob stored without metadata");
        }
        Ok(())
    })
    .await
}

/// References to a fill that are not its clients': the in-flight map's and the leader
/// task's own.
const OWN_REFERENCES: usize = 2;

/// Resolves once nobody but the fill itself holds it: every client (a request, a preheat)
/// has gone. Checked every 100 ms.
async fn every_client_left(fill: &Arc<Fill>) {
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        if Arc::strong_count(fill) <= OWN_REFERENCES {
            return;
        }
    }
}

/// Grows the fill's room on disk by a batch about to be written; false (and counted) when
/// no room can be made, and the fill goes on without keeping the content.
async fn room_for(store: &Store, room: &mut super::disk::Reservation, digest: &Digest, batch: usize) -> bool {
    if store.grow(room, batch as u64).await {
        return true;
    }
    tracing::warn!(%digest, reserved = room.bytes(), "no room on the disk tier: serving without keeping");
    store.count_uncached();
    false
}

/// Runs on a blocking thread: writes each batch, then tells followers. Returns the writer,
/// and the error that stopped it, if one did.
fn write_loop(mut rx: mpsc::Receiver<Bytes>, writer: DiskWriter, fill: &Fill) -> (DiskWriter, Option<Error>) {
    while let Some(buf) = rx.blocking_recv() {
        if let Err(e) = writer.append_blocking(&buf) {
            return (writer, Some(Error::Internal(format!("writing blob: {e}"))));
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

/// Serves the fill's clients from the source from here on: the state becomes `PassThrough`
/// with a hash of the `written` bytes, and nothing is kept.
#[allow(clippy::too_many_arguments)]
async fn pass_through(
    fill: &Arc<Fill>,
    file: Option<Arc<File>>,
    map: Option<Bytes>,
    written: u64,
    len: Option<u64>,
    resume: Arc<Resume>,
    why: String,
) -> Result<(), Error> {
    let digest = fill.digest.clone();
    tracing::error!(%digest, written, error = %why, "serving from upstream without caching (pass-through)");
    metrics::counter!("berth_fills_total", "outcome" => "passthrough").increment(1);
    let prefix = super::passthrough::hash_written(file.clone(), map.clone(), written).await?;
    let p = super::passthrough::PassThrough { digest, file, map, written, len, prefix, resume, why };
    fill.state.send_replace(FillState::PassThrough(Arc::new(p)));
    Ok(())
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
    tokio::task::spawn_blocking(f)
        .await
        .map_err(Error::internal)?
        .map_err(|e| Error::Internal(format!("disk tier: {e}")))
}
