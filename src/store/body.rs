//! Response bodies that follow a fill as it is written. A body that cannot complete yields an
//! error, which makes the server cut the connection: a client never sees a clean, short
//! response.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt};
use tokio::sync::watch;

use super::fill::{Fill, FillState};

pub(crate) type BodyStream = BoxStream<'static, io::Result<Bytes>>;

/// Most bytes handed out at once: keeps the request log and back-pressure granular.
const CHUNK: u64 = 4 << 20;
/// Bytes read at a time from a fill that has no mapping (upstream sent no length).
const READ_CHUNK: u64 = 512 << 10;

async fn read_at(file: Arc<File>, pos: u64, n: u64) -> io::Result<Bytes> {
    tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; n as usize];
        file.read_exact_at(&mut buf, pos)?;
        Ok(Bytes::from(buf))
    })
    .await
    .map_err(io::Error::other)?
}

/// Verified bytes (a memory hit or a mapped file) as a stream of `CHUNK`-sized slices, so that
/// the server takes them as the socket drains: the request log then times the transfer and
/// sees a client that leaves early. Slicing copies nothing.
pub(crate) fn chunked(bytes: Bytes) -> BodyStream {
    let n = bytes.len();
    let slices = (0..n).step_by(CHUNK as usize).map(move |i| Ok(bytes.slice(i..n.min(i + CHUNK as usize))));
    stream::iter(slices).boxed()
}

/// `stream`, holding `guard` until the stream is dropped.
pub(crate) fn guarded<G: Send + 'static>(stream: BodyStream, guard: G) -> BodyStream {
    stream
        .map(move |item| {
            let _held = &guard;
            item
        })
        .boxed()
}

struct Follower {
    rx: watch::Receiver<FillState>,
    /// Holds back the last byte until the fill is verified (a whole body); a range hands out
    /// every byte once written, and counts what it handed out unverified.
    whole: bool,
    /// Set once this range has handed out a byte of a fill not yet verified.
    unverified: bool,
    /// Once the fill passes through: the rest of this body, from the source.
    rest: Option<BodyStream>,
    _fill: Arc<Fill>,
    pos: u64,
    /// Where this body ends, if the request or the source said; otherwise the verified length.
    end: Option<u64>,
    done: bool,
}

/// Bytes `start..end` (or to the end) of a fill, handed out as the writer makes them
/// available. The last byte is only handed out once the whole content is verified.
pub fn follow(fill: Arc<Fill>, start: u64, end: Option<u64>) -> BodyStream {
    followed(fill, start, end, true)
}

/// Bytes `start..end` of a fill for a 206: each handed out as soon as it is written (and,
/// with part checksums, its part checked), before the whole content is verified, as a
/// pass-through proxy would. Such a range is counted once the fill ends, by its outcome
/// (`berth_unverified_ranges_total`); a fill that fails is not kept either way.
pub(crate) fn range(fill: Arc<Fill>, start: u64, end: u64) -> BodyStream {
    followed(fill, start, Some(end), false)
}

fn followed(fill: Arc<Fill>, start: u64, end: Option<u64>, whole: bool) -> BodyStream {
    let rx = fill.subscribe();
    let state =
        Follower { rx, whole, unverified: false, rest: None, _fill: fill, pos: start, end, done: false };
    stream::unfold(state, |mut f| async move {
        if f.done {
            return None;
        }
        loop {
            if let Some(rest) = f.rest.as_mut() {
                let next = rest.next().await;
                return next.map(|item| (item, f));
            }
            let state = f.rx.borrow_and_update().clone();
            let (file, map, available, verified) = match state {
                FillState::PassThrough(p) => {
                    f.rest = Some(match (f.whole, f.end) {
                        (false, Some(end)) => super::passthrough::range(p, f.pos, end),
                        _ => super::passthrough::follow(p, f.pos, f.end),
                    });
                    continue;
                }
                FillState::Pending => (None, None, 0, false),
                FillState::Streaming { file, map, written, .. } => (Some(file), map, written, false),
                FillState::Verified { file, map, len } => (Some(file), map, len, true),
                FillState::Failed(e) => {
                    f.done = true;
                    return Some((Err(io::Error::other(e.to_string())), f));
                }
            };
            let end = match (f.end, verified) {
                (Some(e), _) => Some(e),
                (None, true) => Some(available),
                (None, false) => None,
            };
            if (verified || !f.whole) && end.is_some_and(|e| f.pos >= e) {
                return None;
            }
            let mut limit = end.map_or(available, |e| available.min(e));
            if f.whole && !verified && end.is_some_and(|e| limit >= e) {
                limit = end.unwrap_or(0).saturating_sub(1); // hold back the last byte
            }
            if !f.whole && !verified && !f.unverified && limit > f.pos {
                f.unverified = true;
                count_when_settled(f.rx.clone());
            }
            if limit > f.pos {
                let next = match (map, file) {
                    (Some(map), _) => {
                        let n = CHUNK.min(limit - f.pos);
                        Ok(map.slice(f.pos as usize..(f.pos + n) as usize))
                    }
                    (None, Some(file)) => read_at(file, f.pos, READ_CHUNK.min(limit - f.pos)).await,
                    (None, None) => unreachable!("bytes are available only once a file exists"),
                };
                return match next {
                    Ok(b) => {
                        f.pos += b.len() as u64;
                        Some((Ok(b), f))
                    }
                    Err(e) => {
                        f.done = true;
                        Some((Err(e), f))
                    }
                };
            }
            if f.rx.changed().await.is_err() {
                f.done = true;
                return Some((Err(io::Error::other("fill abandoned")), f));
            }
        }
    })
    .boxed()
}

/// A range of a fill's blob fetched from its source apart from the fill (ahead of it), counted
/// like a range the fill answered once the fill ends.
pub(crate) fn beside(fill: &Fill, body: BodyStream) -> BodyStream {
    count_when_settled(fill.subscribe());
    body
}

/// Counts a range handed out before its fill was verified, once the fill ends: `verified`,
/// `failed` (the content did not match, or the source could not finish), `not_kept` (passed
/// through: the disk could not take it) or `abandoned`. Watches the state only: the fill
/// counts its clients by reference.
fn count_when_settled(mut state: watch::Receiver<FillState>) {
    tokio::spawn(async move {
        let ended = state
            .wait_for(|s| {
                matches!(s, FillState::Verified { .. } | FillState::Failed(_) | FillState::PassThrough(_))
            })
            .await
            .map(|s| match *s {
                FillState::Verified { .. } => "verified",
                FillState::PassThrough(_) => "not_kept",
                _ => "failed",
            });
        let outcome = ended.unwrap_or("abandoned");
        metrics::counter!("berth_unverified_ranges_total", "outcome" => outcome).increment(1);
    });
}
