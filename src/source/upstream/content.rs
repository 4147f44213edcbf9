//! What is fetched from an upstream: manifests (whole, bounded, hashed), manifest HEADs,
//! blobs for fills (with resume after a cut), blob lengths, and pass-through bodies.

use std::sync::Arc;

use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use http::{header, HeaderMap, HeaderValue, Method, StatusCode};

use super::{body_at_most, unavailable, BodyError, Upstream};
use crate::error::Error;
use crate::oci::digest::Digest;
use crate::source::status::{check, check_passthrough};
use crate::source::{Fetched, Resume, Resumed};

/// Manifests larger than this are refused, as clients refuse them.
pub(super) const MAX_MANIFEST: u64 = 4 * 1024 * 1024;

/// A manifest as fetched: exact bytes, their digest, and the media type to answer with.
pub(crate) struct FetchedManifest {
    pub(crate) bytes: Bytes,
    pub(crate) digest: Digest,
    pub(crate) media_type: String,
}

/// What a manifest HEAD told: enough to answer a client's HEAD.
pub(crate) struct ManifestHead {
    pub(crate) digest: Option<Digest>,
    pub(crate) media_type: Option<String>,
    pub(crate) len: Option<u64>,
}

impl Upstream {
    /// GET a manifest by tag or digest: bytes read whole (at most 4 MiB) and hashed.
    pub(crate) async fn manifest(
        &self,
        repo: &str,
        reference: &str,
        accept: &str,
    ) -> Result<FetchedManifest, Error> {
        let resp = self
            .send(Method::GET, &format!("/v2/{repo}/manifests/{reference}"), repo, accept_headers(accept))
            .await?;
        let resp = check(resp, Error::ManifestUnknown).await?;
        let m = read_manifest(resp, &self.host).await?;
        metrics::counter!("berth_upstream_bytes_total", "registry" => self.label.clone())
            .increment(m.bytes.len() as u64);
        Ok(m)
    }

    /// HEAD a manifest: what upstream says a tag points to, without a GET (Docker Hub does
    /// not count HEADs against the pull limit).
    pub(crate) async fn head_manifest(
        &self,
        repo: &str,
        reference: &str,
        accept: &str,
    ) -> Result<ManifestHead, Error> {
        let resp = self
            .send(Method::HEAD, &format!("/v2/{repo}/manifests/{reference}"), repo, accept_headers(accept))
            .await?;
        let resp = check(resp, Error::ManifestUnknown).await?;
        let h = resp.headers();
        Ok(ManifestHead {
            digest: header_digest(h),
            media_type: h.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned),
            // The header: a HEAD's body is empty, so `content_length()` says 0.
            len: h.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()),
        })
    }

    /// GET a blob as a stream for a fill; a large one over several connections (`pieces`).
    /// A fill resumes a cut body through `Fetched::resume`, which asks for the rest with Range.
    /// Waits for a turn first (see `turn`); the fill holds it until it ends, and its body is
    /// held to the registry's floor.
    pub(crate) async fn blob(self: &Arc<Self>, repo: &str, digest: &Digest) -> Result<Fetched, Error> {
        let turn = self.turn().await?;
        let resp =
            self.send(Method::GET, &format!("/v2/{repo}/blobs/{digest}"), repo, HeaderMap::new()).await?;
        let resp = check(resp, Error::BlobUnknown).await?;
        let len = resp.content_length();
        let no_ranges = resp
            .headers()
            .get(header::ACCEPT_RANGES)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"none"));
        let body = self.body_of(resp);
        let body = match len.filter(|_| !no_ranges && self.split.applies(len)) {
            Some(len) => super::pieces::body(self.clone(), repo, digest, len, body),
            None => body,
        };
        Ok(Fetched {
            len,
            body,
            resume: Some(self.resume(repo, digest)),
            rejected: None,
            hold: Some(Box::new(turn)),
            floor: Some(self.floor),
        })
    }

    /// How a fill of this blob continues after a cut: the rest, from upstream, with Range.
    pub(crate) fn resume(self: &Arc<Self>, repo: &str, digest: &Digest) -> Resume {
        let (this, repo, digest) = (self.clone(), repo.to_owned(), digest.clone());
        Box::new(move |offset| {
            let (this, repo, digest) = (this.clone(), repo.clone(), digest.clone());
            async move { this.blob_from(&repo, &digest, offset).await }.boxed()
        })
    }

    /// The rest of a blob from `offset`: a 206 continues there; a server that ignores Range
    /// answers 200 with the whole blob, and the first `offset` bytes are to be skipped.
    pub(crate) async fn blob_from(&self, repo: &str, digest: &Digest, offset: u64) -> Result<Resumed, Error> {
        let mut headers = HeaderMap::new();
        headers.insert(header::RANGE, HeaderValue::from_str(&format!("bytes={offset}-")).expect("ascii"));
        let resp = self.send(Method::GET, &format!("/v2/{repo}/blobs/{digest}"), repo, headers).await?;
        let resp = check(resp, Error::BlobUnknown).await?;
        if resp.status() != StatusCode::PARTIAL_CONTENT {
            return Ok(Resumed { body: self.body_of(resp), skip: offset });
        }
        let starts_at = resp
            .headers()
            .get(header::CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("bytes "))
            .and_then(|v| v.split('-').next())
            .and_then(|v| v.parse::<u64>().ok());
        if starts_at != Some(offset) {
            return Err(Error::Unavailable(format!("{}: resumed at {starts_at:?}, not {offset}", self.host)));
        }
        Ok(Resumed { body: self.body_of(resp), skip: 0 })
    }

    /// A range of a blob (`range`: a `Range` header value, `bytes=a-b` or `bytes=-n`),
    /// straight from upstream, for a range the digest's fill has not reached: only a 206 is
    /// taken, the span it holds read from its `Content-Range`, and its body is cut off, failing,
    /// past that span's length. Not verified: it is a range, passed on as a pass-through proxy
    /// would.
    pub(crate) async fn blob_span(&self, repo: &str, digest: &Digest, range: &str) -> Result<Span, Error> {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::RANGE,
            HeaderValue::from_str(range).map_err(|_| Error::Internal(format!("range {range:?}")))?,
        );
        let resp = self.send(Method::GET, &format!("/v2/{repo}/blobs/{digest}"), repo, headers).await?;
        let resp = check(resp, Error::BlobUnknown).await?;
        let held =
            resp.headers().get(header::CONTENT_RANGE).and_then(|v| v.to_str().ok()).and_then(content_range);
        let (Some((start, end, len)), StatusCode::PARTIAL_CONTENT) = (held, resp.status()) else {
            return Err(Error::Unavailable(format!("{}: no 206 for {range}", self.host)));
        };
        Ok(Span { start, end, len, body: exactly(self.body_of(resp), end - start, self.host.clone()) })
    }

    /// Bytes `start..end` of a blob of `len` bytes by Range: only a 206 for exactly that span
    /// of that length is taken (see `blob_span`).
    pub(crate) async fn blob_span_of(
        &self,
        repo: &str,
        digest: &Digest,
        (start, end, len): (u64, u64, u64),
    ) -> Result<Span, Error> {
        let asked = format!("bytes={start}-{}", end - 1);
        let span = self.blob_span(repo, digest, &asked).await?;
        if (span.start, span.end, span.len) != (start, end, len) {
            let (a, b, l) = (span.start, span.end, span.len);
            return Err(Error::Unavailable(format!(
                "{}: asked {asked}/{len}, upstream sent {a}-{b}/{l}",
                self.host
            )));
        }
        Ok(span)
    }

    pub(crate) fn body_of(
        &self,
        resp: reqwest::Response,
    ) -> futures::stream::BoxStream<'static, Result<Bytes, Error>> {
        let host = self.host.clone();
        let bytes = metrics::counter!("berth_upstream_bytes_total", "registry" => self.label.clone());
        resp.bytes_stream()
            .map(move |r| {
                if let Ok(b) = &r {
                    bytes.increment(b.len() as u64);
                }
                r.map_err(|e| unavailable(&host, e))
            })
            .boxed()
    }

    /// HEAD a blob: its length.
    pub(crate) async fn blob_len(&self, repo: &str, digest: &Digest) -> Result<Option<u64>, Error> {
        let resp =
            self.send(Method::HEAD, &format!("/v2/{repo}/blobs/{digest}"), repo, HeaderMap::new()).await?;
        let resp = check(resp, Error::BlobUnknown).await?;
        Ok(resp
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok()))
    }

    /// A referrers answer (`/v2/<repo>/referrers/<digest>?...`), read whole: at most 4 MiB,
    /// like a manifest.
    pub(crate) async fn referrers(
        &self,
        path_and_query: &str,
        repo: &str,
        accept: Option<&HeaderValue>,
    ) -> Result<FetchedReferrers, Error> {
        let resp = self.passthrough(path_and_query, repo, accept).await?;
        if let Some(len) = resp.content_length().filter(|&l| l > MAX_MANIFEST) {
            return Err(Error::ManifestTooLarge(len));
        }
        let text = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let (content_type, filters_applied) = (text("content-type"), text("oci-filters-applied"));
        let link = text("link");
        let page = resp.url().clone();
        let body = body_at_most(resp, MAX_MANIFEST, &self.host).await.map_err(|e| match e {
            BodyError::TooLarge(n) => Error::ManifestTooLarge(n),
            BodyError::Failed(e) => e,
        })?;
        Ok(FetchedReferrers { body, content_type, filters_applied, link, page })
    }

    /// A read-only request passed through as is (tags/list, referrers).
    pub(crate) async fn passthrough(
        &self,
        path_and_query: &str,
        repo: &str,
        accept: Option<&HeaderValue>,
    ) -> Result<reqwest::Response, Error> {
        let mut headers = HeaderMap::new();
        if let Some(a) = accept {
            headers.insert(header::ACCEPT, a.clone());
        }
        let resp = self.send(Method::GET, path_and_query, repo, headers).await?;
        check_passthrough(resp).await
    }
}

/// A range of a blob as upstream sent it: bytes `start..end` of `len`.
pub(crate) struct Span {
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) len: u64,
    pub(crate) body: futures::stream::BoxStream<'static, Result<Bytes, Error>>,
}

/// `body`, failing once it runs past `want` bytes, or ends short of them.
fn exactly(
    body: futures::stream::BoxStream<'static, Result<Bytes, Error>>,
    want: u64,
    host: String,
) -> futures::stream::BoxStream<'static, Result<Bytes, Error>> {
    futures::stream::unfold((body, 0u64, false), move |(mut body, got, done)| {
        let host = host.clone();
        async move {
            if done {
                return None;
            }
            let item = match body.next().await {
                Some(Ok(c)) if got + c.len() as u64 > want => {
                    Err(Error::Integrity(format!("{host}: a range longer than its Content-Range")))
                }
                Some(Ok(c)) => {
                    let got = got + c.len() as u64;
                    return Some((Ok(c), (body, got, false)));
                }
                Some(Err(e)) => Err(e),
                None if got < want => {
                    Err(Error::Unavailable(format!("{host}: a range ended at {got} of {want} bytes")))
                }
                None => return None,
            };
            Some((item, (body, got, true)))
        }
    })
    .boxed()
}

/// `bytes a-b/len` with `a <= b < len`: the span `a..b+1` and `len`.
fn content_range(value: &str) -> Option<(u64, u64, u64)> {
    let (span, len) = value.strip_prefix("bytes ")?.split_once('/')?;
    let (a, b) = span.split_once('-')?;
    let (a, b, len) = (a.parse::<u64>().ok()?, b.parse::<u64>().ok()?, len.parse::<u64>().ok()?);
    (a <= b && b < len).then_some((a, b + 1, len))
}

/// A referrers answer as upstream gave it.
#[derive(Clone)]
pub(crate) struct FetchedReferrers {
    pub(crate) body: Bytes,
    pub(crate) content_type: Option<String>,
    pub(crate) filters_applied: Option<String>,
    /// The next-page `Link`, as sent.
    pub(crate) link: Option<String>,
    /// The URL the answer came from (a relative link resolves against it).
    pub(crate) page: url::Url,
}

fn accept_headers(accept: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(accept) {
        if !accept.is_empty() {
            h.insert(header::ACCEPT, v);
        }
    }
    h
}

fn header_digest(h: &HeaderMap) -> Option<Digest> {
    h.get("docker-content-digest").and_then(|v| v.to_str().ok()).and_then(|v| Digest::parse(v).ok())
}

/// The `mediaType` field of a JSON manifest, for upstreams that send no Content-Type.
fn media_type_in(bytes: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
    }
    serde_json::from_slice::<Probe>(bytes).ok()?.media_type
}

/// A manifest response's body, read whole (at most 4 MiB) and hashed; `from` names the
/// sender in errors.
pub(crate) async fn read_manifest(resp: reqwest::Response, from: &str) -> Result<FetchedManifest, Error> {
    if let Some(len) = resp.content_length().filter(|&l| l > MAX_MANIFEST) {
        return Err(Error::ManifestTooLarge(len));
    }
    let announced = header_digest(resp.headers());
    let content_type =
        resp.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let bytes = body_at_most(resp, MAX_MANIFEST, from).await.map_err(|e| match e {
        BodyError::TooLarge(n) => Error::ManifestTooLarge(n),
        BodyError::Failed(e) => e,
    })?;
    let digest = Digest::of(&bytes);
    if let Some(announced) = announced.filter(|a| *a != digest) {
        return Err(Error::Integrity(format!("manifest announced as {announced} hashes to {digest}")));
    }
    // The type the manifest names for itself comes first: it is part of the verified bytes,
    // so the first registry to answer for a digest cannot give it another type for everyone.
    // The header serves manifests that name none (schema1).
    let media_type = media_type_in(&bytes)
        .filter(|t| !t.is_empty() && HeaderValue::from_str(t).is_ok())
        .or(content_type.filter(|t| !t.is_empty()))
        .unwrap_or_else(|| "application/octet-stream".to_owned());
    Ok(FetchedManifest { bytes, digest, media_type })
}

#[cfg(test)]
mod tests {
    #[test]
    fn content_ranges_are_read_strictly() {
        assert_eq!(super::content_range("bytes 0-99/1000"), Some((0, 100, 1000)));
        assert_eq!(super::content_range("bytes 999-999/1000"), Some((999, 1000, 1000)));
        for bad in ["bytes 5-4/10", "bytes 0-10/10", "bytes */10", "bytes 0-9/*", "0-9/10", "bytes -1-9/10"] {
            assert_eq!(super::content_range(bad), None, "{bad}");
        }
    }
}
