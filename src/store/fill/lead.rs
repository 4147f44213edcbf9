//! The leader: what a fill's own task does, from the source's answer to a published (or
//! failed, or passed-through) blob.

use std::sync::Arc;

use futures::future::BoxFuture;

use super::claim::{claim_or_wait, Turn};
use super::inflight::every_client_left;
use super::pass::{disk_trouble, pass_through, pass_written};
use super::pump::{pump_into, Pump};
use super::write::{Made, Pipeline, Room};
use super::{blocking, drop_off_thread, Fill, FillState, FromHolder, Source};
use crate::error::Error;
use crate::store::bucket::Found;
use crate::store::tier::disk::DiskWriter;
use crate::store::Store;

pub(super) async fn lead(
    store: &Arc<Store>,
    fill: &Arc<Fill>,
    fetch: BoxFuture<'static, Result<Source, Error>>,
    holder: Option<FromHolder>,
) -> Result<(), Error> {
    if already_published(store, fill).await? {
        return Ok(());
    }
    match from_bucket(store, fill).await? {
        FromBucket::Published => return Ok(()),
        FromBucket::Shown(shown) => return rest_from_source(fill, fetch, shown).await,
        FromBucket::Unused => {}
    }
    // Streamed from the lease's holder, the content is the holder's to upload (looked for
    // later, in case the holder's upload never lands).
    let (source, lease, uploads) = match claim_or_wait(store, fill, holder).await? {
        Turn::Fetch(lease) => (source_while_awaited(fill, fetch).await?, lease, true),
        Turn::Stream(source) => (source, None, false),
        Turn::Published => return Ok(()),
        Turn::Shown(shown) => return rest_from_source(fill, fetch, shown).await,
    };
    let Source { len, body, resume, rejected, hold: _turn, floor } = source;
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
        // Clients ask the source themselves: its body (and any pieces it holds) goes now.
        drop(body);
        return pass_through(fill, None, None, 0, len, resume.clone(), why).await;
    }
    let (disk, d) = (store.disk.clone(), fill.digest.clone());
    let writer = match (blocking(move || DiskWriter::begin(&disk, &d, len)).await, &resume) {
        (Ok(writer), _) => writer,
        (Err(e), Some(resume)) => {
            let why = format!("disk tier cannot make a temp file: {e}");
            drop(body);
            return pass_through(fill, None, None, 0, len, resume.clone(), why).await;
        }
        (Err(e), None) => return Err(e),
    };
    let (file, map) = (writer.file().0.clone(), writer.file().1.cloned());
    fill.state.send_replace(FillState::Streaming { file, map, len, written: 0 });

    let keep = len.filter(|&l| store.memory.admits(l)).map(|l| l as usize);
    let pipe = Pipeline::start(writer, fill, keep, None);
    let mut room = Room::new(store, len, resume.is_some() && len.is_some());
    let mut pump = Pump::new(&fill.digest, len, body, resume.clone(), floor);
    let pumped = pump_into(store, &mut pump, &pipe, &mut room).await;
    let made = pipe.finish().await?;
    if let (Some(why), Some(resume)) = (disk_trouble(&made, room.ran_out()), resume) {
        // What is written is good; clients get the rest from the source.
        let written = made.writer.written_len();
        drop(pump);
        return pass_written(fill, made, written, len, resume, why).await;
    }
    super::publish::settle(store, fill, len, pumped, made, room, rejected).await?;
    if uploads {
        store.upload_blob(&fill.digest, &fill.origin, lease);
    } else {
        store.upload_blob_if_missed(&fill.digest, &fill.origin);
    }
    Ok(())
}

/// What came of asking the bucket for a fill's content.
pub(super) enum FromBucket {
    /// Read, verified and published.
    Published,
    /// Not there, not for this origin, failing, or wrong before anything was shown: the fill
    /// goes on to its own source as if it had not asked.
    Unused,
    /// Followers were shown checked parts before the read failed: the rest comes from the
    /// fill's own source, hashed on from what was shown.
    Shown(Box<PartlyShown>),
}

/// A bucket read that stopped after followers were shown its first `good` bytes.
pub(super) struct PartlyShown {
    made: Made,
    good: u64,
    len: u64,
    why: String,
}

/// Fills from the shared bucket when it holds the digest for the fill's origin: its bytes are
/// written and hashed like any source's. An object with part checksums (`bucket::parts`)
/// is shown to followers a part at a time, each once it matches, and its last byte once the
/// whole verifies; one without is shown to nobody before the whole object verifies. A cut
/// body is resumed from the same object. An object that does not match is deleted; the fill
/// goes on to its own source, as it does when the bucket is missing it, fails or is too slow,
/// from where followers were shown.
pub(super) async fn from_bucket(store: &Store, fill: &Arc<Fill>) -> Result<FromBucket, Error> {
    let Some(bucket) = store.bucket.as_ref() else { return Ok(FromBucket::Unused) };
    let path = bucket.blob_path(&fill.digest);
    let Some(_turn) = bucket.read_turn().await else { return Ok(FromBucket::Unused) };
    let Found::Object(got) = bucket.open(&path, &fill.origin).await else { return Ok(FromBucket::Unused) };
    let parts = bucket.parts_of(&got);
    let Source { len, body, floor, resume, .. } = bucket.source(*got, &path);
    // What the disk cannot keep is left to the fill's own source, which can pass it through.
    let Some(len) = len.filter(|&l| l <= store.max_blob_size && l <= store.disk.capacity()) else {
        return Ok(FromBucket::Unused);
    };
    let (disk, d) = (store.disk.clone(), fill.digest.clone());
    let Ok(writer) = blocking(move || DiskWriter::begin(&disk, &d, Some(len))).await.inspect_err(|e| {
        tracing::warn!(digest = %fill.digest, error = %e, "disk tier cannot make a temp file for a bucket read");
    }) else {
        return Ok(FromBucket::Unused);
    };
    let keep = store.memory.admits(len).then_some(len as usize);
    let streams = parts.is_some();
    let pipe = Pipeline::start(writer, fill, keep, parts);
    let mut room = Room::new(store, Some(len), false);
    let mut pump = Pump::new(&fill.digest, Some(len), body, resume.map(Arc::new), floor);
    let budget = bucket.read_budget(len);
    let pumped = tokio::time::timeout(budget, pump_into(store, &mut pump, &pipe, &mut room))
        .await
        .unwrap_or_else(|_| Err(Error::Unavailable(format!("bucket read not done within {budget:?}"))));
    let made = pipe.finish().await?;
    // Without part checksums, or before the first matched, the fill stayed pending: nobody
    // was shown a byte, nor the object's length.
    let shown = if streams { made.shown } else { 0 };
    if let Some(at) = made.bad_part {
        bucket
            .rejected(&fill.digest, &path, &format!("the part at byte {at} does not match its checksum"))
            .await;
    } else if let Err(e @ Error::Integrity(_)) = &pumped {
        // Longer than the bucket said.
        bucket.rejected(&fill.digest, &path, &e.to_string()).await;
    }
    let stopped = match (made.bad_part, &pumped, &made.error) {
        (Some(at), ..) => Some(format!("bucket object wrong from byte {at}")),
        (None, Err(e), _) | (None, Ok(()), Some(e)) => Some(e.to_string()),
        (None, Ok(()), None) => None,
    };
    if let Some(why) = stopped {
        if let Err(Error::Unavailable(e)) = &pumped {
            // Cut, stalled, below its floor or past its budget: the bucket is backed off.
            bucket.failed("get", &format!("{}: {e}; filling from the source", fill.digest));
        }
        if shown > 0 {
            return Ok(FromBucket::Shown(Box::new(PartlyShown { good: shown, made, len, why })));
        }
        tracing::warn!(digest = %fill.digest, error = why, "bucket read failed; filling from the source");
        drop_off_thread(made.writer).await?;
        return Ok(FromBucket::Unused);
    }
    match super::publish::settle(store, fill, Some(len), pumped, made, room, None).await {
        Ok(()) => {
            metrics::counter!("berth_fills_total", "outcome" => "from-bucket").increment(1);
            bucket.known_in_bucket(&fill.digest);
            bucket.touch(&fill.digest);
            Ok(FromBucket::Published)
        }
        Err(e @ Error::Integrity(_)) => {
            bucket.rejected(&fill.digest, &path, &e.to_string()).await;
            // Every part matched and the whole does not: the checksums were written with the
            // wrong bytes. What followers were shown cannot be taken back, so they are failed.
            if shown > 0 {
                return Err(e);
            }
            Ok(FromBucket::Unused)
        }
        // Shown, then not published: the fill cannot start over under its followers.
        Err(e) if shown > 0 => Err(e),
        Err(e) => {
            tracing::warn!(digest = %fill.digest, error = %e, "bucket read failed; filling from the source");
            Ok(FromBucket::Unused)
        }
    }
}

/// The rest of a fill whose followers were shown the bucket's first checked bytes: passed
/// through from the fill's own source from there (resumed with Range), hashed on from what
/// was shown, and not kept. Without a way to resume, or when the source disagrees on the
/// length, the fill fails.
async fn rest_from_source(
    fill: &Arc<Fill>,
    fetch: BoxFuture<'static, Result<Source, Error>>,
    shown: Box<PartlyShown>,
) -> Result<(), Error> {
    let PartlyShown { made, good, len, why } = *shown;
    tracing::warn!(digest = %fill.digest, shown = good, error = why, "bucket read stopped after clients were shown part of it: the rest from the source");
    let source = source_while_awaited(fill, fetch).await;
    let resume = match source {
        Ok(Source { len: l, .. }) if l.is_some_and(|l| l != len) => {
            Err(Error::Integrity(format!("{}: the source's length is not the bucket object's", fill.digest)))
        }
        Ok(Source { resume: Some(resume), .. }) => Ok(resume),
        Ok(Source { resume: None, .. }) => {
            Err(Error::Unavailable(format!("{}: the source cannot resume at byte {good}", fill.digest)))
        }
        Err(e) => Err(e),
    };
    match resume {
        Ok(resume) => pass_written(fill, made, good, Some(len), Arc::new(resume), why).await,
        Err(e) => {
            drop_off_thread(made.writer).await?;
            Err(e)
        }
    }
}

/// Answers the fill from disk when an earlier fill has published the digest since the
/// caller looked.
async fn already_published(store: &Store, fill: &Fill) -> Result<bool, Error> {
    let (disk, d) = (store.disk.clone(), fill.digest.clone());
    let before = store.tiers.seen(&fill.digest);
    let published = blocking(move || {
        let Some((file, len)) = disk.get(&d)? else { return Ok(None) };
        let map = crate::store::disk::map(&file, len)?;
        Ok(Some((file, map, len)))
    });
    let Some((file, map, len)) = published.await? else { return Ok(false) };
    // Published by a fill since the miss, or left there unchecked (a damaged file that could
    // not be deleted is one): served only once it matches its digest; else it is fetched
    // again and the verified copy replaces it.
    let after = store.tiers.seen(&fill.digest);
    if !store.tiers.ensure_checked(&fill.digest, &map, before, after).await {
        return Ok(false);
    }
    fill.state.send_replace(FillState::Verified { file: Arc::new(file), map: Some(map), len });
    Ok(true)
}

/// The source, once it answers. Until then (a turn among the registry's fills, then the
/// request), the fill waits only for as long as somebody waits for it.
async fn source_while_awaited(
    fill: &Arc<Fill>,
    fetch: BoxFuture<'static, Result<Source, Error>>,
) -> Result<Source, Error> {
    tokio::select! {
        source = fetch => source,
        () = every_client_left(fill) => {
            metrics::counter!("berth_fills_total", "outcome" => "abandoned").increment(1);
            Err(Error::Unavailable("every client left before the source answered".into()))
        }
    }
}
