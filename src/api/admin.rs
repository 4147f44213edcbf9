//! The admin listener: health now; metrics and the admin API later.

use axum::routing::get;
use axum::Router;

pub fn router() -> Router {
    Router::new().route("/healthz", get(|| async { "ok\n" }))
}
