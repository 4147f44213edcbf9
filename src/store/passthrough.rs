//! When the disk tier cannot take a fill (no temp file, or a write fails), the fill's clients
//! are served from the source instead of the file, and nothing is kept. Each client reads
//! what was written, then asks the source for the rest (the fill's `resume`, with Range),
//! hashing the whole content on from the fill's hash of the written part, and holds back its
//! last byte until the content matches the digest: a pass-through body is verified like any
//! other.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::{self, StreamExt};
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;

use super::body::BodyStream;
use super::fill::{skip_held, Resume};
use crate::error::Error;
use crate::oci::digest::Digest;

/// Bytes handed to a client at a time from the written part.
const CHUNK: u64 = 1 << 20;
/// The most a range of a pass-through fill reads and drops before its own bytes, when the
/// source ignores Range.
const MAX_RANGE_SKIP: u64 = 8 << 20;

/// A fill that could not be written to disk: what was written, and how to get the rest.
pub(crate) struct PassThrough {
    pub(crate) digest: Digest,
    /// The temp file and its mapping, holding `written` good bytes (none when no file could
    /// be made). Both stay readable after the file is unlinked.
    pub(crate) file: Option<Arc<File>>,
    pub(crate) map: Option<Bytes>,
    pub(crate) written: u64,
    pub(crate) len: Option<u64>,
    /// SHA-256 state after the first `written` bytes.
    pub(crate) prefix: Sha256,
    pub(crate) resume: Arc<Resume>,
    /// Why the disk tier did not take it (for the error a client may see).
    pub(crate) why: String,
}

/// SHA-256 state after the first `written` bytes of a fill's temp file (from its mapping, or
/// read back from the file), for clients that hash the rest as they pass it through.
pub(crate) async fn hash_written(
    file: Option<Arc<File>>,
    map: Option<Bytes>,
    written: u64,
) -> Result<Sha256, Error> {
    tokio::task::spawn_blocking(move || -> std::io::Result<Sha256> {
        let mut h = Sha256::new();
        let mut pos = 0u64;
        while pos < written {
            let n = (4u64 << 20).min(written - pos);
            match (&map, &file) {
                (Some(m), _) => h.update(&m[pos as usize..(pos + n) as usize]),
                (None, Some(f)) => {
                    let mut buf = vec![0u8; n as usize];
                    f.read_exact_at(&mut buf, pos)?;
                    h.update(&buf);
                }
                (None, None) => break,
            }
            pos += n;
        }
        Ok(h)
    })
    .await
    .map_err(Error::internal)?
    .map_err(|e| Error::fault("reading back the written part", e))
}

/// Bytes `start..end` (or to the end) of the content, verified as a whole before the last
/// byte goes out.
pub(crate) fn follow(p: Arc<PassThrough>, start: u64, end: Option<u64>) -> BodyStream {
    let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(4);
    tokio::spawn(async move {
        let mut out = Held { tx, last: None };
        if let Err(e) = serve(&p, start, end, &mut out).await {
            let _ = out.tx.send(Err(std::io::Error::other(e.to_string()))).await;
        }
    });
    stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) }).boxed()
}

/// Bytes `start..end` of the content for a range: what was written, from the file, and the
/// rest by one request to the source from where the range needs it, read only as far as the
/// range goes. Not verified, like any range (see `body::range`): a range never costs a fetch
/// of the whole blob (from a source that ignores Range, at most `MAX_RANGE_SKIP` before it).
pub(crate) fn range(p: Arc<PassThrough>, start: u64, end: u64) -> BodyStream {
    let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(4);
    tokio::spawn(async move {
        if let Err(e) = serve_range(&p, start, end, &tx).await {
            let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
        }
    });
    stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) }).boxed()
}

async fn serve_range(
    p: &PassThrough,
    start: u64,
    end: u64,
    tx: &mpsc::Sender<std::io::Result<Bytes>>,
) -> Result<(), Error> {
    let gone = || Error::Internal("client gone".into());
    let have = if p.map.is_some() || p.file.is_some() { end.min(p.written) } else { 0 };
    let mut pos = start;
    while pos < have {
        let n = CHUNK.min(have - pos);
        let chunk = written_chunk(p, pos, n).await?;
        tx.send(Ok(chunk)).await.map_err(|_| gone())?;
        pos += n;
    }
    if pos >= end {
        return Ok(());
    }
    let rest = (p.resume)(pos).await?;
    let (mut body, mut skip) = (rest.body, rest.skip);
    if skip > MAX_RANGE_SKIP {
        // The source ignores Range: the range would cost the blob up to it.
        return Err(Error::Unavailable(format!(
            "{}: the source ignores Range; not fetching {skip} bytes for a range",
            p.digest
        )));
    }
    while pos < end {
        let Some(chunk) = body.next().await else {
            return Err(Error::Unavailable(format!(
                "{}: the source ended at {pos} of a range to {end}",
                p.digest
            )));
        };
        let chunk = skip_held(chunk?, &mut skip);
        let take = chunk.len().min(usize::try_from(end - pos).unwrap_or(usize::MAX));
        if take > 0 {
            tx.send(Ok(chunk.slice(..take))).await.map_err(|_| gone())?;
        }
        pos += take as u64;
    }
    Ok(())
}

/// `n` bytes at `pos` of the written part.
async fn written_chunk(p: &PassThrough, pos: u64, n: u64) -> Result<Bytes, Error> {
    match (&p.map, &p.file) {
        (Some(map), _) => Ok(map.slice(pos as usize..(pos + n) as usize)),
        (None, Some(file)) => {
            let file = file.clone();
            tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; n as usize];
                file.read_exact_at(&mut buf, pos).map(|_| Bytes::from(buf))
            })
            .await
            .map_err(Error::internal)?
            .map_err(|e| Error::fault("reading the written part", e))
        }
        (None, None) => Err(Error::Internal("no written part to read".into())),
    }
}

/// Sends every slice but the latest, which waits until the content is verified.
struct Held {
    tx: mpsc::Sender<std::io::Result<Bytes>>,
    last: Option<Bytes>,
}

impl Held {
    async fn push(&mut self, b: Bytes) -> Result<(), Error> {
        if b.is_empty() {
            return Ok(());
        }
        if let Some(prev) = self.last.replace(b) {
            self.tx.send(Ok(prev)).await.map_err(|_| Error::Internal("client gone".into()))?;
        }
        Ok(())
    }

    async fn finish(&mut self) {
        if let Some(last) = self.last.take() {
            let _ = self.tx.send(Ok(last)).await;
        }
    }
}

async fn serve(p: &PassThrough, start: u64, end: Option<u64>, out: &mut Held) -> Result<(), Error> {
    let want = |from: u64, b: &Bytes| -> Bytes {
        // The part of `b` (at offset `from`) inside start..end.
        let lo = start.saturating_sub(from).min(b.len() as u64);
        let hi = end.map_or(b.len() as u64, |e| e.saturating_sub(from).min(b.len() as u64));
        if hi > lo {
            b.slice(lo as usize..hi as usize)
        } else {
            Bytes::new()
        }
    };
    // The written part, from the file.
    let mut pos = start.min(p.written);
    while pos < p.written && end.is_none_or(|e| pos < e) && (p.map.is_some() || p.file.is_some()) {
        let n = CHUNK.min(p.written - pos);
        let chunk = written_chunk(p, pos, n).await?;
        out.push(want(pos, &chunk)).await?;
        pos += n;
    }
    // The rest, from the source, hashed on from the written part.
    let mut hasher = p.prefix.clone();
    let mut at = p.written;
    let rest = (p.resume)(at).await?;
    let (mut body, mut skip) = (rest.body, rest.skip);
    while let Some(chunk) = body.next().await {
        let chunk = skip_held(chunk?, &mut skip);
        if p.len.is_some_and(|l| at + chunk.len() as u64 > l) {
            return Err(Error::Integrity(format!("{}: body longer than announced", p.digest)));
        }
        hasher.update(&chunk);
        out.push(want(at, &chunk)).await?;
        at += chunk.len() as u64;
    }
    if let Some(l) = p.len.filter(|&l| l != at) {
        return Err(Error::Unavailable(format!("{}: passed through {at} of {l} bytes", p.digest)));
    }
    let actual = Digest::from_hash(hasher.finalize().into());
    if actual != p.digest {
        return Err(Error::Integrity(format!("{}: content hashes to {actual}", p.digest)));
    }
    out.finish().await;
    Ok(())
}
