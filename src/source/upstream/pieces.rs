//! A large blob's body over several connections: the fill's own GET is read up to the end
//! of its first piece while the next pieces are fetched by Range beside it, each on a turn
//! of the registry's own, and the whole is handed on in order (so hashing, the writer and
//! every follower see one body, as from one stream). Pieces not yet handed on wait in
//! memory: at most `connections` pieces of 8 MiB per fill, and `PIECES_ROOM` MiB for all
//! fills together; each holds its turn until it is handed on.
//!
//! The first ranged piece decides: unless it comes back as a 206 for exactly its span, the
//! fill's own GET is read to its end instead (an upstream that ignores Range costs nothing).
//! A piece cut later ends the body with an error, and the fill resumes it as it resumes any
//! cut body: one stream, by Range, from what it holds.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use tokio::sync::{mpsc, oneshot};

use super::{Turn, Upstream};
use crate::error::Error;
use crate::oci::digest::Digest;

/// The largest piece; a blob is cut into at least two pieces per connection below that.
const MAX_PIECE: u64 = 8 << 20;
const MIN_PIECE: u64 = 1 << 20;

/// How a fill of a large blob may use more connections: `[storage] fill_connections`, for
/// blobs of at least `fill_connections_above`.
#[derive(Clone, Debug)]
pub(crate) struct Split {
    pub(crate) connections: usize,
    pub(crate) above: u64,
    /// MiB that pieces not yet handed on may hold, all fills of all registries together
    /// (`PIECES_ROOM`): past it, fills fetch fewer pieces at once, down to one stream.
    pub(crate) room: Arc<tokio::sync::Semaphore>,
}

/// MiB all pieces not yet handed on may hold in memory at once.
pub(crate) const PIECES_ROOM: usize = 256;

impl Split {
    /// Whether a blob of `len` bytes is fetched in pieces.
    pub(crate) fn applies(&self, len: Option<u64>) -> bool {
        self.connections > 1 && len.is_some_and(|l| l >= self.above && l > MIN_PIECE)
    }

    fn piece(&self, len: u64) -> u64 {
        (len / (2 * self.connections as u64)).clamp(MIN_PIECE, MAX_PIECE)
    }
}

/// `head`, the body of a whole-blob GET of `len` bytes, with its pieces past the first
/// fetched beside it.
pub(crate) fn body(
    up: Arc<Upstream>,
    repo: &str,
    digest: &Digest,
    len: u64,
    head: BoxStream<'static, Result<Bytes, Error>>,
) -> BoxStream<'static, Result<Bytes, Error>> {
    let piece = up.split.piece(len);
    let mut pieces = Pieces {
        up,
        repo: repo.to_owned(),
        digest: digest.clone(),
        len,
        piece,
        head: Some(head),
        head_end: piece,
        pos: 0,
        ahead: VecDeque::new(),
        next_start: piece,
        probe: None,
    };
    if let Some((p, answered)) = pieces.spawn_next(false) {
        pieces.ahead.push_back(p);
        pieces.probe = Some(answered);
    }
    futures::stream::unfold(pieces, |mut p| async move {
        let item = p.next().await?;
        if item.is_err() {
            p.stop();
        }
        Some((item, p))
    })
    .boxed()
}

struct Pieces {
    up: Arc<Upstream>,
    repo: String,
    digest: Digest,
    len: u64,
    piece: u64,
    /// The fill's own GET, read until `head_end`; dropped once the pieces take over.
    head: Option<BoxStream<'static, Result<Bytes, Error>>>,
    head_end: u64,
    /// Bytes handed on.
    pos: u64,
    /// Pieces asked for, in order.
    ahead: VecDeque<Piece>,
    next_start: u64,
    /// Whether the first ranged piece came back as asked; `None` once decided.
    probe: Option<oneshot::Receiver<bool>>,
}

/// One ranged piece being fetched: its bytes come in order on `rx`.
struct Piece {
    start: u64,
    end: u64,
    got: u64,
    rx: mpsc::UnboundedReceiver<Result<Bytes, Error>>,
    task: tokio::task::JoinHandle<()>,
    /// Its turn and its room in memory, held until it is handed on. No turn: fetched on the
    /// fill's own (one piece at a time).
    turn: Option<Turn>,
    _room: tokio::sync::OwnedSemaphorePermit,
}

impl Drop for Piece {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Pieces {
    async fn next(&mut self) -> Option<Result<Bytes, Error>> {
        if self.pos >= self.len {
            return None;
        }
        if self.head.is_some() {
            return self.read_head().await;
        }
        self.read_pieces().await
    }

    /// The next bytes of the fill's own GET, up to where the pieces take over.
    async fn read_head(&mut self) -> Option<Result<Bytes, Error>> {
        let head = self.head.as_mut()?;
        let chunk = match head.next().await? {
            Ok(c) => c,
            Err(e) => return Some(Err(e)),
        };
        let end = self.pos + chunk.len() as u64;
        if end < self.head_end || !self.pieces_take_over().await {
            self.pos = end;
            return Some(Ok(chunk));
        }
        let keep = (self.head_end - self.pos) as usize;
        self.pos = self.head_end;
        self.head = None;
        self.fill_ahead();
        Some(Ok(chunk.slice(..keep)))
    }

    /// At the end of the first piece: whether the first ranged piece came back as asked.
    /// Otherwise the fill's own GET goes on to the end, alone.
    async fn pieces_take_over(&mut self) -> bool {
        if let Some(probe) = self.probe.take() {
            if probe.await.unwrap_or(false) {
                return true;
            }
            tracing::debug!(digest = %self.digest, "upstream did not answer a piece by Range; one stream");
            self.stop();
        }
        false
    }

    async fn read_pieces(&mut self) -> Option<Result<Bytes, Error>> {
        loop {
            let Some(p) = self.ahead.front_mut() else {
                let missing = Error::Unavailable(format!("{}: no piece at {}", self.digest, self.pos));
                return Some(Err(missing));
            };
            if p.got >= p.end - p.start {
                self.ahead.pop_front();
                self.fill_ahead();
                continue;
            }
            let (start, end) = (p.start, p.end);
            return match p.rx.recv().await {
                Some(Ok(chunk)) => {
                    p.got += chunk.len() as u64;
                    self.pos += chunk.len() as u64;
                    Some(Ok(chunk))
                }
                Some(Err(e)) => Some(Err(e)),
                None => Some(Err(Error::Unavailable(format!(
                    "{}: the piece {start}-{end} ended at {}",
                    self.digest,
                    start + p.got
                )))),
            };
        }
    }

    /// Asks for pieces until `connections` are in flight (the piece being handed on among
    /// them) or no turn is free.
    fn fill_ahead(&mut self) {
        while self.ahead.len() < self.up.split.connections {
            let own = self.head.is_none() && !self.ahead.iter().any(|p| p.turn.is_none());
            let Some((p, _)) = self.spawn_next(own) else { return };
            self.ahead.push_back(p);
        }
    }

    /// Starts the next piece on a free turn (or on the fill's own, for the piece handed on
    /// now), with word of whether upstream answered it as asked.
    fn spawn_next(&mut self, own_turn: bool) -> Option<(Piece, oneshot::Receiver<bool>)> {
        if self.next_start >= self.len {
            return None;
        }
        let (start, end) = (self.next_start, (self.next_start + self.piece).min(self.len));
        let mib = u32::try_from((end - start).div_ceil(1 << 20)).unwrap_or(u32::MAX);
        let room = self.up.split.room.clone().try_acquire_many_owned(mib).ok()?;
        let turn = if own_turn { None } else { Some(self.up.turns.try_take()?) };
        self.next_start = end;
        let (tx, rx) = mpsc::unbounded_channel();
        let (answered, answer) = oneshot::channel();
        let (up, repo, digest, len) = (self.up.clone(), self.repo.clone(), self.digest.clone(), self.len);
        let task = tokio::spawn(fetch(up, repo, digest, (start, end, len), tx, answered));
        Some((Piece { start, end, got: 0, rx, task, turn, _room: room }, answer))
    }

    /// Gives up the pieces: the fill's own GET, or its resume, carries the rest.
    fn stop(&mut self) {
        self.ahead.clear();
        self.probe = None;
        self.next_start = self.len;
        self.head_end = self.len;
    }
}

/// Fetches bytes `start..end` of a blob of `len` by Range into `tx`: only a 206 for exactly
/// that span is taken.
async fn fetch(
    up: Arc<Upstream>,
    repo: String,
    digest: Digest,
    (start, end, len): (u64, u64, u64),
    tx: mpsc::UnboundedSender<Result<Bytes, Error>>,
    answered: oneshot::Sender<bool>,
) {
    let span = match up.blob_span_of(&repo, &digest, (start, end, len)).await {
        Ok(s) => s,
        Err(e) => {
            let _ = answered.send(false);
            let _ = tx.send(Err(e));
            return;
        }
    };
    let _ = answered.send(true);
    metrics::counter!("berth_fill_pieces_total").increment(1);
    let mut body = span.body;
    while let Some(chunk) = body.next().await {
        let failed = chunk.is_err();
        if tx.send(chunk).is_err() || failed {
            return;
        }
    }
}
