//! HTTP: the read-only registry API and the admin listener.

pub mod admin;
pub mod log;
pub mod metrics;
pub mod registry;
pub mod route;

use std::sync::Arc;

use axum::Router;

use crate::registry::Mirror;

/// The registry API: every path goes through one handler that parses the distribution route.
pub fn registry_router(mirror: Arc<Mirror>) -> Router {
    Router::new()
        .fallback(registry::handle)
        .with_state(mirror)
        .layer(axum::middleware::from_fn(log::log_requests))
}
