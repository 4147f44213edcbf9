//! Asking the owner: the normal manifest/blob-by-digest request plus the hop marker. Any
//! trouble (no connection, an error status, a cut body, wrong bytes) sends the fill to
//! upstream; a cut body resumes there with Range from where the peer stopped.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures::StreamExt;
use http::{header, StatusCode};

use super::{Peers, HOP, TOKEN};
use crate::error::Error;
use crate::oci::accept::AcceptClass;
use crate::oci::digest::Digest;
use crate::source::upstream::{read_manifest, unavailable, FetchedManifest};
use crate::source::Fetched;
use crate::source::Upstream;

impl Peers {
    /// A request to `peer` as a peer: with the hop marker and the peer token.
    pub(crate) fn request(
        &self,
        method: http::Method,
        peer: &str,
        path_and_query: &str,
    ) -> reqwest::RequestBuilder {
        self.client
            .request(method, format!("{peer}{path_and_query}"))
            .header(HOP, self.me.as_str())
            .header(TOKEN, self.token.expose())
    }

    fn get(&self, peer: &str, ns: &str, path: &str) -> reqwest::RequestBuilder {
        let ns: String = url::form_urlencoded::byte_serialize(ns.as_bytes()).collect();
        self.request(http::Method::GET, peer, &format!("{path}?ns={ns}"))
    }

    /// The owner's answer, or why it is no good. `Ok(Err(e))`: the owner answered with an
    /// error that is upstream's (not found, rate limited): no reason to leave it out.
    async fn ask(
        &self,
        peer: &str,
        ns: &str,
        path: &str,
        accept: Option<&str>,
    ) -> Result<Result<reqwest::Response, Error>, Error> {
        self.forwarded.fetch_add(1, Ordering::Relaxed);
        let mut req = self.get(peer, ns, path);
        if let Some(a) = accept {
            req = req.header(header::ACCEPT, a);
        }
        let resp = req.send().await.map_err(|e| unavailable(peer, e))?;
        let status = resp.status();
        metrics::counter!("berth_peer_requests_total", "peer" => peer.to_owned(), "status" => status.as_u16().to_string())
            .increment(1);
        match status {
            StatusCode::OK => Ok(Ok(resp)),
            // Upstream's answers, passed on by a healthy owner: not found, rate limited, or
            // another client error (the owner's own token trouble, 401/403, is the peer's).
            StatusCode::NOT_FOUND | StatusCode::TOO_MANY_REQUESTS => {
                Ok(Err(Error::Unavailable(format!("peer {peer} answered {status}"))))
            }
            s if s.is_client_error() && s != StatusCode::UNAUTHORIZED && s != StatusCode::FORBIDDEN => {
                Ok(Err(Error::Unavailable(format!("peer {peer} answered {status}"))))
            }
            _ => Err(Error::Unavailable(format!("peer {peer} answered {status}"))),
        }
    }

    fn fell_back(&self, peer: &str, trouble: Option<&Error>) {
        self.fallbacks.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("berth_peer_fallbacks_total").increment(1);
        if let Some(e) = trouble {
            self.mark_down(peer, &e.to_string());
        }
    }

    /// A blob's source for a fill: the owner's response, or upstream's after peer trouble.
    pub(crate) async fn blob(
        self: &Arc<Self>,
        owner: &str,
        upstream: &Arc<Upstream>,
        repo: &str,
        digest: &Digest,
    ) -> Result<Fetched, Error> {
        let resp = match self.ask(owner, &upstream.host, &format!("/v2/{repo}/blobs/{digest}"), None).await {
            Ok(Ok(resp)) => resp,
            Ok(Err(e)) => {
                tracing::info!(peer = owner, %digest, error = %e, "peer could not serve: asking upstream");
                self.fell_back(owner, None);
                return upstream.blob(repo, digest).await;
            }
            Err(e) => {
                self.fell_back(owner, Some(&e));
                return upstream.blob(repo, digest).await;
            }
        };
        Ok(self.streamed(owner, resp, upstream, repo, digest))
    }

    /// A blob streamed from the berth holding its fleet fill lease (`store::bucket::lease`),
    /// asked as a peer: its answer, or why there is none (the fill then waits for the upload).
    /// A cut resumes from upstream, as an owner's does.
    pub(crate) async fn from_holder(
        self: &Arc<Self>,
        holder: &str,
        upstream: &Arc<Upstream>,
        repo: &str,
        digest: &Digest,
    ) -> Result<Fetched, Error> {
        if holder == self.me || !self.healthy(holder) {
            return Err(Error::Unavailable(format!("lease holder {holder} is this berth, or backed off")));
        }
        let resp = self.ask(holder, &upstream.host, &format!("/v2/{repo}/blobs/{digest}"), None).await??;
        Ok(self.streamed(holder, resp, upstream, repo, digest))
    }

    /// A peer's 200 as a fill's source: resumed from upstream after a cut, and the peer left
    /// out for its backoff after trouble or wrong bytes.
    fn streamed(
        self: &Arc<Self>,
        owner: &str,
        resp: reqwest::Response,
        upstream: &Arc<Upstream>,
        repo: &str,
        digest: &Digest,
    ) -> Fetched {
        let len = resp.content_length();
        let peer = owner.to_owned();
        let body = resp.bytes_stream().map(move |r| r.map_err(|e| unavailable(&peer, e))).boxed();
        let (peers, peer, from_upstream) = (self.clone(), owner.to_owned(), upstream.resume(repo, digest));
        let resume = Box::new(move |offset| {
            peers.fell_back(&peer, Some(&Error::Unavailable(format!("body cut at {offset}"))));
            from_upstream(offset)
        });
        let (peers, peer) = (self.clone(), owner.to_owned());
        let rejected =
            Box::new(move || peers.mark_down(&peer, "sent content that does not match its digest"));
        // A peer is held to the registry's floor too: below it, the rest comes from upstream.
        let floor = Some(upstream.floor());
        Fetched { len, body, resume: Some(resume), rejected: Some(rejected), hold: None, floor }
    }

    /// A manifest by digest: from the owner when it sends the right bytes, else from upstream.
    pub(crate) async fn manifest(
        &self,
        owner: &str,
        upstream: &Upstream,
        repo: &str,
        digest: &Digest,
    ) -> Result<FetchedManifest, Error> {
        let accept = AcceptClass::all().header();
        let path = format!("/v2/{repo}/manifests/{digest}");
        let trouble = match self.ask(owner, &upstream.host, &path, Some(&accept)).await {
            Ok(Ok(resp)) => match read_manifest(resp, owner).await {
                Ok(m) if m.digest == *digest => return Ok(m),
                Ok(m) => {
                    Some(Error::Integrity(format!("manifest {digest} from peer hashes to {}", m.digest)))
                }
                Err(e) => Some(e),
            },
            Ok(Err(_)) => None,
            Err(e) => Some(e),
        };
        self.fell_back(owner, trouble.as_ref());
        upstream.manifest(repo, digest.as_str(), &accept).await
    }
}
