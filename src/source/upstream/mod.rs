//! One upstream registry: requests with auth (bearer tokens or basic), redirects followed
//! here so that credentials never reach another host, and upstream statuses mapped to errors.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use url::Url;

use super::auth::{parse_challenge, Challenge, TokenCache};
use super::public::Guard;
use crate::config::{MinRate, Registry, Secret};
use crate::error::Error;

const MAX_REDIRECTS: usize = 5;

mod content;
mod pieces;

pub(crate) use content::{FetchedReferrers, Span};
pub(crate) use pieces::{Split, PIECES_ROOM};

pub(crate) use content::read_manifest;
pub(crate) use content::{FetchedManifest, ManifestHead};

pub(crate) struct Upstream {
    pub(crate) host: String,
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
    /// How a fill of a large blob uses more connections.
    split: Split,
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

    /// A turn if one is free now, without waiting (for a fill's extra connections, which
    /// never hold up another fill).
    pub(crate) fn try_take(&self) -> Option<Turn> {
        let own = self.own.clone().try_acquire_owned().ok()?;
        let shared = match &self.shared {
            Some(shared) => Some(shared.clone().try_acquire_owned().ok()?),
            None => None,
        };
        Some(Turn { _own: own, _shared: shared })
    }
}

impl Upstream {
    /// A public-only registry (`cfg.public_only`, the wildcard's hosts) connects only to
    /// public addresses; see `outbound`.
    pub(crate) fn new(cfg: &Registry, turns: FillTurns, split: Split) -> Result<Upstream, Error> {
        let (client, guard) = super::outbound::client_for(cfg)?;
        let creds = cfg.username.clone().zip(cfg.password.as_ref().map(|p| p.loaded().clone()));
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
            split,
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
        self.endpoint.join(path_and_query).map_err(|e| Error::fault("upstream URL", e))
    }

    /// Sends a request for `repo`'s content, authenticating as upstream asks (one retry).
    /// Returns upstream's response whatever its status.
    pub(crate) async fn send(
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
