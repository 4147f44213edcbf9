//! HTTP: the read-only registry API and the admin listener.

pub mod admin;
pub mod auth;
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
/// With `[auth]`, every request needs credentials (peers pass with the peer token).
pub fn registry_router(admin: admin::Admin, auth: Option<std::sync::Arc<auth::ClientAuth>>) -> Router {
    let mirror = admin.mirror.clone();
    let router =
        Router::new().fallback(registry::handle).with_state(mirror.clone()).merge(peer::router(admin));
    let router = match auth {
        Some(auth) => router.layer(axum::middleware::from_fn_with_state((auth, mirror), auth::require)),
        None => router,
    };
    router.layer(axum::middleware::from_fn(log::log_requests))
}
