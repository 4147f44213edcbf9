//! Blobs: from memory, from disk, or by following the one fill of their digest.

use futures::FutureExt;

use super::range::RangeSpec;
use super::Mirror;
use crate::digest::Digest;
use crate::error::Error;
use crate::store::body::{self, BodyStream};
use crate::store::Tier;

/// A blob answer: the full length, the span served (`Some` for a 206), and the body for a GET.
pub struct BlobAnswer {
    pub len: u64,
    pub range: Option<(u64, u64)>,
    /// The body for a GET. It marks the blob as being read until it is dropped, which keeps
    /// GC from evicting it meanwhile.
    pub body: Option<BodyStream>,
    pub tier: Tier,
}

impl Mirror {
    pub async fn blob(
        &self,
        ns: Option<&str>,
        repo: &str,
        digest: &Digest,
        range: Option<RangeSpec>,
        head: bool,
        hop: bool,
    ) -> Result<BlobAnswer, Error> {
        let upstream = &self.upstreams.get(ns)?;
        if let Some(hit) = self.store.get(digest).await? {
            let len = hit.bytes.len() as u64;
            let span = range.map(|r| r.resolve(len)).transpose()?;
            let (start, end) = span.unwrap_or((0, len));
            let body = (!head).then(|| {
                let slice = hit.bytes.slice(start as usize..end as usize);
                body::guarded(body::chunked(slice), self.store.reading(digest))
            });
            return Ok(BlobAnswer { len, range: span, body, tier: hit.tier });
        }

        if head {
            // A HEAD does not start a fill: answer from a fill in flight, else ask upstream.
            if let Some(fill) = self.store.inflight(digest) {
                if let Some(len) = fill.ready().await? {
                    return Ok(BlobAnswer { len, range: None, body: None, tier: Tier::FillFollower });
                }
            }
            let len = upstream.blob_len(repo, digest).await?.ok_or_else(|| {
                Error::Unavailable("upstream sent no Content-Length for a blob HEAD".into())
            })?;
            return Ok(BlobAnswer { len, range: None, body: None, tier: Tier::Upstream });
        }

        let fetch = {
            let (upstream, repo, digest) = (upstream.clone(), repo.to_owned(), digest.clone());
            let owner = self.owner_of(&digest, hop);
            async move {
                match owner {
                    Some((peers, owner)) => peers.blob(&owner, &upstream, &repo, &digest).await,
                    None => upstream.blob(&repo, &digest).await,
                }
            }
            .boxed()
        };
        let (fill, led) = self.store.fill(digest, fetch);
        let tier = if led { Tier::FillLeader } else { Tier::FillFollower };
        let len = match fill.ready().await? {
            Some(len) => len,
            // Upstream sent no length: the length is known once the fill is verified.
            None => fill.verified().await?,
        };
        let span = range.map(|r| r.resolve(len)).transpose()?;
        let (start, end) = span.unwrap_or((0, len));
        Ok(BlobAnswer {
            len,
            range: span,
            body: Some(body::guarded(body::follow(fill, start, Some(end)), self.store.reading(digest))),
            tier,
        })
    }
}
