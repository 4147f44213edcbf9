//! Who a request on the registry listener is from, decided in this one place for every
//! route: a peer (it presents the peer token), a user `[auth]` accepts, or an anonymous
//! client (only when there is no `[auth]`). Handlers read the [`Caller`] this layer puts in
//! the request's extensions; none reads a trust header itself.
//!
//! The hop marker (`x-berth-hop`) grants nothing: a request carrying it without the right
//! peer token is refused, and so is any wrong peer token.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::HeaderMap;

use super::auth::ClientAuth;
use crate::error::Error;
use crate::source::peers::{Peers, HOP, TOKEN};

/// Who sent a request, and so what it may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Caller {
    /// No `[auth]` is configured: anyone who reaches the listener may pull.
    Anonymous,
    /// Credentials `[auth]` accepts: may pull.
    User,
    /// Another berth of `[peers]`: may pull without `[auth]` credentials, use the peer API,
    /// and is answered here, never forwarded again.
    Peer,
}

impl Caller {
    pub(crate) fn is_peer(self) -> bool {
        self == Caller::Peer
    }
}

/// What deciding needs: the client credentials and the peers (with their token).
#[derive(Clone)]
pub(crate) struct Trust {
    pub(crate) auth: Option<Arc<ClientAuth>>,
    pub(crate) peers: Option<Arc<Peers>>,
}

impl Trust {
    /// The caller of a request with these headers, or why it is refused.
    pub(crate) async fn caller(&self, headers: &HeaderMap) -> Result<Caller, Error> {
        if let Some(presented) = headers.get(TOKEN) {
            return match &self.peers {
                Some(peers) if peers.token_matches(presented.as_bytes()) => Ok(Caller::Peer),
                _ => Err(Error::Denied("wrong peer token".into())),
            };
        }
        if headers.contains_key(HOP) {
            return Err(Error::Denied("a peer request needs the peer token".into()));
        }
        match &self.auth {
            Some(auth) => auth.check(headers).await.map(|()| Caller::User),
            None => Ok(Caller::Anonymous),
        }
    }
}

/// The registry router's first layer: decides the caller, refuses what may not pass, and
/// hands the [`Caller`] on in the request's extensions.
pub(crate) async fn identify(State(trust): State<Trust>, mut req: Request, next: Next) -> Response {
    match trust.caller(req.headers()).await {
        Ok(caller) => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Err(e) => e.into_response(),
    }
}
