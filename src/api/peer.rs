//! The peer API on the registry listener: what one berth asks of another besides content.
//! Only requests with the hop marker (and the peer token, when one is set) are taken.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use super::admin::{status_of, Admin};
use crate::error::Error;
use crate::preheat::{PreheatRequest, Scope};

pub fn router(admin: Admin) -> Router {
    Router::new()
        .route("/berth/v1/preheat", post(submit))
        .route("/berth/v1/preheat/{id}", get(status))
        .with_state(admin)
}

/// Refuses what does not come from a peer.
fn from_peer(a: &Admin, headers: &HeaderMap) -> Result<(), Error> {
    if a.mirror.peers.is_none() {
        return Err(Error::Denied("no [peers] configured".into()));
    }
    match a.mirror.from_peer(headers)? {
        true => Ok(()),
        false => Err(Error::Denied("the peer API takes requests from peers only".into())),
    }
}

fn bad_request(message: String) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({ "error": message }))).into_response()
}

/// `POST /berth/v1/preheat`: a peer's share of a cluster preheat, run here as a local job.
async fn submit(State(a): State<Admin>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(refused) = from_peer(&a, &headers) {
        return refused.into_response();
    }
    let mut req: PreheatRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return bad_request(format!("invalid preheat request: {e}")),
    };
    req.scope = Scope::Local; // a peer's share is never fanned out again
    match a.preheater.submit(req) {
        Ok(job) => (StatusCode::ACCEPTED, Json(json!({ "id": job.id }))).into_response(),
        Err(e) => bad_request(e),
    }
}

/// `GET /berth/v1/preheat/<id>`
async fn status(State(a): State<Admin>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Err(refused) = from_peer(&a, &headers) {
        return refused.into_response();
    }
    match a.preheater.job(&id) {
        Some(job) => Json(status_of(&a, job).await).into_response(),
        None => (StatusCode::NOT_FOUND, Json(json!({ "error": format!("no preheat job {id:?}") })))
            .into_response(),
    }
}
