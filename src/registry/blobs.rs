//! Blobs: from memory, from disk, or by following the one fill of their digest. A blob is
//! served under a registry only once that registry has it (see `provenance`).

use std::sync::Arc;

use futures::{FutureExt, StreamExt};

use super::{Mirror, Via, Want};
use crate::error::Error;
use crate::oci::digest::Digest;
use crate::oci::range::{RangeSet, RangeSpec};
use crate::source::upstream::Span;
use crate::source::Fetched;
use crate::source::Upstream;
use crate::store::body::{self, BodyStream};
use crate::store::fill::{self, Fill, FillState};
use crate::store::ServedBy;

/// A range starts this far past what its fill has written before it is fetched on its own.
const AHEAD: u64 = 8 << 20;
/// The largest range fetched on its own: larger ones wait for the fill, so a client cannot
/// make berth fetch a blob many times over in ranges.
const AHEAD_SPAN: u64 = 16 << 20;
/// Ranges fetched on their own at once (all registries); past it, ranges wait for the fill.
pub(crate) const AHEAD_AT_ONCE: usize = 16;
/// Bytes fetched on their own per fill, at most: the larger of the blob's length and this
/// (this alone while the length is not known). A client asking for every span ahead costs
/// upstream at most about twice a large blob, or 32 MiB more than a small one.
const AHEAD_BUDGET: u64 = 32 << 20;

/// A blob answer: the full length, the spans served (a 206: one, or several for a multipart
/// answer; none for the whole blob), and for a GET the body of each span (or the whole blob's).
pub(crate) struct BlobAnswer {
    pub(crate) len: u64,
    pub(crate) spans: Vec<(u64, u64)>,
    /// For a GET, in the order of `spans`. Each marks the blob as being read until it is
    /// dropped, which keeps GC from evicting it meanwhile.
    pub(crate) bodies: Vec<BodyStream>,
    pub(crate) served_by: ServedBy,
}

impl Mirror {
    pub(crate) async fn blob(
        &self,
        ns: Option<&str>,
        repo: &str,
        digest: &Digest,
        range: Option<RangeSet>,
        want: Want,
        via: Via,
    ) -> Result<BlobAnswer, Error> {
        let upstream = &self.upstreams.get(ns)?;
        // Confirmed before the tiers are read: a refused request does not count as a read
        // (which would keep the blob in use).
        if !self.provenance.knows(&upstream.host, digest).await && self.store.holds(digest).await {
            self.confirm_blob(upstream, repo, digest).await?;
        }
        // In use from before the look-up: GC leaves a blob alone while its first hit hashes it.
        let reading = self.store.reading(digest);
        if let Some(hit) = self.store.get(digest).await {
            self.confirm_blob(upstream, repo, digest).await?;
            let len = hit.bytes.len() as u64;
            let spans = range.map(|r| r.resolve(len)).transpose()?.unwrap_or_default();
            let bodies = match want {
                Want::Head => Vec::new(),
                Want::Content => whole_or(&spans, len)
                    .map(|(start, end)| {
                        let slice = hit.bytes.slice(start as usize..end as usize);
                        body::guarded(body::chunked(slice), self.store.reading(digest))
                    })
                    .collect(),
            };
            drop(reading);
            return Ok(BlobAnswer { len, spans, bodies, served_by: hit.served_by });
        }
        drop(reading);

        if want == Want::Head {
            // A HEAD does not start a fill: answer from a fill in flight, else ask upstream.
            if let Some(fill) = self.store.inflight(digest) {
                if fill.origin() == upstream.host || self.provenance.knows(&upstream.host, digest).await {
                    if let Some(len) = fill.ready().await? {
                        return Ok(BlobAnswer {
                            len,
                            spans: Vec::new(),
                            bodies: Vec::new(),
                            served_by: ServedBy::FillFollower,
                        });
                    }
                }
            }
            let len = upstream.blob_len(repo, digest).await?.ok_or_else(|| {
                Error::Unavailable("upstream sent no Content-Length for a blob HEAD".into())
            })?;
            // Not recorded: berth does not hold it, and records are kept for what it holds.
            return Ok(BlobAnswer {
                len,
                spans: Vec::new(),
                bodies: Vec::new(),
                served_by: ServedBy::Upstream,
            });
        }

        let (fill, led) = self.join_fill(upstream, repo, digest, via).await?;
        if led {
            self.record_when_verified(&fill, &upstream.host);
        }
        let served_by = if led { ServedBy::FillLeader } else { ServedBy::FillFollower };
        // A range asked of upstream early is answered as soon as upstream answers it, with
        // the length its Content-Range gives: the fill's own answer is not waited for.
        if let Some(early) = range.as_ref().and_then(|r| self.ask_early(&fill, upstream, repo, r, via)) {
            if let Some((span, len, body)) = early.answer().await {
                // The fill is held until its source answers: from then on it runs to its end
                // whoever follows it, and the blob is fetched once and kept.
                let held = fill.clone();
                tokio::spawn(async move { held.ready().await.ok() });
                let body = body::guarded(body::beside(&fill, body), self.store.reading(digest));
                return Ok(BlobAnswer { len, spans: vec![span], bodies: vec![body], served_by });
            }
        }
        let len = match fill.ready().await? {
            Some(len) => len,
            // Upstream sent no length: the length is known once the fill is verified.
            None => fill.verified().await?,
        };
        let spans = range.map(|r| r.resolve(len)).transpose()?.unwrap_or_default();
        let bodies = whole_or(&spans, len)
            .map(|span| {
                let body = if spans.is_empty() {
                    body::follow(fill.clone(), 0, Some(len))
                } else {
                    self.range_of(&fill, upstream, repo, span, len, via)
                };
                body::guarded(body, self.store.reading(digest))
            })
            .collect();
        Ok(BlobAnswer { len, spans, bodies, served_by })
    }

    /// A single range whose own syntax puts it far past the start (`bytes=-n`, or one starting
    /// past `AHEAD`), of a fill whose source has not answered yet, to ask of upstream at once,
    /// beside the fill's own request: a footer read costs one round trip to upstream, not two,
    /// and waits for nothing of the fill. Taken only if it holds exactly the span the range
    /// resolves to against the length upstream gives with it.
    fn ask_early(
        &self,
        fill: &Fill,
        upstream: &Arc<Upstream>,
        repo: &str,
        range: &RangeSet,
        via: Via,
    ) -> Option<Early> {
        let spec = range.only()?;
        let far = match (spec, fill.len_now()) {
            // The source has answered: `range_of` decides, knowing the length.
            (_, Some(_)) => false,
            (RangeSpec::Suffix(n), None) => n <= AHEAD_SPAN,
            (RangeSpec::From { start, last: Some(last) }, None) => start > AHEAD && last - start < AHEAD_SPAN,
            (RangeSpec::From { last: None, .. }, None) => false,
        };
        let span = match spec {
            RangeSpec::Suffix(n) => n,
            RangeSpec::From { start, last } => last.unwrap_or(start) - start + 1,
        };
        if !far || self.owner_of(fill.digest(), via).is_some() {
            return None;
        }
        let turn =
            self.ahead.clone().try_acquire_owned().ok().filter(|_| fill.take_ahead(span, AHEAD_BUDGET))?;
        let (upstream, repo, digest) = (upstream.clone(), repo.to_owned(), fill.digest().clone());
        let asked = async move { (upstream.blob_span(&repo, &digest, &spec.header()).await, turn) };
        Some(Early { spec, asked: Box::pin(asked) })
    }

    /// A range of a blob being filled, decided when its body is first read: from the fill,
    /// as its bytes are written (`body::range`); or, when the fill is more than `AHEAD` short
    /// of it, the span is at most `AHEAD_SPAN` and a turn is free, straight from upstream by
    /// Range (a lazy puller's read of a footer or a chunk does not wait for the bytes before
    /// it). Upstream not answering that span with a 206 for it: from the fill after all.
    fn range_of(
        &self,
        fill: &Arc<Fill>,
        upstream: &Arc<Upstream>,
        repo: &str,
        (start, end): (u64, u64),
        len: u64,
        via: Via,
    ) -> BodyStream {
        let (fill, upstream, repo, turns) =
            (fill.clone(), upstream.clone(), repo.to_owned(), self.ahead.clone());
        // Through a peer that owns the digest, the owner asks upstream: ranges wait for the fill.
        let alone = self.owner_of(fill.digest(), via).is_none();
        let body = async move {
            let far = alone && fill.available().saturating_add(AHEAD) < start && end - start <= AHEAD_SPAN;
            let turn = if far { turns.try_acquire_owned().ok() } else { None };
            if let Some(turn) = turn.filter(|_| fill.take_ahead(end - start, len.max(AHEAD_BUDGET))) {
                match upstream.blob_span_of(&repo, fill.digest(), (start, end, len)).await {
                    Ok(span) => {
                        metrics::counter!("berth_ranges_ahead_total").increment(1);
                        return body::guarded(body::beside(&fill, io_stream(span.body)), turn);
                    }
                    Err(e) => tracing::debug!(digest = %fill.digest(), error = %e, "range ahead not served"),
                }
            }
            body::range(fill, start, end)
        };
        futures::stream::once(body).flatten().boxed()
    }

    /// Joins the digest's fill, or starts one from this registry. A fill started for another
    /// registry is joined only once this registry confirms the digest; when that fill fails
    /// (the other registry does not have it), this registry fills it itself.
    async fn join_fill(
        &self,
        upstream: &Arc<Upstream>,
        repo: &str,
        digest: &Digest,
        via: Via,
    ) -> Result<(Arc<Fill>, bool), Error> {
        let (fill, led) = self.start_fill(upstream, repo, digest, via);
        if led || fill.origin() == upstream.host {
            return Ok((fill, led));
        }
        self.confirm_blob(upstream, repo, digest).await?;
        if fill.ready().await.is_ok() {
            return Ok((fill, false));
        }
        fill.settled().await;
        Ok(self.start_fill(upstream, repo, digest, via))
    }

    /// Joins or starts the digest's fill from this registry; a fill that will ask upstream
    /// (no peer owns the digest) is claimed fleet-wide first when a bucket is configured.
    fn start_fill(
        &self,
        upstream: &Arc<Upstream>,
        repo: &str,
        digest: &Digest,
        via: Via,
    ) -> (Arc<Fill>, bool) {
        let fetch = self.fetch(upstream, repo, digest, via);
        if self.owner_of(digest, via).is_none() {
            // A peer's request is answered here, never forwarded again, a holder included.
            let holder = self.holder_stream(upstream, repo, digest).filter(|_| via == Via::Client);
            self.store.fill_from_upstream(digest, &upstream.host, fetch, holder)
        } else {
            self.store.fill(digest, &upstream.host, fetch)
        }
    }

    /// The fetch of a fill from this registry: through the digest's owner among the peers,
    /// else from upstream.
    fn fetch(
        &self,
        upstream: &Arc<Upstream>,
        repo: &str,
        digest: &Digest,
        via: Via,
    ) -> futures::future::BoxFuture<'static, Result<fill::Source, Error>> {
        let (upstream, repo, digest) = (upstream.clone(), repo.to_owned(), digest.clone());
        let owner = self.owner_of(&digest, via);
        async move {
            let fetched = match owner {
                Some((peers, owner)) => peers.blob(&owner, &upstream, &repo, &digest).await,
                None => upstream.blob(&repo, &digest).await,
            };
            fetched.map(fill_source)
        }
        .boxed()
    }

    /// With peers, how a fill that lost the fleet's lease streams from its holder: as a peer,
    /// resumed from upstream after a cut.
    fn holder_stream(
        &self,
        upstream: &Arc<Upstream>,
        repo: &str,
        digest: &Digest,
    ) -> Option<fill::FromHolder> {
        let peers = self.peers.clone()?;
        let (upstream, repo, digest) = (upstream.clone(), repo.to_owned(), digest.clone());
        Some(Box::new(move |holder: String| {
            async move { peers.from_holder(&holder, &upstream, &repo, &digest).await.map(fill_source) }
                .boxed()
        }))
    }

    /// Records that `registry` has the fill's digest once the fill has verified it (a source
    /// that answered for a digest it does not have leaves no record).
    fn record_when_verified(&self, fill: &Arc<Fill>, registry: &str) {
        // Watches the fill's state without holding the fill, which counts its clients by
        // reference (a fill nobody waits for is given up before its source answers).
        let (mut state, digest) = (fill.subscribe(), fill.digest().clone());
        let (provenance, registry) = (self.provenance.clone(), registry.to_owned());
        tokio::spawn(async move {
            let ended = state
                .wait_for(|s| {
                    matches!(s, FillState::Verified { .. } | FillState::Failed(_) | FillState::PassThrough(_))
                })
                .await
                .map(|s| matches!(*s, FillState::Verified { .. }));
            if let Ok(true) = ended {
                provenance.record(&registry, &digest).await;
            }
        });
    }

    /// Succeeds when this registry has served or confirmed `digest`; otherwise asks its
    /// upstream (one HEAD) and records the answer. Not confirmed, for whatever reason
    /// (upstream says no, or cannot be asked): 404.
    async fn confirm_blob(&self, upstream: &Upstream, repo: &str, digest: &Digest) -> Result<(), Error> {
        if self.provenance.knows(&upstream.host, digest).await {
            return Ok(());
        }
        match upstream.blob_len(repo, digest).await {
            Ok(_) => {
                self.provenance.record(&upstream.host, digest).await;
                Ok(())
            }
            Err(e) => {
                tracing::info!(registry = %upstream.host, %digest, error = %e,
                    "a cached blob not confirmed by this registry: not served under it");
                Err(Error::BlobUnknown)
            }
        }
    }
}

/// A range asked of upstream early (`Mirror::ask_early`), with its turn.
struct Early {
    spec: RangeSpec,
    asked: futures::future::BoxFuture<'static, (Result<Span, Error>, tokio::sync::OwnedSemaphorePermit)>,
}

impl Early {
    /// The span, the blob's length and the range's body, when upstream answered exactly the
    /// span the range resolves to against the length it gave.
    async fn answer(self) -> Option<((u64, u64), u64, BodyStream)> {
        let (got, turn) = self.asked.await;
        let got = got.ok()?;
        let span = self.spec.resolve(got.len).ok().filter(|&s| s == (got.start, got.end))?;
        metrics::counter!("berth_ranges_ahead_total").increment(1);
        Some((span, got.len, body::guarded(io_stream(got.body), turn)))
    }
}

/// A source's body as a response body.
fn io_stream(body: futures::stream::BoxStream<'static, Result<bytes::Bytes, Error>>) -> BodyStream {
    body.map(|r| r.map_err(|e| std::io::Error::other(e.to_string()))).boxed()
}

/// The spans to send: those asked for, or the whole blob.
fn whole_or(spans: &[(u64, u64)], len: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
    let whole = spans.is_empty().then_some((0, len));
    spans.iter().copied().chain(whole)
}

/// What a source answered, as the store's fill takes it.
fn fill_source(f: Fetched) -> fill::Source {
    let resume = f.resume.map(|resume| -> fill::Resume {
        Box::new(move |offset| {
            let rest = resume(offset);
            async move { rest.await.map(|r| fill::Resumed { body: r.body, skip: r.skip }) }.boxed()
        })
    });
    fill::Source { len: f.len, body: f.body, resume, rejected: f.rejected, hold: f.hold, floor: f.floor }
}
