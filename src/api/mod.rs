//! HTTP: the read-only registry API and the admin listener.

pub mod admin;
pub mod admin_error;
pub mod auth;
pub mod caller;
pub mod log;
pub mod metrics;
pub mod peer;
pub mod registry;
pub mod route;
pub mod serve;
pub mod tls;

use axum::Router;

/// The registry API: every path goes through one handler that parses the distribution route,
/// except the peer API under `/berth/` (outside `/v2/`, so no repository name can clash).
/// Every request first passes `caller::identify`, which decides who it is from (and, with
/// `[auth]`, refuses it without credentials; peers pass with the peer token).
pub fn registry_router(admin: admin::Admin, auth: Option<std::sync::Arc<auth::ClientAuth>>) -> Router {
    let mirror = admin.mirror.clone();
    let trust = caller::Trust { auth, peers: mirror.peers.clone() };
    Router::new()
        .fallback(registry::handle)
        .with_state(mirror)
        .merge(peer::router(admin))
        .layer(axum::middleware::from_fn_with_state(trust, caller::identify))
        .layer(axum::middleware::from_fn(log::log_requests))
}
