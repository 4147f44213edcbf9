//! One upstream registry: requests with auth (bearer tokens or basic), redirects followed
//! here so that credentials never reach another host, and upstream statuses mapped to errors.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::{FutureExt, StreamExt};
use http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use url::Url;

use super::auth::{parse_challenge, Challenge, TokenCache};
use super::public::Guard;
use super::status::{check, check_passthrough};
use super::{Fetched, Resume, Resumed};
use crate::config::{MinRate, Registry, Secret};
use crate::error::Error;
use crate::oci::digest::Digest;

/// Manifests larger than this are refused, as clients refuse them.
pub const MAX_MANIFEST: u64 = 4 * 1024 * 1024;
const MAX_REDIRECTS: usize = 5;

pub struct Upstream {
    pub host: String,
    /// The `registry` label of this upstream's metrics.
    label: String,
    endpoint: Url,
    client: reqwest::Client,
    /// The address guard of a public-only registry, checked on every URL before it is asked.
    guard: Option<Arc<Guard>>,
    creds: Option<(String, Secret)>,
    tokens: TokenCache,
    /// Upstream asked for Basic auth: send credentials up front from now on.
    basic: AtomicBool,
    /// Turns for blob fills from this upstream.
    turns: FillTurns,
    /// The slowest a blob body from this upstream may arrive.
    floor: MinRate,
}

/// The turns a blob fill from one upstream takes before it asks: the registry's own
/// (`max_fills`), then, for a host of the wildcard entry, one of those all its hosts share.
#[derive(Clone)]
pub(crate) struct FillTurns {
    own: Arc<Semaphore>,
    shared: Option<Arc<Semaphore>>,
}

/// A fill's turns, given back when dropped.
pub(crate) struct Turn {
    _own: OwnedSemaphorePermit,
    _shared: Option<OwnedSemaphorePermit>,
}

impl FillTurns {
    /// `own` turns for one registry, and within `shared` when the registry shares a total.
    pub(crate) fn new(own: usize, shared: Option<Arc<Semaphore>>) -> FillTurns {
        FillTurns { own: Arc::new(Semaphore::new(own)), shared }
    }

    /// Waits for a turn of the registry's own, then for one of the shared total: a host with
    /// a queue of fills holds no more of the shared turns than its own allow.
    pub(crate) async fn take(&self) -> Result<Turn, Error> {
        let own = self.own.clone().acquire_owned().await.map_err(Error::internal)?;
        let shared = match &self.shared {
            Some(shared) => Some(shared.clone().acquire_owned().await.map_err(Error::internal)?),
            None => None,
        };
        Ok(Turn { _own: own, _shared: shared })
    }
}

/// A manifest as fetched: exact bytes, their digest, and the media type to answer with.
pub struct FetchedManifest {
    pub bytes: Bytes,
    pub digest: Digest,
    pub media_type: String,
}

/// What a manifest HEAD told: enough to answer a client's HEAD.
pub struct ManifestHead {
    pub digest: Option<Digest>,
    pub media_type: Option<String>,
    pub len: Option<u64>,
}

impl Upstream {
    /// A public-only registry (`cfg.public_only`, the wildcard's hosts) connects only to
    /// public addresses; see `outbound`.
    pub(crate) fn new(cfg: &Registry, turns: FillTurns) -> Result<Upstream, Error> {
        let (client, guard) = super::outbound::client_for(cfg)?;
        let creds = cfg.username.clone().zip(cfg.password.clone());
        Ok(Upstream {
            host: cfg.host.clone(),
            // The wildcard's hosts come from clients: one metric series for all of them.
            label: if cfg.public_only { "*".to_owned() } else { cfg.host.clone() },
            endpoint: cfg.endpoint.clone(),
            client,
            guard,
            creds,
            tokens: TokenCache::default(),
            basic: AtomicBool::new(false),
            turns,
            floor: cfg.min_rate,
        })
    }

    /// Waits for a turn to fill a blob from this upstream; the fill holds it until it ends.
    pub(crate) async fn turn(&self) -> Result<Turn, Error> {
        self.turns.take().await
    }

    /// The slowest a blob body from this upstream may arrive (`min_rate` over `rate_window`).
    pub(crate) fn floor(&self) -> MinRate {
        self.floor
    }

    fn url(&self, path_and_query: &str) -> Result<Url, Error> {
        self.endpoint.join(path_and_query).map_err(|e| Error::Internal(format!("upstream URL: {e}")))
    }

    /// Sends a request for `repo`'s content, authenticating as upstream asks (one retry).
    /// Returns upstream's response whatever its status.
    pub async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        repo: &str,
        headers: HeaderMap,
    ) -> Result<reqwest::Response, Error> {
        let url = self.url(path_and_query)?;
        let scope = format!("repository:{repo}:pull");
        let mut auth = self.auth_for(&scope);
        // Whether this request carries Basic credentials: any request that went out without
        // them and is challenged for Basic retries with them (also when a concurrent request
        // learned "Basic" first).
        let sent_basic = auth.is_some() && self.tokens.get(&scope).is_none();
        let resp = self.send_once(&method, &url, &headers, auth.as_ref()).await?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        let challenge = resp
            .headers()
            .get(header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_challenge);
        match challenge {
            Some(c @ Challenge::Bearer { .. }) => {
                self.tokens.forget(&scope);
                let token = self
                    .tokens
                    .fetch(&self.client, self.guard.as_deref(), &c, &scope, self.creds.as_ref())
                    .await?;
                auth = Some(bearer(&token)?);
            }
            Some(Challenge::Basic) if self.creds.is_some() && !sent_basic => {
                self.basic.store(true, Ordering::Relaxed);
                auth = self.auth_for(&scope);
            }
            _ => return Ok(resp),
        }
        self.send_once(&method, &url, &headers, auth.as_ref()).await
    }

    fn auth_for(&self, scope: &str) -> Option<HeaderValue> {
        if let Some(token) = self.tokens.get(scope) {
            return bearer(&token).ok();
        }
        if self.basic.load(Ordering::Relaxed) {
            use base64::Engine as _;
            let (user, pass) = self.creds.as_ref()?;
            let raw = format!("{user}:{}", pass.expose());
            let encoded = base64::engine::general_purpose::STANDARD.encode(raw);
            let mut value = HeaderValue::from_str(&format!("Basic {encoded}")).ok()?;
            value.set_sensitive(true);
            return Some(value);
        }
        None
    }

    /// One request, following redirects here; `auth` is sent only to the endpoint's origin.
    async fn send_once(
        &self,
        method: &Method,
        url: &Url,
        headers: &HeaderMap,
        auth: Option<&HeaderValue>,
    ) -> Result<reqwest::Response, Error> {
        let mut url = url.clone();
        let mut method = method.clone();
        for _ in 0..=MAX_REDIRECTS {
            self.check_target(&url)?;
            let mut req = self.client.request(method.clone(), url.clone()).headers(headers.clone());
            if let Some(auth) = auth.filter(|_| url.origin() == self.endpoint.origin()) {
                req = req.header(header::AUTHORIZATION, auth.clone());
            }
            let resp = req.send().await.map_err(|e| {
                metrics::counter!("berth_upstream_requests_total", "registry" => self.label.clone(), "status" => "error")
                    .increment(1);
                unavailable(&self.host, e)
            })?;
            metrics::counter!(
                "berth_upstream_requests_total",
                "registry" => self.label.clone(),
                "status" => resp.status().as_u16().to_string(),
            )
            .increment(1);
            if !resp.status().is_redirection() {
                return Ok(resp);
            }
            let Some(location) = resp.headers().get(header::LOCATION).and_then(|v| v.to_str().ok()) else {
                return Ok(resp);
            };
            url = url.join(location).map_err(|e| Error::Unavailable(format!("bad redirect: {e}")))?;
            if resp.status() == StatusCode::SEE_OTHER && method != Method::HEAD {
                method = Method::GET;
            }
        }
        Err(Error::Unavailable(format!("{}: too many redirects", self.host)))
    }

    /// Refuses a URL the registry's address guard does not allow (a redirect or the first
    /// request to a non-public IP literal).
    fn check_target(&self, url: &Url) -> Result<(), Error> {
        match &self.guard {
            Some(guard) => {
                guard.check_url(url).map_err(|e| Error::Denied(format!("registry {:?}: {e}", self.host)))
            }
            None => Ok(()),
        }
    }

    /// GET a manifest by tag or digest: bytes read whole (at most 4 MiB) and hashed.
    pub async fn manifest(
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
    pub async fn head_manifest(
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

    /// GET a blob as a stream for a fill.
    /// A fill resumes a cut body through `Fetched::resume`, which asks for the rest with Range.
    /// Waits for a turn first (see `turn`); the fill holds it until it ends, and its body is
    /// held to the registry's floor.
    pub async fn blob(self: &Arc<Self>, repo: &str, digest: &Digest) -> Result<Fetched, Error> {
        let turn = self.turn().await?;
        let resp =
            self.send(Method::GET, &format!("/v2/{repo}/blobs/{digest}"), repo, HeaderMap::new()).await?;
        let resp = check(resp, Error::BlobUnknown).await?;
        let len = resp.content_length();
        let body = self.body_of(resp);
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
    pub fn resume(self: &Arc<Self>, repo: &str, digest: &Digest) -> Resume {
        let (this, repo, digest) = (self.clone(), repo.to_owned(), digest.clone());
        Box::new(move |offset| {
            let (this, repo, digest) = (this.clone(), repo.clone(), digest.clone());
            async move { this.blob_from(&repo, &digest, offset).await }.boxed()
        })
    }

    /// The rest of a blob from `offset`: a 206 continues there; a server that ignores Range
    /// answers 200 with the whole blob, and the first `offset` bytes are to be skipped.
    pub async fn blob_from(&self, repo: &str, digest: &Digest, offset: u64) -> Result<Resumed, Error> {
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
    pub async fn blob_len(&self, repo: &str, digest: &Digest) -> Result<Option<u64>, Error> {
        let resp =
            self.send(Method::HEAD, &format!("/v2/{repo}/blobs/{digest}"), repo, HeaderMap::new()).await?;
        let resp = check(resp, Error::BlobUnknown).await?;
        Ok(resp
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok()))
    }

    /// A read-only request passed through as is (tags/list, referrers).
    pub async fn passthrough(
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

/// Why a bounded body read failed.
pub(crate) enum BodyError {
    /// More than the limit arrived (at least this many bytes).
    TooLarge(u64),
    Failed(Error),
}

/// A response body read whole, refused as soon as more than `limit` bytes have arrived
/// (whatever its Content-Length says); `from` names the sender in errors.
pub(crate) async fn body_at_most(
    resp: reqwest::Response,
    limit: u64,
    from: &str,
) -> Result<Bytes, BodyError> {
    let mut body = BytesMut::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| BodyError::Failed(unavailable(from, e)))?;
        let total = (body.len() as u64).saturating_add(chunk.len() as u64);
        if total > limit {
            return Err(BodyError::TooLarge(total));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

fn bearer(token: &str) -> Result<HeaderValue, Error> {
    HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| Error::Unavailable("token is not a valid header".into()))
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

pub(crate) fn unavailable(host: &str, e: reqwest::Error) -> Error {
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        if let Some(refused) = cause.downcast_ref::<super::public::NotPublic>() {
            return Error::Denied(format!("registry {host:?}: {refused}"));
        }
        source = cause.source();
    }
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else if e.is_body() || e.is_decode() {
        "body cut"
    } else {
        "request failed"
    };
    // The message names the URL, which carries no credentials, and the root causes (DNS,
    // refused connection, certificate) that reqwest's own message leaves out.
    let mut msg = format!("{host}: {kind}: {e}");
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        msg.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    Error::Unavailable(msg)
}
