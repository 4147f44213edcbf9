//! The leader: what a fill's own task does, from the source's answer to a published (or
//! failed, or passed-through) blob.

use std::sync::Arc;

use futures::future::BoxFuture;

use super::claim::{claim_or_wait, Turn};
use super::inflight::every_client_left;
use super::pass::{disk_trouble, pass_through, pass_written};
use super::pump::{pump_into, Pump};
use super::write::{Pipeline, Room};
use super::{blocking, Fill, FillState, Source};
use crate::error::Error;
use crate::store::bucket::Found;
use crate::store::tier::disk::DiskWriter;
use crate::store::Store;

pub(super) async fn lead(
    store: &Arc<Store>,
    fill: &Arc<Fill>,
    fetch: BoxFuture<'static, Result<Source, Error>>,
) -> Result<(), Error> {
    if already_published(store, fill).await? || from_bucket(store, fill).await? {
        return Ok(());
    }
    let lease = match claim_or_wait(store, fill).await? {
        Turn::Fetch(lease) => lease,
        Turn::Published => return Ok(()),
    };
    let Source { len, body, resume, rejected, hold: _turn, floor } =
        source_while_awaited(fill, fetch).await?;
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
    let (disk, d) = (store.disk.clone(), fill.digest.clone());
    let writer = match (blocking(move || DiskWriter::begin(&disk, &d, len)).await, &resume) {
        (Ok(writer), _) => writer,
        (Err(e), Some(resume)) => {
            let why = format!("disk tier cannot make a temp file: {e}");
            return pass_through(fill, None, None, 0, len, resume.clone(), why).await;
        }
        (Err(e), None) => return Err(e),
    };
    let (file, map) = (writer.file().0.clone(), writer.file().1.cloned());
    fill.state.send_replace(FillState::Streaming { file, map, len, written: 0 });

    let keep = len.filter(|&l| store.memory.admits(l)).map(|l| l as usize);
    let pipe = Pipeline::start(writer, fill, keep);
    let mut room = Room::new(store, len, resume.is_some() && len.is_some());
    let mut pump = Pump::new(&fill.digest, len, body, resume.clone(), floor);
    let pumped = pump_into(store, &mut pump, &pipe, &mut room).await;
    let made = pipe.finish().await?;
    if let (Some(why), Some(resume)) = (disk_trouble(&made, room.ran_out()), resume) {
        // What is written is good; clients get the rest from the source.
        return pass_written(fill, made, len, resume, why).await;
    }
    super::publish::settle(store, fill, len, pumped, made, room, rejected).await?;
    store.upload_blob(&fill.digest, &fill.origin, lease);
    Ok(())
}

/// Fills from the shared bucket when it holds the digest for the fill's origin: its bytes are
/// written and hashed like any source's, but the fill stays pending, so nobody sees a byte
/// before the whole object verifies. An object that does not is deleted, and the fill goes on
/// to its own source, as it does when the bucket is missing it, fails or is too slow.
pub(super) async fn from_bucket(store: &Store, fill: &Arc<Fill>) -> Result<bool, Error> {
    let Some(bucket) = store.bucket.as_ref() else { return Ok(false) };
    let path = bucket.blob_path(&fill.digest);
    let Some(_turn) = bucket.read_turn().await else { return Ok(false) };
    let Found::Object(got) = bucket.open(&path, &fill.origin).await else { return Ok(false) };
    let Source { len, body, floor, .. } = bucket.source(*got);
    // What the disk cannot keep is left to the fill's own source, which can pass it through.
    if len.is_none_or(|l| l > store.max_blob_size || l > store.disk.capacity()) {
        return Ok(false);
    }
    let (disk, d) = (store.disk.clone(), fill.digest.clone());
    let Ok(writer) = blocking(move || DiskWriter::begin(&disk, &d, len)).await.inspect_err(|e| {
        tracing::warn!(digest = %fill.digest, error = %e, "disk tier cannot make a temp file for a bucket read");
    }) else {
        return Ok(false);
    };
    let keep = len.filter(|&l| store.memory.admits(l)).map(|l| l as usize);
    let pipe = Pipeline::start(writer, fill, keep);
    let mut room = Room::new(store, len, false);
    let mut pump = Pump::new(&fill.digest, len, body, None, floor);
    let budget = bucket.read_budget(len.unwrap_or(0));
    let pumped = tokio::time::timeout(budget, pump_into(store, &mut pump, &pipe, &mut room))
        .await
        .unwrap_or_else(|_| Err(Error::Unavailable(format!("bucket read not done within {budget:?}"))));
    let made = pipe.finish().await?;
    match super::publish::settle(store, fill, len, pumped, made, room, None).await {
        Ok(()) => {
            metrics::counter!("berth_fills_total", "outcome" => "from-bucket").increment(1);
            bucket.known_in_bucket(&fill.digest);
            bucket.touch(&fill.digest);
            Ok(true)
        }
        Err(e @ Error::Integrity(_)) => {
            bucket.rejected(&fill.digest, &path, &e.to_string()).await;
            Ok(false)
        }
        Err(e @ Error::Unavailable(_)) => {
            // Cut, stalled, below its floor or past its budget: the bucket is backed off.
            bucket.failed("get", &format!("{}: {e}; filling from the source", fill.digest));
            Ok(false)
        }
        Err(e) => {
            tracing::warn!(digest = %fill.digest, error = %e, "bucket read failed; filling from the source");
            Ok(false)
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
