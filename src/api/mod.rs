//! HTTP: the read-only registry API and the admin listener.

pub mod admin;
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
pub fn registry_router(admin: admin::Admin) -> Router {
    Router::new()
        .fallback(registry::handle)
        .with_state(admin.mirror.clone())
        .merge(peer::router(admin))
        .layer(axum::middleware::from_fn(log::log_requests))
}
