//! HTTP: the read-only registry API and the admin listener.

pub(crate) mod admin;
pub(crate) mod admin_error;
pub(crate) mod auth;
mod byteranges;
pub(crate) mod caller;
pub(crate) mod log;
pub(crate) mod metrics;
pub(crate) mod peer;
pub(crate) mod registry;
pub mod route;
pub(crate) mod serve;
pub(crate) mod tls;

use axum::Router;

/// The registry API: every path goes through one handler that parses the distribution route,
/// except the peer API under `/berth/` (outside `/v2/`, so no repository name can clash).
/// Every request first passes `caller::identify`, which decides who it is from (and, with
/// `[auth]`, refuses it without credentials; peers pass with the peer token).
pub(crate) fn registry_router(admin: admin::Admin, auth: Option<std::sync::Arc<auth::ClientAuth>>) -> Router {
    let mirror = admin.mirror.clone();
    let trust = caller::Trust { auth, peers: mirror.peers().cloned() };
    Router::new()
        .fallback(registry::handle)
        .with_state(mirror)
        .merge(peer::router(admin))
        .layer(axum::middleware::from_fn_with_state(trust, caller::identify))
        .layer(axum::middleware::from_fn(log::log_requests))
}
